"""The optimizer of train_net.py: Detectron2's, with SOLVER.BACKBONE_LR_FACTOR on the backbone's parameters."""
import torch
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

__all__ = ["build_optimizer"]


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Detectron2's SGD (same parameter groups, momentum, weight decay, clipping), each backbone parameter's
    learning rate multiplied by SOLVER.BACKBONE_LR_FACTOR (the LR scheduler scales every group alike)."""
    params = get_default_optimizer_params(
        model, base_lr=cfg.SOLVER.BASE_LR, weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR, weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
    backbone = getattr(model, "backbone", None)
    factor = cfg.SOLVER.BACKBONE_LR_FACTOR
    if backbone is not None and factor != 1.0:
        ids = {id(p) for p in backbone.parameters()}
        for group in params:
            if any(id(p) in ids for p in group["params"]):
                group["lr"] = group.get("lr", cfg.SOLVER.BASE_LR) * factor
    return maybe_add_gradient_clipping(cfg, torch.optim.SGD)(
        params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV,
        weight_decay=cfg.SOLVER.WEIGHT_DECAY)
