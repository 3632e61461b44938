"""The re-id losses' memories as modules holding only buffers (so they land in state_dict and Detectron2's
checkpointer saves and resumes them): the OLP feature dictionary, C2HEP's class centers, OIM's tables.

All updates run under torch.no_grad() on detached copies; they never take part in back-propagation.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeatureDictionary", "ClassCenters", "OIMTable", "EMPTY_SLOT"]

# Label of a dictionary slot never written; such slots are never used as negatives.
EMPTY_SLOT = -2


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_batch(features: torch.Tensor, labels: torch.Tensor, dim: int, where: str) -> None:
    if features.dim() != 2 or features.shape[1] != dim or labels.shape != features.shape[:1]:
        raise ValueError(
            f"{where}: expected features [n, {dim}] and labels [n], got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )


def _ring_indices(ptr: int, count: int, size: int, device) -> torch.Tensor:
    """Slots written by `count` consecutive FIFO writes starting at `ptr` in a ring of `size` slots."""
    return (ptr + torch.arange(count, device=device)) % size


class FeatureDictionary(nn.Module):
    """OLP's on-line feature dictionary: a FIFO ring of K features with their identity labels.

    Buffers: `features` [K, D]; `labels` [K] (identity >= 0, -1 = unlabelled person, EMPTY_SLOT = never
    written); `ptr` [] (the next slot to write). Once full, each push overwrites the oldest entries.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        _check_positive_int(size, "MODEL.REID.OLP.DICT_SIZE")
        _check_positive_int(dim, "MODEL.REID.EMBED_DIM")
        self.register_buffer("features", torch.zeros(size, dim))
        self.register_buffer("labels", torch.full((size,), EMPTY_SLOT, dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @property
    def num_filled(self) -> int:
        return int((self.labels != EMPTY_SLOT).sum())

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append features [n, D] with labels [n] (>= 0 or -1) in order; the oldest entries are overwritten."""
        _check_batch(features, labels, self.features.shape[1], "FeatureDictionary.push")
        if labels.numel() and int(labels.min()) < -1:
            raise ValueError("FeatureDictionary.push: labels must be identities >= 0 or -1 (unlabelled)")
        n, ptr = labels.numel(), int(self.ptr)
        slots = _ring_indices(ptr, n, self.size, self.labels.device)
        # With n > K only the last K writes survive; keeping just them avoids duplicate-index writes.
        keep = slice(max(0, n - self.size), n)
        self.features[slots[keep]] = features[keep].detach().to(self.features)
        self.labels[slots[keep]] = labels[keep].to(self.labels)
        self.ptr.fill_((ptr + n) % self.size)

    def negatives_for(self, labels: torch.Tensor):
        """Negatives of anchors with the given identities.

        Args:
            labels (LongTensor[m]): the anchors' identities (>= 0).

        Returns:
            (Tensor[K', D], BoolTensor[m, K']): the written entries (slot order) and, per anchor, True where
            the entry may be its negative: entries of the anchor's own identity are False; unlabelled
            entries (-1) are always True.
        """
        written = self.labels != EMPTY_SLOT
        entries, entry_labels = self.features[written], self.labels[written]
        mask = (entry_labels[None, :] != labels[:, None].to(entry_labels)) | (entry_labels[None, :] < 0)
        return entries, mask


class ClassCenters(nn.Module):
    """C2HEP's class-center dictionary: one center per labelled identity.

    Buffers: `centers` [T, D] (zero until initialised) and `initialized` [T] bool.
    Update rule ``rule="batch_mean"`` (default; one vectorised update per step, no loop over features and
    no device sync): each class j seen in the step, with the mean x_j of its features in the step, becomes
    c_j <- phi * c_j + (1 - phi) * x_j, or x_j when it was never seen; then, if `renorm`, c_j <- c_j / ||c_j||.
    For one feature per class this is exactly the seed's rule c <- phi * c + (1 - phi) * x; several features of
    one class in a step move its center once, by their mean. ``rule="sequential"``: the earlier behaviour,
    one feature at a time in the order given (a class seen twice is updated twice).
    """

    RULES = ("batch_mean", "sequential")

    def __init__(self, num_classes: int, dim: int, momentum: float, renorm: bool, rule: str = "batch_mean"):
        super().__init__()
        _check_positive_int(num_classes, "MODEL.REID.NUM_IDENTITIES")
        _check_positive_int(dim, "MODEL.REID.EMBED_DIM")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"MODEL.REID.C2HEP.MOMENTUM must be in [0, 1], got {momentum!r}")
        if rule not in self.RULES:
            raise ValueError(f"MODEL.REID.C2HEP.UPDATE must be one of {self.RULES}, got {rule!r}")
        self.momentum = float(momentum)
        self.renorm = bool(renorm)
        self.rule = rule
        self.register_buffer("centers", torch.zeros(num_classes, dim))
        self.register_buffer("initialized", torch.zeros(num_classes, dtype=torch.bool))

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Update with features [n, D] of identities labels [n]; entries with label < 0 are skipped."""
        _check_batch(features, labels, self.centers.shape[1], "ClassCenters.update")
        if labels.numel() and int(labels.max()) >= self.centers.shape[0]:
            raise ValueError(f"ClassCenters.update: labels must lie in 0..{self.centers.shape[0] - 1} (or be -1)")
        features = features.detach().to(self.centers)
        keep = labels >= 0
        if self.rule == "sequential":
            return self._update_sequential(features[keep], labels[keep])
        x, y = features[keep], labels[keep].to(self.centers.device)
        sums = torch.zeros_like(self.centers).index_add_(0, y, x)
        counts = torch.zeros(len(self.centers), device=self.centers.device).index_add_(0, y, torch.ones_like(y,
                                                                                                       dtype=x.dtype))
        seen = counts > 0
        mean = sums / counts.clamp(min=1)[:, None]
        new = torch.where(self.initialized[:, None], self.momentum * self.centers + (1.0 - self.momentum) * mean, mean)
        if self.renorm:
            new = F.normalize(new, dim=1)
        self.centers.copy_(torch.where(seen[:, None], new, self.centers))
        self.initialized |= seen

    def _update_sequential(self, features, labels):
        for x, j in zip(features, labels.tolist()):
            if self.initialized[j]:
                center = self.momentum * self.centers[j] + (1.0 - self.momentum) * x
            else:
                center = x
                self.initialized[j] = True
            self.centers[j] = F.normalize(center, dim=0) if self.renorm else center


class OIMTable(nn.Module):
    """OIM's memories: a lookup table of labelled identities and a circular queue of unlabelled features.

    Buffers: `lut` [T, D] (zero rows until seen), `queue` [Q, D], `queue_count` [] (filled slots, the first
    ones) and `queue_ptr` []. LUT update, sequential per feature: v <- normalise(m * v + (1 - m) * x), so an
    unseen (zero) row becomes x itself.
    """

    def __init__(self, num_classes: int, dim: int, queue_size: int, momentum: float):
        super().__init__()
        _check_positive_int(num_classes, "MODEL.REID.NUM_IDENTITIES")
        _check_positive_int(dim, "MODEL.REID.EMBED_DIM")
        _check_positive_int(queue_size, "MODEL.REID.OIM.QUEUE_SIZE")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"MODEL.REID.OIM.MOMENTUM must be in [0, 1), got {momentum!r}")
        self.momentum = float(momentum)
        self.register_buffer("lut", torch.zeros(num_classes, dim))
        self.register_buffer("queue", torch.zeros(queue_size, dim))
        self.register_buffer("queue_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    def queue_entries(self) -> torch.Tensor:
        """The filled queue slots [Q', D]."""
        return self.queue[: int(self.queue_count)]

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Labelled features [n, D] (labels >= 0) update the LUT; unlabelled ones (-1) enter the queue."""
        _check_batch(features, labels, self.lut.shape[1], "OIMTable.update")
        if labels.numel() and int(labels.max()) >= self.lut.shape[0]:
            raise ValueError(f"OIMTable.update: labels must lie in 0..{self.lut.shape[0] - 1} (or be -1)")
        features = features.detach().to(self.lut)
        for x, j in zip(features[labels >= 0], labels[labels >= 0].tolist()):
            self.lut[j] = F.normalize(self.momentum * self.lut[j] + (1.0 - self.momentum) * x, dim=0)
        self._enqueue(features[labels < 0])

    def _enqueue(self, features: torch.Tensor) -> None:
        size, n, ptr = self.queue.shape[0], features.shape[0], int(self.queue_ptr)
        slots = _ring_indices(ptr, n, size, self.queue.device)
        keep = slice(max(0, n - size), n)
        self.queue[slots[keep]] = features[keep]
        self.queue_ptr.fill_((ptr + n) % size)
        self.queue_count.fill_(min(size, int(self.queue_count) + n))
