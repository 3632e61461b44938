"""C2HEP loss (class-center guided HEP), DC-I-Net's classification loss.

The logits are lambda times the cosine similarity of a feature to the class centers of the priority pool
(docs/METHOD.md, "DC-I-Net", item 3):

    p_j = e^{lambda d(x_i, c_j)} / sum_{c in P} e^{lambda d(x_i, c_c)},   L_C2HEP = -(1/n) sum_i log p_{y_i}

The centers come from `ClassCenters` (dictionaries.py): buffers, so the gradient reaches the features only.
"""
import torch
import torch.nn.functional as F

from .hep import pool_cross_entropy

__all__ = ["c2hep_loss"]


def c2hep_loss(
    features: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor, pool: torch.Tensor, scale: float
) -> torch.Tensor:
    """Cross-entropy over the pool of `scale * cos(feature, center)`.

    Args:
        features (Tensor[n, D]): re-id features (L2-normalised; normalised again here so d is a cosine).
        labels (LongTensor[n]): identities in 0..T-1, each present in `pool`.
        centers (Tensor[T, D]): class centers; a zero (never seen) center has cosine 0 with everything.
        pool (LongTensor[|P|]): distinct class indices containing every label.
        scale (float): lambda (MODEL.REID.C2HEP.LAMBDA).

    Returns:
        Tensor[]: mean loss over the n samples (a graph-connected zero when n = 0).
    """
    if features.dim() != 2 or centers.dim() != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(
            f"c2hep_loss: expected features [n, D] and centers [T, D], got {tuple(features.shape)} and "
            f"{tuple(centers.shape)}"
        )
    if pool.numel() and (int(pool.min()) < 0 or int(pool.max()) >= centers.shape[0]):
        raise ValueError(f"c2hep_loss: pool indices must lie in 0..{centers.shape[0] - 1}")
    cos = F.normalize(features, dim=1) @ F.normalize(centers[pool], dim=1).t()
    return pool_cross_entropy(scale * cos, labels, pool)
