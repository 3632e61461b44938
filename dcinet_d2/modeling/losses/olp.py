"""OLP loss (On-line Pairing), I-Net's metric loss against an on-line feature dictionary.

For anchor a_i with positive p_i and negatives n_1..n_K (docs/METHOD.md, "OLP loss"):

    L_OLP = -(1/m) * sum_i log( e^{s d(a_i,p_i)} / (e^{s d(a_i,p_i)} + sum_k e^{s d(a_i,n_k)}) )

with d the dot product (the caller passes L2-normalised features, so d is the cosine similarity) and s the
similarity scale (MODEL.REID.OLP.SCALE; s = 1 is the seed's formula). At s = 1 the gradient w.r.t. a_i is the
seed's closed form ((q_i - 1) p_i + sum_k q^_ik n_k) / m; autograd gives it, no custom backward is needed.
"""
from typing import Optional

import torch

__all__ = ["olp_loss"]


def _negative_logits(anchors: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Dot products [m, K] of each anchor [m, D] with shared [K, D] or per-anchor [m, K, D] negatives."""
    if negatives.dim() == 2:
        if negatives.shape[1] != anchors.shape[1]:
            raise ValueError(
                f"olp_loss: negatives of shape {tuple(negatives.shape)} do not match the anchors' dimension "
                f"D = {anchors.shape[1]}; expected [K, D] or [m, K, D]"
            )
        return anchors @ negatives.t()
    if negatives.dim() == 3:
        if negatives.shape[0] != anchors.shape[0] or negatives.shape[2] != anchors.shape[1]:
            raise ValueError(
                f"olp_loss: per-anchor negatives of shape {tuple(negatives.shape)} do not match anchors "
                f"{tuple(anchors.shape)}; expected [m, K, D]"
            )
        return torch.einsum("md,mkd->mk", anchors, negatives)
    raise ValueError(f"olp_loss: negatives must be [K, D] or [m, K, D], got shape {tuple(negatives.shape)}")


def olp_loss(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    scale: float = 1.0,
    negatives_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Mean over anchors of the OLP softmax loss (one positive against K negatives).

    Args:
        anchors (Tensor[m, D]): anchor features (L2-normalised by the caller).
        positives (Tensor[m, D]): the positive of each anchor (same identity, other image).
        negatives (Tensor[K, D] or Tensor[m, K, D]): negatives shared by all anchors, or per anchor.
            K = 0 is allowed (the loss is then 0: nothing to separate from).
        scale (float): similarity scale s (logits s * d).
        negatives_mask (BoolTensor[m, K], optional): True = negative k is used for anchor i; False drops it
            (e.g. a dictionary entry of the anchor's own identity).

    Returns:
        Tensor[]: the loss. With m = 0 a zero that stays connected to the inputs' graph.
    """
    if anchors.dim() != 2 or positives.shape != anchors.shape:
        raise ValueError(
            f"olp_loss: anchors and positives must both be [m, D], got {tuple(anchors.shape)} and "
            f"{tuple(positives.shape)}"
        )
    neg = scale * _negative_logits(anchors, negatives)
    if anchors.shape[0] == 0:
        return (anchors.sum() + positives.sum() + negatives.sum()) * 0.0
    if negatives_mask is not None:
        if negatives_mask.shape != neg.shape:
            raise ValueError(
                f"olp_loss: negatives_mask has shape {tuple(negatives_mask.shape)}, expected {tuple(neg.shape)}"
            )
        # exp(-inf) = 0 removes the entry from the denominator exactly.
        neg = neg.masked_fill(~negatives_mask.bool(), float("-inf"))
    pos = scale * (anchors * positives).sum(dim=1)
    logits = torch.cat([pos[:, None], neg], dim=1)
    return (torch.logsumexp(logits, dim=1) - pos).mean()
