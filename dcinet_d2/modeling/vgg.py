"""VGG16 backbone (conv1_1 .. conv5_3) as py-faster-rcnn's VGG16 Faster R-CNN uses it, for Detectron2.

The backbone stops at conv5_3 + ReLU (stride 16, 512 channels): RoI pooling replaces pool5, and fc6/fc7
become the box head (``FastRCNNConvFCHead`` with NUM_FC 2, FC_DIM 4096 on 7x7 pooled features, whose
flattening order equals torchvision's ``classifier``). Parameter names follow Caffe's layer names
(``conv3_2.weight``), so that ImageNet weights convert by renaming: see
``convert_torchvision_vgg16`` and ``scripts/convert_vgg16_torchvision.py``.

Config keys (``add_vgg_config``):
- ``MODEL.VGG.NORM``: normalisation after every conv ("" = none, as the ImageNet VGG16; "BN", "GN" or
  "SyncBN" for from-scratch training; "FrozenBN").
- ``MODEL.VGG.OUT_FEATURES``: any of "vgg_conv1" .. "vgg_conv5" (block k's last conv after ReLU, before
  its pooling: stride 2**(k-1); channels 64, 128, 256, 512, 512).
- ``MODEL.BACKBONE.FREEZE_AT`` (Detectron2's key) = k freezes conv blocks 1..k (0: none, 5: all). The
  default 2 freezes conv1_x and conv2_x, as py-faster-rcnn's VGG16 models do.
"""
from typing import Dict, List, Mapping, Sequence

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone
from fvcore.nn import weight_init

__all__ = [
    "VGG16",
    "add_vgg_config",
    "build_vgg16_backbone",
    "convert_torchvision_vgg16",
    "vgg16_layer_names",
]

# Output channels of each conv, block by block (VGG "configuration D").
_VGG16_CHANNELS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# Caffe layer names, block by block: (("conv1_1", "conv1_2"), ..., ("conv5_1", "conv5_2", "conv5_3")).
VGG16_LAYERS = tuple(tuple(f"conv{b}_{i}" for i in range(1, len(c) + 1))
                     for b, c in enumerate(_VGG16_CHANNELS, start=1))
_NORMS = ("", "BN", "SyncBN", "FrozenBN", "GN")


def add_vgg_config(cfg):
    """Add the MODEL.VGG node (the VGG16 backbone's options) to a Detectron2 config, in place."""
    cfg.MODEL.VGG = CN()
    # Normalisation after each conv: "" (none: the ImageNet VGG16 has none), "BN", "GN", "SyncBN",
    # "FrozenBN". Use "BN" or "GN" when training from scratch.
    cfg.MODEL.VGG.NORM = ""
    # Backbone outputs: "vgg_conv1".."vgg_conv5" (after the block's last ReLU; stride 1, 2, 4, 8, 16).
    # py-faster-rcnn's VGG16 detector reads conv5_3: "vgg_conv5" (stride 16, 512 channels).
    cfg.MODEL.VGG.OUT_FEATURES = ["vgg_conv5"]


def _feature_name(block: int) -> str:
    return f"vgg_conv{block}"


class VGG16(Backbone):
    """VGG16's 13 convolutions (3x3, padding 1, each followed by [norm and] ReLU) and the 2x2 max pools
    between the 5 blocks (floor mode, as torchvision; no pool5).

    forward(x: Tensor[B, C, H, W]) -> {name: Tensor[B, C_k, floor(H / s_k), floor(W / s_k)]} for the
    requested ``out_features`` (s_k = 2**(k-1) for "vgg_conv{k}").
    """

    def __init__(self, in_channels: int = 3, *, norm: str = "", out_features: Sequence[str] = ("vgg_conv5",),
                 freeze_at: int = 0):
        super().__init__()
        valid = [_feature_name(b) for b in range(1, 6)]
        unknown = [f for f in out_features if f not in valid]
        if unknown or not out_features:
            raise ValueError(f"VGG16 out_features = {list(out_features)}: expected a non-empty subset of {valid}")
        if norm not in _NORMS:
            raise ValueError(f"MODEL.VGG.NORM = {norm!r}: expected one of {list(_NORMS)}")
        if not 0 <= freeze_at <= 5:
            raise ValueError(f"MODEL.BACKBONE.FREEZE_AT = {freeze_at}: VGG16 has conv blocks 1..5, expected 0..5")
        self._out_features = [f for f in valid if f in out_features]
        self._num_blocks = max(valid.index(f) for f in self._out_features) + 1
        self._out_feature_strides = {_feature_name(b): 2 ** (b - 1) for b in range(1, 6)}
        self._out_feature_channels = {_feature_name(b): c[-1] for b, c in enumerate(_VGG16_CHANNELS, 1)}
        channels = in_channels
        for names, widths in zip(VGG16_LAYERS[: self._num_blocks], _VGG16_CHANNELS):
            for name, width in zip(names, widths):
                conv = Conv2d(channels, width, kernel_size=3, padding=1, bias=not norm,
                              norm=get_norm(norm, width), activation=F.relu)
                weight_init.c2_msra_fill(conv)
                self.add_module(name, conv)
                channels = width
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"VGG16 takes images [B, C, H, W], got a tensor of shape {tuple(x.shape)}")
        outputs = {}
        for block, names in enumerate(VGG16_LAYERS[: self._num_blocks], start=1):
            if block > 1:
                x = F.max_pool2d(x, kernel_size=2, stride=2)
            for name in names:
                x = getattr(self, name)(x)
            if _feature_name(block) in self._out_features:
                outputs[_feature_name(block)] = x
        return outputs

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {f: ShapeSpec(channels=self._out_feature_channels[f], stride=self._out_feature_strides[f])
                for f in self._out_features}

    @property
    def size_divisibility(self) -> int:
        # Floor-mode pooling drops the last row/column of odd-sized maps; padding the batch to the
        # deepest stride keeps every input pixel inside the feature map.
        return max(self._out_feature_strides[f] for f in self._out_features)

    def freeze(self, freeze_at: int = 0):
        """Freeze conv blocks 1..``freeze_at`` (no gradients; their BN, if any, becomes FrozenBN)."""
        for names in VGG16_LAYERS[: min(freeze_at, self._num_blocks)]:
            for name in names:
                conv = getattr(self, name)
                for p in conv.parameters():
                    p.requires_grad_(False)
                self.add_module(name, FrozenBatchNorm2d.convert_frozen_batchnorm(conv))
        return self


@BACKBONE_REGISTRY.register()
def build_vgg16_backbone(cfg, input_shape: ShapeSpec) -> VGG16:
    """MODEL.BACKBONE.NAME "build_vgg16_backbone": VGG16 from MODEL.VGG.* and MODEL.BACKBONE.FREEZE_AT."""
    if "VGG" not in cfg.MODEL:
        raise KeyError("cfg.MODEL.VGG is missing: call dcinet_d2.modeling.vgg.add_vgg_config(cfg) before "
                       "merging a VGG16 config")
    return VGG16(input_shape.channels, norm=cfg.MODEL.VGG.NORM, out_features=list(cfg.MODEL.VGG.OUT_FEATURES),
                 freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def _indexed(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[int, Dict[str, torch.Tensor]]:
    """{"features.10.weight": w, ...} -> {10: {"weight": w, ...}} for the keys under ``prefix``."""
    layers: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key.startswith(prefix):
            index, _, param = key[len(prefix):].partition(".")
            layers.setdefault(int(index), {})[param] = value
    return dict(sorted(layers.items()))


def convert_torchvision_vgg16(state_dict: Mapping[str, torch.Tensor], *, backbone_prefix: str = "backbone.",
                              box_head_prefix: str = "roi_heads.box_head.",
                              include_fc: bool = True) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ``vgg16()`` state dict to this project's parameter names.

    ``features.{0,2,...,28}.{weight,bias}`` -> ``{backbone_prefix}conv1_1.weight`` .. ``conv5_3.bias``;
    with ``include_fc``, ``classifier.0`` (fc6, 25088 -> 4096) and ``classifier.3`` (fc7, 4096 -> 4096)
    -> ``{box_head_prefix}fc1.*`` and ``fc2.*`` (``FastRCNNConvFCHead`` on 512 x 7 x 7 RoI features).
    The 1000-way ImageNet classifier (``classifier.6``) is dropped. Tensors are shared, not copied.

    Raises:
        ValueError: the state dict is not a torchvision VGG16 without BN (vgg16_bn is not supported).
    """
    convs = _indexed(state_dict, "features.")
    if any("running_mean" in p for p in convs.values()):
        raise ValueError("the state dict holds BatchNorm layers (torchvision vgg16_bn): only plain vgg16 "
                         "converts (MODEL.VGG.NORM \"\")")
    names = vgg16_layer_names()
    expected = [w for block in _VGG16_CHANNELS for w in block]
    shapes = [tuple(p["weight"].shape) for p in convs.values() if "weight" in p]
    if len(shapes) != len(names) or [s[0] for s in shapes] != expected or any(s[2:] != (3, 3) for s in shapes):
        raise ValueError(f"not a torchvision VGG16 state dict: expected 13 3x3 convs 'features.N.weight' with "
                         f"{expected} output channels, found {shapes}")
    out = {}
    for name, params in zip(names, convs.values()):
        for param, value in params.items():
            out[f"{backbone_prefix}{name}.{param}"] = value
    if include_fc:
        fcs = _indexed(state_dict, "classifier.")
        if 0 not in fcs or 3 not in fcs:
            raise ValueError(f"no fc6/fc7 ('classifier.0', 'classifier.3') in the state dict, found "
                             f"classifier layers {sorted(fcs)}; use include_fc=False (--no-fc)")
        for index, fc in ((0, "fc1"), (3, "fc2")):
            for param, value in fcs[index].items():
                out[f"{box_head_prefix}{fc}.{param}"] = value
    return out


def vgg16_layer_names() -> List[str]:
    """The 13 conv layer names in order: ["conv1_1", "conv1_2", "conv2_1", ..., "conv5_3"]."""
    return [n for block in VGG16_LAYERS for n in block]
