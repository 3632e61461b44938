"""PairedIdentitySampler: groups share an identity, ranks and loader workers get different batches."""
import itertools
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detectron2.utils import comm

from dcinet_d2.config import add_dcinet_config
from dcinet_d2.data import sampler as sampler_module
from dcinet_d2.data.build import build_person_search_train_loader
from dcinet_d2.data.sampler import PairedIdentitySampler

# Identities of each image; -1 unlabelled. Identity 5 is in one image only, image 6 has no identity.
IMAGE_IDS = [[0, 1], [0, -1], [1, 2], [2, 0], [3], [3, 4], [-1, 5], [4, 1], [2], [-1]]


def _dicts(image_ids=IMAGE_IDS):
    return [
        {"image_id": f"s{i}.jpg", "annotations": [
            {"bbox": [0, 0, 10, 20], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "person_id": p}
            for p in ids]}
        for i, ids in enumerate(image_ids)
    ]


def _labelled(index, image_ids=IMAGE_IDS):
    return {p for p in image_ids[index] if p >= 0}


def _take(sampler, n):
    """The first n dataset indices of the stream (it yields (index, sample seed) pairs)."""
    return [index for index, _ in itertools.islice(iter(sampler), n)]


def _groups(stream, size):
    return [stream[i : i + size] for i in range(0, len(stream), size)]


@pytest.mark.parametrize("group_size,per_batch", [(2, 2), (2, 4), (3, 3)])
def test_every_group_shares_an_identity(group_size, per_batch):
    stream = _take(PairedIdentitySampler(_dicts(), per_batch, group_size, seed=1), 600)
    for group in _groups(stream, group_size):
        assert len(set(group)) == group_size
        assert set.intersection(*(_labelled(i) for i in group))
    # Images whose identities appear nowhere else (6) or that hold no identity (9) are never drawn;
    # with group_size 3, identities 3 and 4 (2 images each) cannot form a group: image 4 and 5 drop out.
    never = {6, 9} | ({4, 5} if group_size == 3 else set())
    assert set(stream) == set(range(len(IMAGE_IDS))) - never


def test_each_anchor_once_per_epoch():
    s = PairedIdentitySampler(_dicts(), 2, 2, seed=3)
    anchors = [0, 1, 2, 3, 4, 5, 7, 8]
    firsts = [g[0] for g in _groups(_take(s, 2 * 3 * len(anchors)), 2)]
    for epoch in range(3):
        assert sorted(firsts[epoch * len(anchors) : (epoch + 1) * len(anchors)]) == anchors


def test_deterministic_for_a_seed():
    a = _take(PairedIdentitySampler(_dicts(), 4, 2, seed=7), 200)
    assert a == _take(PairedIdentitySampler(_dicts(), 4, 2, seed=7), 200)
    assert a != _take(PairedIdentitySampler(_dicts(), 4, 2, seed=8), 200)


def test_ranks_get_different_batches(monkeypatch):
    full = _take(PairedIdentitySampler(_dicts(), 4, 2, seed=5), 400)
    streams = []
    for rank in range(2):
        monkeypatch.setattr(comm, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(comm, "get_world_size", lambda: 2)
        streams.append(_take(PairedIdentitySampler(_dicts(), 4, 2, seed=5), 200))
    assert streams[0] != streams[1]
    # Rank r holds the global batches r, r + 2, ...: interleaving them gives the one-process stream.
    b0, b1 = _groups(streams[0], 4), _groups(streams[1], 4)
    assert [i for pair in zip(b0, b1) for batch in pair for i in batch] == full


def test_loader_workers_split_whole_batches(monkeypatch):
    full = _take(PairedIdentitySampler(_dicts(), 4, 2, seed=5), 80)
    for worker in range(2):
        info = SimpleNamespace(id=worker, num_workers=2)
        monkeypatch.setattr(sampler_module, "get_worker_info", lambda info=info: info)
        mine = _take(PairedIdentitySampler(_dicts(), 4, 2, seed=5), 40)
        assert _groups(mine, 4) == _groups(full, 4)[worker::2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="no labelled identity"):
        PairedIdentitySampler(_dicts([[0], [1], [-1]]), 2, 2, seed=0)
    with pytest.raises(ValueError, match="multiple of the group size 2"):
        PairedIdentitySampler(_dicts(), 3, 2, seed=0)
    with pytest.raises(ValueError, match="group_size 0"):
        PairedIdentitySampler(_dicts(), 2, 0, seed=0)


@pytest.fixture
def registered(tmp_path):
    """A tiny registered training set of real image files with IMAGE_IDS."""
    dicts = _dicts()
    for i, d in enumerate(dicts):
        path = tmp_path / f"s{i}.png"
        cv2.imwrite(str(path), np.full((40, 60, 3), 20 * i, np.uint8))
        d.update(file_name=str(path), height=40, width=60)
        for a in d["annotations"]:
            a["bbox"] = [5.0 * i % 30, 2.0, 5.0 * i % 30 + 20.0, 30.0]
    name = f"paired_sampler_test_{tmp_path.name}"
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["person"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _cfg(name, paired):
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.PAIRED.ENABLED = paired
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.MAX_SIZE_TRAIN = 100
    cfg.SEED = 0
    return cfg


def test_train_loader_batches_are_paired(registered):
    loader = build_person_search_train_loader(_cfg(registered, True))
    for batch in itertools.islice(loader, 10):
        assert len(batch) == 4
        for a, b in _groups(batch, 2):
            ids_a = {p for p in a["instances"].gt_pids.tolist() if p >= 0}
            ids_b = {p for p in b["instances"].gt_pids.tolist() if p >= 0}
            assert ids_a & ids_b and a["image_id"] != b["image_id"]


def test_train_loader_unpaired_falls_back_to_detectron2(registered):
    loader = build_person_search_train_loader(_cfg(registered, False))
    batch = next(iter(loader))
    assert len(batch) == 4 and all(d["instances"].has("gt_pids") for d in batch)


def test_train_loader_with_two_workers_keeps_pairs(registered):
    cfg = _cfg(registered, True)
    cfg.DATALOADER.NUM_WORKERS = 2
    cfg.SOLVER.IMS_PER_BATCH = 2
    np.random.seed(11)  # the loader's sampler takes its seed from comm.shared_random_seed()
    seed = np.random.randint(2**31)
    np.random.seed(11)
    batches = [[d["image_id"] for d in b] for b in itertools.islice(build_person_search_train_loader(cfg), 8)]
    index = {f"s{i}.jpg": i for i in range(len(IMAGE_IDS))}
    # The loader's stream equals the sampler's, batch for batch, across the two workers.
    expected = _groups(_take(PairedIdentitySampler(_dicts(), 2, 2, seed=seed), 16), 2)
    assert [[index[n] for n in b] for b in batches] == expected


def test_a_resumed_stream_continues_the_uninterrupted_one_seeds_included():
    """start_batch = k skips this rank's first k batches: indices and per-sample seeds then equal the
    uninterrupted stream's (what exact resume of training needs)."""
    full = list(itertools.islice(iter(PairedIdentitySampler(_dicts(), 4, 2, seed=5)), 40))
    resumed = PairedIdentitySampler(_dicts(), 4, 2, seed=5)
    resumed.start_batch = 3
    assert list(itertools.islice(iter(resumed), 28)) == full[12:]
    assert len({seed for _, seed in full}) == len(full)  # a seed per sample position
