"""build_optimizer: SOLVER.BACKBONE_LR_FACTOR, EMBED_LR_FACTOR and CLASSIFIER_LR_FACTOR scale exactly their own
parameters."""
import pytest
import torch
from detectron2.modeling import build_model

from dcinet_d2.modeling.reid_head import EmbeddingProjection
from dcinet_d2.solver import build_optimizer
from dcinet_d2.testing import tiny_cfg


def _lr_of(optimizer):
    return {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("backbone_factor, embed_factor, classifier_factor, box_head_factor",
                         [(1.0, 1.0, 1.0, 1.0), (0.1, 1.0, 1.0, 1.0), (1.0, 0.01, 1.0, 1.0), (0.5, 0.02, 300.0, 1.0),
                          (1.0, 1.0, 50.0, 1.0), (0.1, 1.0, 1.0, 0.1), (1.0, 3.0, 1.0, 0.2)])
def test_each_factor_scales_only_its_own_parameters(backbone_factor, embed_factor, classifier_factor,
                                                    box_head_factor):
    cfg = tiny_cfg(roi_heads="INetROIHeads", losses=("OLP", "HEP"))
    cfg.SOLVER.BOX_HEAD_LR_FACTOR = box_head_factor
    cfg.SOLVER.BASE_LR, cfg.SOLVER.BIAS_LR_FACTOR = 0.02, 2.0
    cfg.SOLVER.BACKBONE_LR_FACTOR, cfg.SOLVER.EMBED_LR_FACTOR = backbone_factor, embed_factor
    cfg.SOLVER.CLASSIFIER_LR_FACTOR = classifier_factor
    model = build_model(cfg)
    lr = _lr_of(build_optimizer(cfg, model))
    backbone = {id(p) for p in model.backbone.parameters()}
    embed = {id(p) for m in model.modules() if isinstance(m, EmbeddingProjection) for p in m.parameters()}
    classifier = {id(model.roi_heads.reid_loss.hep_weight), id(model.roi_heads.reid_loss.hep_bias)}
    box_head = {id(p) for p in model.roi_heads.box_head.parameters()}
    assert embed and backbone and box_head
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(lr) == len(named)  # every trainable parameter once
    for name, p in named:
        expected = 0.02 * (2.0 if name.endswith(".bias") else 1.0)
        expected *= backbone_factor if id(p) in backbone else embed_factor if id(p) in embed else 1.0
        expected *= classifier_factor if id(p) in classifier else 1.0
        expected *= box_head_factor if id(p) in box_head else 1.0
        # The RPN and the box predictor share Detectron2's merged group with backbone weights: they must keep
        # the base rate (scaling whole groups once scaled them too).
        assert lr[id(p)] == pytest.approx(expected), name


def test_classifier_factor_scales_the_gradient_step_not_the_weight_decay():
    """One SGD step on HEP's classifier with a zero gradient moves it by the decay alone: lr * wd * w at any
    SOLVER.CLASSIFIER_LR_FACTOR (a factor that also scaled the decay would shrink W 333x faster)."""
    steps = {}
    for factor in (1.0, 333.0):
        cfg = tiny_cfg(losses=("OLP", "HEP"))
        cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY, cfg.SOLVER.MOMENTUM = 0.01, 1e-4, 0.0
        cfg.SOLVER.CLASSIFIER_LR_FACTOR = factor
        torch.manual_seed(0)
        model = build_model(cfg)
        optimizer = build_optimizer(cfg, model)
        w = model.roi_heads.reid_loss.hep_weight
        before = w.detach().clone()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        steps[factor] = before - w.detach()
        torch.testing.assert_close(steps[factor], 0.01 * 1e-4 * before)
    # and the gradient step is scaled: a unit gradient moves W by lr * factor
    cfg.SOLVER.WEIGHT_DECAY = 0.0
    optimizer = build_optimizer(cfg, model)
    before = w.detach().clone()
    w.grad = torch.ones_like(w)
    optimizer.step()
    torch.testing.assert_close(before - w.detach(), torch.full_like(w, 0.01 * 333.0))
