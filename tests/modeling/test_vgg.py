"""VGG16 backbone: shapes, freezing, config, and equality with torchvision's VGG16 after conversion."""
import importlib.util
import pathlib

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import BatchNorm2d, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.roi_heads.box_head import FastRCNNConvFCHead
from torch import nn

from dcinet_d2.modeling.vgg import VGG16, add_vgg_config, convert_torchvision_vgg16, vgg16_layer_names

ROOT = pathlib.Path(__file__).resolve().parents[2]
# End (exclusive) of block k's last ReLU in torchvision's vgg16().features: its pools sit at 4, 9, 16, 23, 30.
TV_BLOCK_END = {1: 4, 2: 9, 3: 16, 4: 23, 5: 30}


def _load_script():
    spec = importlib.util.spec_from_file_location("convert_vgg16_torchvision",
                                                  ROOT / "scripts" / "convert_vgg16_torchvision.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torchvision_features(seed=0):
    """torchvision's own VGG16 feature extractor (configuration "D"), randomly initialised."""
    torch.manual_seed(seed)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).eval()
    for m in features.modules():  # non-zero biases, so that a dropped or misplaced bias shows
        if isinstance(m, nn.Conv2d):
            nn.init.uniform_(m.bias, -0.1, 0.1)
    return features


def test_output_shapes_and_strides():
    net = VGG16(out_features=[f"vgg_conv{k}" for k in range(1, 6)])
    out = net(torch.rand(2, 3, 37, 53))
    # floor-mode pools: 37 -> 18 -> 9 -> 4 -> 2, 53 -> 26 -> 13 -> 6 -> 3
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "vgg_conv1": (2, 64, 37, 53), "vgg_conv2": (2, 128, 18, 26), "vgg_conv3": (2, 256, 9, 13),
        "vgg_conv4": (2, 512, 4, 6), "vgg_conv5": (2, 512, 2, 3)}
    assert net.output_shape()["vgg_conv3"] == ShapeSpec(channels=256, stride=4)
    assert net.output_shape()["vgg_conv5"] == ShapeSpec(channels=512, stride=16)
    assert net.size_divisibility == 16
    assert all((v >= 0).all() for v in out.values())  # after ReLU


def test_truncated_backbone_builds_only_needed_blocks():
    net = VGG16(out_features=["vgg_conv3"])
    assert hasattr(net, "conv3_3") and not hasattr(net, "conv4_1")
    assert net.size_divisibility == 4
    assert list(net.output_shape()) == ["vgg_conv3"]


def test_matches_torchvision_features_at_every_block():
    tv = _torchvision_features()
    sd = {f"features.{k}": v for k, v in tv.state_dict().items()}
    net = VGG16(out_features=[f"vgg_conv{k}" for k in range(1, 6)]).eval()
    missing, unexpected = net.load_state_dict(convert_torchvision_vgg16(sd, backbone_prefix="", include_fc=False))
    assert missing == [] and unexpected == []
    x = torch.randn(1, 3, 45, 61)  # not a multiple of 16: the floor-mode pooling must agree
    with torch.no_grad():
        out = net(x)
        for k, end in TV_BLOCK_END.items():
            torch.testing.assert_close(out[f"vgg_conv{k}"], tv[:end](x), rtol=1e-4, atol=1e-5)


def test_converter_names_and_shapes():
    tv = _torchvision_features()
    sd = {f"features.{k}": v for k, v in tv.state_dict().items()}
    out = convert_torchvision_vgg16(sd, include_fc=False)
    assert len(out) == 26
    assert out["backbone.conv1_1.weight"] is sd["features.0.weight"]
    assert out["backbone.conv3_3.bias"] is sd["features.14.bias"]
    assert out["backbone.conv5_3.weight"] is sd["features.28.weight"]
    assert vgg16_layer_names()[:3] == ["conv1_1", "conv1_2", "conv2_1"] and len(vgg16_layer_names()) == 13


def test_converter_rejects_other_state_dicts():
    tv = _torchvision_features()
    sd = {f"features.{k}": v for k, v in tv.state_dict().items()}
    with pytest.raises(ValueError, match="fc6/fc7"):
        convert_torchvision_vgg16(sd)  # no classifier.* keys
    bn = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"], batch_norm=True)
    with pytest.raises(ValueError, match="vgg16_bn"):
        convert_torchvision_vgg16({f"features.{k}": v for k, v in bn.state_dict().items()}, include_fc=False)
    vgg11 = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["A"])
    with pytest.raises(ValueError, match="13 3x3 convs"):
        convert_torchvision_vgg16({f"features.{k}": v for k, v in vgg11.state_dict().items()}, include_fc=False)


def test_freeze_at_two_freezes_conv1_and_conv2():
    net = VGG16(norm="BN", freeze_at=2)
    frozen = {n.split(".")[0] for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}
    assert isinstance(net.conv2_2.norm, FrozenBatchNorm2d) and isinstance(net.conv3_1.norm, BatchNorm2d)
    assert net.conv1_1.bias is None  # a conv followed by a norm needs no bias
    net(torch.rand(2, 3, 32, 32))["vgg_conv5"].sum().backward()
    assert net.conv2_2.weight.grad is None and net.conv3_1.weight.grad is not None


def test_freeze_at_zero_and_five():
    assert all(p.requires_grad for p in VGG16(freeze_at=0).parameters())
    assert not any(p.requires_grad for p in VGG16(freeze_at=5).parameters())


def test_bad_arguments():
    with pytest.raises(ValueError, match="out_features"):
        VGG16(out_features=["conv5"])
    with pytest.raises(ValueError, match="MODEL.VGG.NORM"):
        VGG16(norm="LN")
    with pytest.raises(ValueError, match="FREEZE_AT"):
        VGG16(freeze_at=6)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        VGG16()(torch.rand(3, 32, 32))


def test_build_from_config():
    cfg = get_cfg()
    add_vgg_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_vgg16_backbone"
    cfg.MODEL.VGG.NORM = "GN"
    net = build_backbone(cfg)  # FREEZE_AT default 2
    assert isinstance(net, VGG16)
    assert net.output_shape() == {"vgg_conv5": ShapeSpec(channels=512, stride=16)}
    assert isinstance(net.conv1_1.norm, nn.GroupNorm)
    assert not net.conv2_2.weight.requires_grad and net.conv3_1.weight.requires_grad


def test_build_without_vgg_config_names_the_fix():
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_vgg16_backbone"
    with pytest.raises(KeyError, match="add_vgg_config"):
        build_backbone(cfg)


def test_script_errors(tmp_path):
    script = _load_script()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        script.main([str(tmp_path / "nope.pth"), str(tmp_path / "out.pkl")])
    torch.save({"fc.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="features.0.weight"):
        script.main([str(tmp_path / "other.pth"), str(tmp_path / "out.pkl")])
    with pytest.raises(ValueError, match=r"\.pkl or \.pth"):
        script.save_detectron2_checkpoint({}, str(tmp_path / "out.txt"))


class _BackboneAndBoxHead(nn.Module):
    """The two parts of a VGG16 Faster R-CNN that ImageNet weights initialise, under the model's names."""

    def __init__(self):
        super().__init__()
        self.backbone = VGG16()
        self.roi_heads = nn.Module()
        self.roi_heads.box_head = FastRCNNConvFCHead(ShapeSpec(channels=512, height=7, width=7),
                                                     conv_dims=[], fc_dims=[4096, 4096])


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pkl", ".pth"])
def test_full_torchvision_vgg16_roundtrip(tmp_path, suffix):
    """torchvision vgg16() state dict on disk -> script -> DetectionCheckpointer: every backbone and
    fc6/fc7 key loads, and the outputs equal torchvision's features[:30] and fc7 (+ReLU)."""
    torch.manual_seed(0)
    tv = torchvision.models.vgg16().eval()
    torch.save(tv.state_dict(), tmp_path / "vgg16.pth")
    out_path = tmp_path / f"vgg16_d2{suffix}"
    assert _load_script().main([str(tmp_path / "vgg16.pth"), str(out_path)]) == 0

    model = _BackboneAndBoxHead().eval()
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(str(out_path)))
    assert incompatible.missing_keys == [] and incompatible.unexpected_keys == []
    assert incompatible.incorrect_shapes == []

    x = torch.randn(1, 3, 50, 70)
    rois = torch.randn(3, 512, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(x)["vgg_conv5"], tv.features[:30](x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.roi_heads.box_head(rois), tv.classifier[:5](rois.flatten(1)),
                                   rtol=1e-4, atol=1e-5)
