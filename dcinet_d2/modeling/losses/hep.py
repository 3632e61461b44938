"""HEP loss (Hard Example Priority softmax), I-Net's classification loss.

Cross-entropy over the columns of a priority pool P only (docs/METHOD.md, "HEP loss"):

    L_HEP = -(1/n) * sum_i log( e^{s_{y_i}} / sum_{t in P} e^{s_t} )

The pool comes from `select_priority_pool` (pool.py); it must contain every label of the batch.
"""
import torch
import torch.nn.functional as F

__all__ = ["hep_loss", "pool_cross_entropy"]


def _targets_in_pool(labels: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Position [n] of each label inside `pool`; ValueError if a label is missing or the pool repeats a class."""
    if pool.dim() != 1 or pool.dtype != torch.long:
        raise ValueError(f"pool must be a 1-D LongTensor of class indices, got {pool.dtype} {tuple(pool.shape)}")
    if torch.unique(pool).numel() != pool.numel():
        raise ValueError("pool repeats a class; expected distinct class indices")
    hits = pool[None, :] == labels[:, None]
    found = hits.any(dim=1)
    if not bool(found.all()):
        missing = torch.unique(labels[~found]).tolist()
        raise ValueError(f"labels {missing} are not in the priority pool; the pool must contain every label")
    return hits.to(torch.uint8).argmax(dim=1)


def pool_cross_entropy(pool_logits: torch.Tensor, labels: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits already restricted to the pool's columns.

    Args:
        pool_logits (Tensor[n, |P|]): column j is the logit of class pool[j].
        labels (LongTensor[n]): class indices, each present in `pool`.
        pool (LongTensor[|P|]): distinct class indices.

    Returns:
        Tensor[]: the loss; with n = 0 a zero connected to `pool_logits`' graph.
    """
    if pool_logits.dim() != 2 or pool_logits.shape != (labels.shape[0], pool.shape[0]):
        raise ValueError(
            f"pool logits of shape {tuple(pool_logits.shape)} do not match {labels.shape[0]} labels and a pool "
            f"of {pool.shape[0]} classes"
        )
    if labels.numel() == 0:
        return pool_logits.sum() * 0.0
    return F.cross_entropy(pool_logits, _targets_in_pool(labels, pool))


def hep_loss(logits: torch.Tensor, labels: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """HEP: softmax cross-entropy over the priority pool's classes only.

    Args:
        logits (Tensor[n, T]): class logits over all T identities (e.g. scale * cosine to classifier rows).
        labels (LongTensor[n]): identities in 0..T-1 (labelled samples only).
        pool (LongTensor[|P|]): distinct class indices containing every label.

    Returns:
        Tensor[]: mean loss over the n samples (a graph-connected zero when n = 0).
    """
    if logits.dim() != 2 or labels.dim() != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            f"hep_loss: expected logits [n, T] and labels [n], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    if pool.numel() and (int(pool.min()) < 0 or int(pool.max()) >= logits.shape[1]):
        raise ValueError(f"hep_loss: pool indices must lie in 0..{logits.shape[1] - 1}")
    return pool_cross_entropy(logits[:, pool], labels, pool)
