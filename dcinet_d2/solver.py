"""The optimizer of train_net.py: Detectron2's, with SOLVER.BACKBONE_LR_FACTOR on the backbone's parameters,
SOLVER.BOX_HEAD_LR_FACTOR on the ROI box head's (the layers I-Net's re-id shares with detection),
SOLVER.EMBED_LR_FACTOR on the re-id embedding projections and SOLVER.CLASSIFIER_LR_FACTOR on the re-id losses'
learnt classifiers."""
from typing import List

import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from .modeling.reid_head import EmbeddingProjection
from .modeling.reid_loss import ReIDLoss

__all__ = ["build_optimizer"]


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Detectron2's SGD (same parameter groups, momentum, weight decay, clipping), the learning rate of each
    backbone parameter multiplied by SOLVER.BACKBONE_LR_FACTOR and of each embedding projection's by
    SOLVER.EMBED_LR_FACTOR, and of each re-id loss's own parameters (HEP's classifier) by
    SOLVER.CLASSIFIER_LR_FACTOR (the LR scheduler scales every group alike)."""
    params = get_default_optimizer_params(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM, bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    inner = getattr(model, "module", model)  # also under DistributedDataParallel
    backbone = getattr(inner, "backbone", None)
    if backbone is not None:
        params = _scale_lr(params, backbone.parameters(), cfg.SOLVER.BACKBONE_LR_FACTOR)
    box_head = getattr(getattr(inner, "roi_heads", None), "box_head", None)
    if box_head is not None:
        params = _scale_lr(params, box_head.parameters(), cfg.SOLVER.BOX_HEAD_LR_FACTOR)
    embeddings = [p for m in model.modules() if isinstance(m, EmbeddingProjection) for p in m.parameters()]
    params = _scale_lr(params, embeddings, cfg.SOLVER.EMBED_LR_FACTOR)
    classifiers = [p for m in model.modules() if isinstance(m, ReIDLoss) for p in m.parameters(recurse=False)]
    # The classifier's factor undoes the loss weight on its gradient only: its weight decay keeps the base step.
    params = _scale_lr(params, classifiers, cfg.SOLVER.CLASSIFIER_LR_FACTOR, keep_decay=True)
    return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
        params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY)


def _scale_lr(groups: List[dict], parameters, factor: float, keep_decay: bool = False) -> List[dict]:
    """The parameter groups with the learning rate of `parameters` multiplied by `factor`; with `keep_decay`
    their weight decay is divided by it, so that the decay step (SGD: lr * weight_decay * w) stays the base one.

    Detectron2 merges parameters with equal hyper-parameters into one group, so a group is split into the
    parameters to scale and the others (scaling the whole group would scale, e.g., the RPN with the backbone).
    """
    if factor == 1.0:
        return groups
    ids = {id(p) for p in parameters}
    out = []
    for group in groups:
        scaled = [p for p in group["params"] if id(p) in ids]
        kept = [p for p in group["params"] if id(p) not in ids]
        if kept:
            out.append({**group, "params": kept})
        if scaled:
            decay = group["weight_decay"] / factor if keep_decay else group["weight_decay"]
            out.append({**group, "params": scaled, "lr": group["lr"] * factor, "weight_decay": decay})
    return out
