"""Contrastive (pairwise) loss (Hadsell et al. 2006) on cosine similarity: the paper's input-number baseline."""
import torch

__all__ = ["contrastive_loss"]


def contrastive_loss(features: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over all pairs i < j of labelled samples of the batch of

        same identity:      (1 - cos_ij)^2
        different identity: relu(cos_ij - margin)^2

    i.e. Hadsell's y d^2 + (1 - y) max(0, m' - d)^2 with d = 1 - cos and m' = 1 - margin.

    Args:
        features (Tensor[n, D]): L2-normalised features.
        labels (LongTensor[n]): identities, -1 = unlabelled (ignored).
        margin (float): MODEL.REID.CONTRASTIVE.MARGIN: negatives are pushed below this cosine similarity.

    Returns:
        Tensor[]: the mean pair loss (a graph-connected zero with fewer than 2 labelled samples).
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"contrastive_loss: expected features [n, D] and labels [n], got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    x, y = features[labels >= 0], labels[labels >= 0]
    if y.numel() < 2:
        return features.sum() * 0.0
    i, j = torch.triu_indices(y.numel(), y.numel(), offset=1, device=y.device)
    cos = (x[i] * x[j]).sum(dim=1)
    same = y[i] == y[j]
    per_pair = torch.where(same, (1.0 - cos) ** 2, torch.relu(cos - margin) ** 2)
    return per_pair.mean()
