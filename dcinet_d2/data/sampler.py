"""Training batches of images that share labelled identities (the paper's "on-line pairing")."""
import itertools
import logging
import random
from collections import defaultdict

import numpy as np
import torch
from torch.utils.data import Sampler, get_worker_info

from detectron2.data.common import MapDataset
from detectron2.utils import comm

logger = logging.getLogger(__name__)

__all__ = ["PairedIdentitySampler", "SeededMapDataset"]


class PairedIdentitySampler(Sampler):
    """Infinite stream of dataset indices for this rank, in batches made of identity-sharing groups.

    The stream is meant to be cut into consecutive batches of ``images_per_batch`` indices (one batch per
    GPU and step). Each batch holds ``images_per_batch // group_size`` groups; a group is
    ``group_size`` distinct images that all contain one labelled identity (``person_id >= 0``).
    Groups are drawn epoch by epoch: every image that holds an identity seen in at least ``group_size``
    images is, once per epoch in a random order, the anchor of a group; the group's identity is one of
    the anchor's such identities, its other images are drawn among that identity's images.

    All ranks draw the same global sequence of batches from a shared seed; rank r keeps batches
    r, r + W, r + 2W, ... (W the world size), so ranks get different groups. Inside a DataLoader worker,
    the rank's batches are further split among the workers batch by batch (never index by index, which
    would break the groups): wrap it with ``ToIterableDataset(..., shard_sampler=False)``, as
    :func:`dcinet_d2.data.build.build_person_search_train_loader` does.
    """

    def __init__(self, dataset_dicts, images_per_batch, group_size=2, seed=None):
        """
        Args:
            dataset_dicts (list[dict]): the training dataset dicts (``annotations`` with ``person_id``).
            images_per_batch (int): images per batch on this rank; a multiple of ``group_size``.
            group_size (int): images per group sharing one identity (>= 1).
            seed (int or None): seed shared by all ranks; None: :func:`comm.shared_random_seed`.
        """
        if group_size < 1:
            raise ValueError(f"group_size {group_size}: expected a positive integer")
        if images_per_batch < group_size or images_per_batch % group_size:
            raise ValueError(
                f"images per batch {images_per_batch} (per GPU): expected a positive multiple of the group "
                f"size {group_size} (DATALOADER.PAIRED.GROUP_SIZE; SOLVER.IMS_PER_BATCH / world size)"
            )
        self._group_size = int(group_size)
        self._groups_per_batch = images_per_batch // group_size
        self._images_per_batch = int(images_per_batch)
        self._images_of, self._anchors, self._anchor_ids = _identity_index(dataset_dicts, group_size)
        if not self._anchors:
            raise ValueError(
                f"paired sampling: no labelled identity (person_id >= 0) appears in {group_size} or more of "
                f"the {len(dataset_dicts)} training images; lower DATALOADER.PAIRED.GROUP_SIZE or disable "
                "DATALOADER.PAIRED.ENABLED"
            )
        logger.info(
            "Paired sampler: %d identities in >= %d images; %d of %d images can anchor a group",
            len(self._images_of), group_size, len(self._anchors), len(dataset_dicts),
        )
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank = comm.get_rank()
        self._world_size = comm.get_world_size()

    # This rank's batches before this one are skipped (set when training resumes; see dcinet_d2/resume.py).
    start_batch = 0

    def __iter__(self):
        """Yields (dataset index, sample seed): the seed is a function of the sample's place in the global
        stream only, so that a resumed run maps (augments) every sample exactly as an uninterrupted one."""
        batches = itertools.islice(self._infinite_batches(), self._rank, None, self._world_size)
        numbered = itertools.islice(enumerate(batches), self.start_batch, None)
        worker = get_worker_info()
        if worker is not None and worker.num_workers > 1:
            numbered = itertools.islice(numbered, worker.id, None, worker.num_workers)
        for b, batch in numbered:
            for j, index in enumerate(batch):
                yield index, self.sample_seed(b, j)

    def sample_seed(self, batch, position):
        """Seed of the ``position``-th image of this rank's ``batch``-th batch (0 <= seed < 2**31)."""
        key = ((self._seed * 1_000_003 + batch) * self._world_size + self._rank) * self._images_per_batch + position
        return int(np.random.SeedSequence(key % 2**63).generate_state(1)[0] % 2**31)

    def _infinite_groups(self):
        """Groups (list of ``group_size`` distinct indices) of the global stream."""
        rng = np.random.default_rng(self._seed)
        while True:
            for a in rng.permutation(len(self._anchors)):
                anchor, ids = self._anchors[a], self._anchor_ids[a]
                pid = ids[int(rng.integers(len(ids)))]
                others = self._images_of[pid]
                others = others[others != anchor]
                picked = rng.choice(others, size=self._group_size - 1, replace=False)
                yield [int(anchor)] + [int(i) for i in picked]

    def _infinite_batches(self):
        """Batches (list of ``images_per_batch`` indices) of the global stream."""
        groups = self._infinite_groups()
        while True:
            yield [i for _ in range(self._groups_per_batch) for i in next(groups)]


class SeededMapDataset(MapDataset):
    """MapDataset indexed by (index, seed): the random generators the mapper's augmentations draw from
    (numpy's, Python's and torch's global ones) are seeded with ``seed`` first."""

    def __getitem__(self, item):
        index, seed = item
        np.random.seed(seed)
        random.seed(seed)
        torch.manual_seed(seed)
        return super().__getitem__(index)


def _identity_index(dataset_dicts, group_size):
    """Images of each identity seen in >= ``group_size`` images, and the images holding such identities.

    Returns:
        images_of (dict[int, ndarray[int]]): dataset indices of each eligible identity's images.
        anchors (list[int]): indices of the images that hold an eligible identity.
        anchor_ids (list[list[int]]): the eligible identities of each anchor.
    """
    images_of = defaultdict(set)
    for index, d in enumerate(dataset_dicts):
        for anno in d.get("annotations", []):
            pid = int(anno.get("person_id", -1))
            if pid >= 0:
                images_of[pid].add(index)
    images_of = {pid: np.array(sorted(v)) for pid, v in images_of.items() if len(v) >= group_size}
    ids_of_image = defaultdict(list)
    for pid in sorted(images_of):
        for index in images_of[pid]:
            ids_of_image[int(index)].append(pid)
    anchors = sorted(ids_of_image)
    return images_of, anchors, [ids_of_image[i] for i in anchors]
