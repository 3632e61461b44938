"""optimize_for_inference: folding the conv norms and switching to channels-last keep a model's outputs."""
import copy
import os

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from torch import nn

from dcinet_d2 import add_dcinet_config
from dcinet_d2.modeling.inference import fold_conv_norms, optimize_for_inference

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(config, *opts):
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.REID.NUM_IDENTITIES", "20", *opts])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms that do something: statistics and affine parameters away from 0 / 1
        for m in model.modules():
            if isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)):
                c = m.running_mean.numel()
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                if m.weight is not None:
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model


@pytest.mark.parametrize("config,opts", [("configs/cpu/dcinet_mnv2_synth.yaml", []),
                                         ("configs/cpu/dcinet_r18_synth.yaml", ["MODEL.RESNETS.NORM", "BN"])])
def test_optimized_model_computes_the_same_features_and_embeddings(config, opts):
    """Backbone features, box-head features and re-id embeddings of given boxes agree to float32 rounding;
    every normalisation of a conv (FrozenBN, eval BN) is folded and none is left to run."""
    model = _model(config, *opts)
    norms = sum(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in model.modules())
    fast = optimize_for_inference(copy.deepcopy(model))
    assert norms > 0 and not any(isinstance(m, (FrozenBatchNorm2d, nn.BatchNorm2d)) for m in fast.modules())
    image = torch.rand(1, 3, 160, 224) * 255
    boxes = [Boxes(torch.tensor([[10.0, 20.0, 60.0, 140.0], [100.0, 5.0, 150.0, 120.0]]))]
    with torch.no_grad():
        ref, out = model.backbone(image), fast.backbone(image)
        for name in ref:
            torch.testing.assert_close(out[name], ref[name], rtol=1e-4, atol=1e-4 * ref[name].abs().max().item())
        pooled = model.roi_heads.box_pooler([ref[f] for f in model.roi_heads.box_in_features], boxes)
        ref_box, out_box = model.roi_heads.box_head(pooled), fast.roi_heads.box_head(pooled)
        torch.testing.assert_close(out_box, ref_box, rtol=1e-4, atol=1e-4 * ref_box.abs().max().item())
        emb_ref = torch.nn.functional.normalize(model.roi_heads.embed_boxes(ref, boxes), dim=1)
        emb_out = torch.nn.functional.normalize(fast.roi_heads.embed_boxes(out, boxes), dim=1)
        torch.testing.assert_close(emb_out, emb_ref, rtol=0, atol=1e-5)


def test_training_batchnorm_is_not_folded():
    """A BatchNorm in training mode normalises by its batch: not an affine map, left alone."""
    model = _model("configs/cpu/dcinet_mnv2_synth.yaml")
    model.roi_heads.box_head.train()
    bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.roi_heads.box_head.modules())
    frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    assert bn > 0 and fold_conv_norms(model) == frozen
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.roi_heads.box_head.modules()) == bn
