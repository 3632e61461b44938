"""OIM loss (Online Instance Matching, Xiao et al., CVPR 2017), a baseline of the paper's comparisons.

A labelled feature is classified against the lookup table (one row per labelled identity) and the circular
queue of unlabelled features: softmax over `scale * <x, v>` for v in [LUT; queue], target = its identity.
The table and the queue are buffers of `OIMTable` (dictionaries.py), updated after the loss.
"""
import torch
import torch.nn.functional as F

__all__ = ["oim_loss"]


def oim_loss(
    features: torch.Tensor, labels: torch.Tensor, lut: torch.Tensor, queue: torch.Tensor, scale: float
) -> torch.Tensor:
    """Cross-entropy of the labelled features over lookup table + queue.

    Args:
        features (Tensor[n, D]): L2-normalised features; rows with label -1 (unlabelled) take no part.
        labels (LongTensor[n]): identities in 0..T-1, or -1.
        lut (Tensor[T, D]): lookup table, one (unit or zero) row per labelled identity.
        queue (Tensor[Q, D]): unlabelled features (filled entries only; Q may be 0).
        scale (float): logit scale, 1/temperature (MODEL.REID.OIM.SCALE).

    Returns:
        Tensor[]: mean loss over the labelled rows (a graph-connected zero when there is none).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"oim_loss: expected features [n, D] and labels [n], got {tuple(features.shape)} and {tuple(labels.shape)}"
        )
    if lut.dim() != 2 or queue.dim() != 2 or lut.shape[1] != features.shape[1] or queue.shape[1] != features.shape[1]:
        raise ValueError(
            f"oim_loss: lut {tuple(lut.shape)} and queue {tuple(queue.shape)} must be [T, D] and [Q, D] with "
            f"D = {features.shape[1]}"
        )
    labelled = labels >= 0
    if labels.numel() and int(labels.max()) >= lut.shape[0]:
        raise ValueError(f"oim_loss: labels must lie in 0..{lut.shape[0] - 1} (or be -1)")
    if not bool(labelled.any()):
        return features.sum() * 0.0
    logits = scale * features[labelled] @ torch.cat([lut, queue], dim=0).t()
    return F.cross_entropy(logits, labels[labelled])
