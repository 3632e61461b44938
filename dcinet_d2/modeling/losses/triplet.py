"""Batch-hard triplet loss (Hermans et al. 2017) on cosine distance, the paper's "Triplet+HEP" baseline."""
import torch

__all__ = ["batch_hard_triplet_loss"]


def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """For each labelled anchor: relu(hardest positive distance - hardest negative distance + margin).

    Distances are cosine distances 1 - <x_i, x_j> of L2-normalised features. Only labelled samples (label >= 0)
    take part; an anchor counts only if the batch holds another sample of its identity and one of another
    identity.

    Args:
        features (Tensor[n, D]): L2-normalised features.
        labels (LongTensor[n]): identities, -1 = unlabelled (ignored).
        margin (float): MODEL.REID.TRIPLET.MARGIN, in cosine-distance units.

    Returns:
        Tensor[]: mean over the valid anchors (a graph-connected zero when there is none).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"batch_hard_triplet_loss: expected features [n, D] and labels [n], got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    x, y = features[labels >= 0], labels[labels >= 0]
    dist = 1.0 - x @ x.t()
    same = y[:, None] == y[None, :]
    positive = same & ~torch.eye(y.numel(), dtype=torch.bool, device=y.device)
    valid = positive.any(dim=1) & (~same).any(dim=1)
    if not bool(valid.any()):
        return features.sum() * 0.0
    hardest_pos = dist.masked_fill(~positive, float("-inf")).max(dim=1).values
    hardest_neg = dist.masked_fill(same, float("inf")).min(dim=1).values
    return torch.relu(hardest_pos - hardest_neg + margin)[valid].mean()
