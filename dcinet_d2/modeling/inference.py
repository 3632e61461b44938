"""Inference-only rewrites of a trained model that keep its outputs (up to float32 rounding) and make it faster
on a CPU (BENCHMARKS.md, "Where the inference time goes").

- Normalisations folded into their convolutions: a frozen or eval-mode BatchNorm after a conv is an affine map
  per channel, so it becomes the conv's weight scale and bias, one pass over the activations less per conv.
- Channels-last memory layout: oneDNN's convolutions run on NHWC natively, while NCHW tensors are reordered to
  and from its layout around every convolution; on MobileNetV2's 1x1 and depthwise convs the reorders cost
  more than the arithmetic.

The model must not train afterwards (the folded norms are gone).
"""
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn

__all__ = ["fold_conv_norms", "optimize_for_inference"]


@torch.no_grad()
def fold_conv_norms(model: nn.Module) -> int:
    """Fold every FrozenBatchNorm2d, and every BatchNorm2d in eval mode, that a Detectron2 ``Conv2d`` applies
    to its output into that conv's weight and bias (the conv keeps its activation). Returns how many."""
    folded = 0
    for conv in model.modules():
        norm = getattr(conv, "norm", None)
        if not isinstance(conv, Conv2d) or norm is None:
            continue
        if isinstance(norm, nn.BatchNorm2d) and norm.training:
            continue
        if not isinstance(norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            continue
        weight = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
        shift = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
        scale = weight / torch.sqrt(norm.running_var + norm.eps)  # [C_out]
        bias = shift - norm.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias * scale
        conv.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        conv.norm = None
        folded += 1
    return folded


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with its conv norms folded (:func:`fold_conv_norms`) and its 4-d weights in
    channels-last layout (activations follow the weights' layout through the convs). In place; returns it."""
    model.eval()
    fold_conv_norms(model)
    return model.to(memory_format=torch.channels_last)
