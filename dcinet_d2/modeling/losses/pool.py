"""The priority pool of classes shared by HEP and C2HEP (docs/METHOD.md, "HEP loss").

Order of filling, never repeating a class:
1. the batch's ground-truth classes (distinct, in order of first appearance);
2. the hard negative classes: for each sample the classes most similar to it (largest similarity, its own
   class excluded), taken rank by rank across samples (every sample's hardest, then every sample's second
   hardest, ...) so that no sample monopolises the pool; at most `hard_per_sample` ranks per sample;
3. random classes until the pool holds `pool_size` classes.
"""
from typing import Optional

import torch

__all__ = ["select_priority_pool"]


def _unique_first(values: torch.Tensor) -> torch.Tensor:
    """Distinct entries of a 1-D tensor in order of first appearance."""
    if values.numel() == 0:
        return values
    uniq, inverse = torch.unique(values, return_inverse=True)
    positions = torch.arange(values.numel(), device=values.device)
    first = torch.full((uniq.numel(),), values.numel(), dtype=torch.long, device=values.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return values[first.sort().values]


def _check_pool_size(pool_size, config_key: str) -> None:
    if isinstance(pool_size, bool) or not isinstance(pool_size, int) or pool_size < 1:
        raise ValueError(f"{config_key} must be an integer >= 1, got {pool_size!r}")


def _hard_classes(labels, similarities, eligible, chosen, count, hard_per_sample):
    """Up to `count` hard negative classes, rank-by-rank round robin over the samples."""
    n, num_classes = similarities.shape
    if count <= 0 or n == 0:
        return labels.new_zeros(0)
    sims = similarities.detach().float().clone()
    sims[:, ~eligible] = float("-inf")
    sims[torch.arange(n, device=sims.device), labels] = float("-inf")
    # count + |chosen| ranks suffice: sample 0 alone then offers `count` classes not yet chosen.
    ranks = min(num_classes, count + int(chosen.sum()))
    if hard_per_sample is not None:
        ranks = min(ranks, hard_per_sample)
    if ranks <= 0:
        return labels.new_zeros(0)
    values, indices = sims.topk(ranks, dim=1)
    # Transposed flattening lists rank 0 of every sample, then rank 1, ...: the round robin order.
    values, indices = values.t().reshape(-1), indices.t().reshape(-1)
    keep = torch.isfinite(values) & ~chosen[indices]
    return _unique_first(indices[keep])[:count]


def _random_classes(eligible, chosen, count, generator):
    """Up to `count` distinct random classes among the eligible ones not chosen yet."""
    candidates = torch.nonzero(eligible & ~chosen).flatten()
    if count <= 0 or candidates.numel() == 0:
        return candidates[:0]
    order = torch.randperm(candidates.numel(), generator=generator).to(candidates.device)
    return candidates[order[:count]]


def select_priority_pool(
    labels: torch.Tensor,
    similarities: torch.Tensor,
    pool_size: int,
    generator: Optional[torch.Generator] = None,
    *,
    hard_per_sample: Optional[int] = None,
    allowed: Optional[torch.Tensor] = None,
    config_key: str = "MODEL.REID.*.POOL_SIZE",
) -> torch.Tensor:
    """Classes of the priority pool: batch labels, then hard negatives, then random classes.

    Args:
        labels (LongTensor[n]): identities of the labelled samples, in 0..T-1.
        similarities (Tensor[n, T]): similarity of each sample to each class (cosine to classifier rows or
            class centers); larger = harder negative. Not differentiated.
        pool_size (int): |P|; pool_size >= T gives all (allowed) classes.
        generator (torch.Generator, optional): CPU generator of the random fill (default: torch's global RNG).
        hard_per_sample (int, optional): at most this many hard classes are taken per sample (ranks 0..h-1);
            None = no limit (hard classes fill the pool; random classes only when they run out).
        allowed (BoolTensor[T], optional): classes that may enter as negatives (hard or random), e.g. the
            class centers already initialised; the batch's labels always enter. If fewer classes are allowed
            than needed, the pool is smaller than pool_size.
        config_key (str): name of the config key of pool_size, for error messages.

    Returns:
        LongTensor[|P|]: distinct class indices on labels' device: labels first, then hard, then random
        (all classes in increasing order when pool_size >= T).
    """
    _check_pool_size(pool_size, config_key)
    if labels.dim() != 1 or similarities.dim() != 2 or similarities.shape[0] != labels.shape[0]:
        raise ValueError(
            f"select_priority_pool: expected labels [n] and similarities [n, T], got {tuple(labels.shape)} and "
            f"{tuple(similarities.shape)}"
        )
    num_classes = similarities.shape[1]
    labels = labels.long()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"select_priority_pool: labels must lie in 0..{num_classes - 1}")
    eligible = torch.ones(num_classes, dtype=torch.bool, device=labels.device)
    if allowed is not None:
        if allowed.shape != (num_classes,):
            raise ValueError(f"select_priority_pool: allowed must be [T] = [{num_classes}], got {tuple(allowed.shape)}")
        eligible = allowed.to(device=labels.device, dtype=torch.bool)
    batch_classes = _unique_first(labels)
    if batch_classes.numel() > pool_size:
        raise ValueError(
            f"{config_key} = {pool_size} is smaller than the {batch_classes.numel()} distinct labelled identities "
            f"in the batch; raise it"
        )
    if pool_size >= num_classes:
        members = eligible.clone()
        members[batch_classes] = True
        return torch.nonzero(members).flatten()
    chosen = torch.zeros(num_classes, dtype=torch.bool, device=labels.device)
    chosen[batch_classes] = True
    hard = _hard_classes(labels, similarities.to(labels.device), eligible, chosen,
                         pool_size - batch_classes.numel(), hard_per_sample)
    chosen[hard] = True
    rand = _random_classes(eligible, chosen, pool_size - batch_classes.numel() - hard.numel(), generator)
    return torch.cat([batch_classes, hard, rand])
