"""RunningBatchNorm2d: batch normalisation that normalises with its running statistics in training too.

I-Net's re-id embeds the box head's features, and the box head runs on the RoIs of all images of a step at
once. Batch statistics there centre every RoI on the mean of the step's RoIs, so each image's RoIs carry a
component set by the *other* image: the same person seen in two images is pushed apart, and the OLP loss
ends above its uniform value (docs/METHOD.md, "I-Net's shared box head"). The paper's networks normalise with
fixed (global) statistics, which keep each RoI's features its own; fixed ImageNet statistics let the head's
units die here as its weights move, so the statistics keep being estimated from each batch (no gradient
through them) and only the normalisation uses them.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RunningBatchNorm2d"]


class RunningBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d (same parameters and buffers, so BN checkpoints load) whose output in training is
    ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``, as at inference, after the running
    statistics have been updated from the batch. [N, C, H, W] -> [N, C, H, W]; a RoI's output does not depend
    on the other RoIs of the batch."""

    def forward(self, x):
        if self.training:
            with torch.no_grad():
                F.batch_norm(x, self.running_mean, self.running_var, training=True, momentum=self.momentum,
                             eps=self.eps)
                self.num_batches_tracked += 1
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training=False,
                            eps=self.eps)
