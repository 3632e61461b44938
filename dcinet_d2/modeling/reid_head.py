"""Re-identification heads: pooled RoI features [R, C, S, S] -> embeddings [R, D] before L2 normalisation
(the ROI heads normalise them for search and the metric losses; HEP scores them as they are).

DC-I-Net gives re-id its own, deeper head (its own res5 stage, or a small conv stack for VGG16 / CPU
configs) so that detection and re-id stop competing for one representation (docs/METHOD.md, DC-I-Net 1.).
I-Net embeds the detector's own box-head features with a single projection.
"""
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, BottleneckBlock, ResNet
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY
from torch import nn


def build_res5_stage(cfg, in_channels, norm):
    """A fresh res5 stage shaped as MODEL.RESNETS describes (stride 2). Returns (nn.Sequential, out_channels).

    Its submodules are named like a backbone's res5 so that ImageNet res5 weights load into it by name.
    """
    r = cfg.MODEL.RESNETS
    out_channels = r.RES2_OUT_CHANNELS * 8
    common = dict(in_channels=in_channels, out_channels=out_channels, norm=norm)
    if r.DEPTH in (18, 34):
        blocks = ResNet.make_stage(BasicBlock, 2 if r.DEPTH == 18 else 3, stride_per_block=[2, 1], **common)
    else:
        blocks = ResNet.make_stage(
            BottleneckBlock, 3, stride_per_block=[2, 1, 1],
            bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP * 8, num_groups=r.NUM_GROUPS,
            stride_in_1x1=r.STRIDE_IN_1X1, **common)
    return nn.Sequential(*blocks), out_channels


class EmbeddingProjection(nn.Module):
    """features [R, C] (or [R, C, H, W], averaged) -> Linear -> BatchNorm1d -> embeddings [R, D] (about unit
    variance per dimension, norm about sqrt(D)); their L2-normalised rows are the search embeddings.

    The batch norm matters: pooled ReLU features are non-negative and share a large common component, so a
    plain projection maps every box to nearly the same direction. It has no affine parameters: with a
    learnable shift, training from scratch against memories (OLP dictionary, C2HEP centers) that lag the
    fast-changing features found a shortcut, shrinking the scale until every embedding was the shift, where
    every memory loss sits at its uniform value log(K + 1) (measured: CPU configs, BN scale 0.14).

    ``norm="batch"`` (default): batch statistics in training. ``norm="running"``: training normalises with
    the running statistics (updated from each batch first, not differentiated), as inference does. A re-id
    batch holds the boxes of two or three people (two images sharing one identity), so batch statistics
    centre each box on whoever else is in the batch and the memories (filled from other batches) disagree
    with the current features; measured trade-offs in dcinet_d2/config.py (MODEL.REID.EMBED_NORM).
    """

    def __init__(self, in_channels, embed_dim, norm="batch"):
        super().__init__()
        if norm not in ("running", "batch"):
            raise ValueError(f"MODEL.REID.EMBED_NORM must be 'running' or 'batch', got {norm!r}")
        self.norm = norm
        self.proj = nn.Linear(in_channels, embed_dim, bias=False)
        nn.init.normal_(self.proj.weight, std=0.01)
        self.bn = nn.BatchNorm1d(embed_dim, affine=False)

    def forward(self, x):
        if x.dim() == 4:
            x = x.mean(dim=(2, 3))
        x = self.proj(x.flatten(1))
        if self.training and x.shape[0] >= 2:
            if self.norm == "batch":
                return self.bn(x)
            with torch.no_grad():  # update the running statistics only
                # The first batch sets them: from the initial unit variance, the tiny projections of a fresh
                # head would be L2-normalised from a norm near 0, and their gradient (1 / norm) wrecked the
                # pretrained backbone in the first steps (measured: re-id gradient norm 1200 at step 10).
                first = int(self.bn.num_batches_tracked) == 0
                F.batch_norm(x, self.bn.running_mean, self.bn.running_var, training=True,
                             momentum=1.0 if first else self.bn.momentum, eps=self.bn.eps)
                self.bn.num_batches_tracked += 1
        return F.batch_norm(x, self.bn.running_mean, self.bn.running_var, training=False, eps=self.bn.eps)


class Res5ReIDHead(nn.Module):
    """DC-I-Net's re-id head on ResNets: its own res5 stage, global average pooling, embedding."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        # Not named "res5": Detectron2 matches ImageNet checkpoint keys by suffix, and "res5.*" would then
        # match both this stage and the C4 box head's. DCINetROIHeads copies the box head's res5 here
        # when a checkpoint has no re-id head (ImageNet initialisation of both stages).
        self.reid_res5, out_channels = build_res5_stage(cfg, input_shape.channels, cfg.MODEL.REID.NORM)
        self.embed = EmbeddingProjection(out_channels, cfg.MODEL.REID.EMBED_DIM, cfg.MODEL.REID.EMBED_NORM)

    def forward(self, x):
        return self.embed(self.reid_res5(x))


class ConvReIDHead(nn.Module):
    """DC-I-Net's re-id head for VGG16 and small CPU models: 3x3 conv stack, pooling, embedding."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        r = cfg.MODEL.REID
        layers, channels = [], input_shape.channels
        for _ in range(r.CONV_LAYERS):
            layers.append(Conv2d(channels, r.CONV_DIM, 3, padding=1, bias=not r.NORM,
                                 norm=get_norm(r.NORM, r.CONV_DIM), activation=F.relu))
            channels = r.CONV_DIM
        self.convs = nn.Sequential(*layers)
        self.embed = EmbeddingProjection(channels, r.EMBED_DIM, r.EMBED_NORM)

    def forward(self, x):
        return self.embed(self.convs(x))


class MobileNetV2ReIDHead(nn.Module):
    """DC-I-Net's re-id head on MobileNetV2: its own copy of the stride-32 blocks (initialised from the box
    head's pretrained ones by DCINetROIHeads), global average pooling, embedding."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        from .mobilenet import LAST_CHANNELS, MobileNetV2Stage5

        self.reid_stage5 = MobileNetV2Stage5(cfg.MODEL.REID.NORM)
        self.embed = EmbeddingProjection(LAST_CHANNELS, cfg.MODEL.REID.EMBED_DIM, cfg.MODEL.REID.EMBED_NORM)

    def forward(self, x):
        return self.embed(self.reid_stage5(x))


class VGG16Conv5ReIDHead(nn.Module):
    """DC-I-Net's re-id head on VGG16: its own copy of the pretrained conv5 block, fed from conv4_3 as the
    backbone feeds it (pool4, conv5_1..conv5_3 with ReLU), so that the re-identifier is as deep in
    pretrained layers as the detector (DCINetROIHeads copies the backbone's conv5 weights here).
    [R, 512, S, S] pooled from "vgg_conv4" (stride 8) -> [R, D]."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        from .vgg import VGG16_LAYERS

        if input_shape.channels != 512 or input_shape.stride != 8:
            raise ValueError("MODEL.REID.HEAD VGG16Conv5 pools conv4_3 (MODEL.REID.IN_FEATURES ['vgg_conv4']: 512 "
                             f"channels, stride 8), got {input_shape.channels} channels at stride {input_shape.stride}")
        norm = cfg.MODEL.REID.NORM if cfg.MODEL.VGG.NORM else ""  # the ImageNet VGG16 has no normalisation
        self.reid_conv5 = nn.Sequential()
        for name in VGG16_LAYERS[4]:
            self.reid_conv5.add_module(name, Conv2d(512, 512, 3, padding=1, bias=not norm, norm=get_norm(norm, 512),
                                                    activation=F.relu))
        self.embed = EmbeddingProjection(512, cfg.MODEL.REID.EMBED_DIM, cfg.MODEL.REID.EMBED_NORM)

    def forward(self, x):
        return self.embed(self.reid_conv5(F.max_pool2d(x, kernel_size=2, stride=2)))


REID_HEADS = {"Res5": Res5ReIDHead, "Conv": ConvReIDHead, "MobileNetV2": MobileNetV2ReIDHead,
              "VGG16Conv5": VGG16Conv5ReIDHead}


def build_reid_head(cfg, input_shape: ShapeSpec) -> nn.Module:
    """The re-id head named by MODEL.REID.HEAD, for pooled features of ``input_shape.channels``."""
    name = cfg.MODEL.REID.HEAD
    if name not in REID_HEADS:
        raise ValueError(f"MODEL.REID.HEAD = {name!r}: unknown re-id head; expected one of {sorted(REID_HEADS)}")
    return REID_HEADS[name](cfg, input_shape)


@ROI_BOX_HEAD_REGISTRY.register()
class Res5BoxHead(nn.Module):
    """The C4 box head as a ROI_BOX_HEAD (res5 per RoI, then average pooling), so that C4 models run
    through StandardROIHeads: [R, C, 14, 14] -> [R, 8 * RES2_OUT_CHANNELS]."""

    def __init__(self, cfg, input_shape: ShapeSpec):
        super().__init__()
        self.res5, self._out_channels = build_res5_stage(cfg, input_shape.channels, cfg.MODEL.RESNETS.NORM)

    def forward(self, x):
        return self.res5(x).mean(dim=(2, 3))

    @property
    def output_shape(self):
        return ShapeSpec(channels=self._out_channels)
