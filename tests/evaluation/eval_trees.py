"""Random CUHK-SYSU / PRW trees (written with dcinet_d2.data.writers) and random results files for them,
shared by the evaluation tests and scripts/benchmark_eval.py (imported by path: no packages in tests)."""
import os

import numpy as np
import scipy.io as sio
import torch

from dcinet_d2.data.writers import matlab_struct, write_cuhk_sysu, write_prw

_PIXELS = np.zeros((8, 8, 3), dtype=np.uint8)  # the evaluation never reads pixels: keep the JPEGs tiny


def _random_boxes(rng, n, small_fraction=0.2):
    """n XYWH boxes in a 600 x 400 frame; some small (the IoU threshold drops below 0.5 for them)."""
    small = rng.random(n) < small_fraction
    w = np.where(small, rng.integers(6, 25, n), rng.integers(30, 120, n)).astype(np.float64)
    h = np.where(small, rng.integers(10, 40, n), rng.integers(60, 250, n)).astype(np.float64)
    x = rng.integers(0, 480, n).astype(np.float64)
    y = rng.integers(0, 150, n).astype(np.float64)
    return np.stack([x, y, w, h], axis=1)


def _scenes(rng, names, n_ids, unlabelled_id, max_people=5):
    scenes = []
    for name in names:
        n = int(rng.integers(1, max_people + 1))
        pids = rng.choice(n_ids, size=n, replace=False).tolist()
        pids = [p if rng.random() > 0.3 else unlabelled_id for p in pids]
        scenes.append({"name": name, "image": _PIXELS, "boxes": _random_boxes(rng, n), "pids": pids})
    return scenes


def _pick_queries(rng, scenes, names, n_queries, min_images=2):
    """(pid, image) pairs: labelled people seen in >= min_images of ``names``."""
    where = {}
    for s in scenes:
        if s["name"] in names:
            for p in set(s["pids"]):
                if p >= 0:
                    where.setdefault(p, []).append(s["name"])
    pids = sorted(p for p, imgs in where.items() if len(imgs) >= min_images)
    queries = []
    while len(queries) < n_queries and pids:
        p = pids[int(rng.integers(len(pids)))]
        queries.append((int(p), where[p][int(rng.integers(len(where[p])))]))
    return queries


def cuhk_tree(root, *, n_images=60, n_test=40, n_ids=25, n_queries=20, gallery_sizes=(10, 20), seed=0):
    """Write a random CUHK-SYSU tree; returns {name: (XYXY boxes, pids)} of the test images."""
    rng = np.random.default_rng(seed)
    names = [f"s{i}.jpg" for i in range(n_images)]
    scenes = _scenes(rng, names, n_ids, -1)
    for s in scenes:
        s["boxes"] = np.round(s["boxes"])
    test = set(names[:n_test])
    queries = _pick_queries(rng, scenes, test, n_queries)
    write_cuhk_sysu(str(root), scenes, test_names=test, queries=queries, gallery_sizes=gallery_sizes, seed=seed)
    return {s["name"]: (_xyxy(s["boxes"]), np.asarray(s["pids"])) for s in scenes if s["name"] in test}, queries


def prw_tree(root, *, n_frames=60, n_train=20, n_ids=30, n_queries=20, n_cams=3, seed=0):
    """Write a random PRW tree; returns {name: (XYXY boxes, raw ids)} of the test frames, and the queries."""
    rng = np.random.default_rng(seed)
    names = [f"c{1 + int(rng.integers(n_cams))}s1_{i:06d}.jpg" for i in range(n_frames)]
    scenes = _scenes(rng, names, n_ids, -2)
    for s in scenes:
        s["pids"] = [p + 1 if p >= 0 else -2 for p in s["pids"]]  # raw PRW ids are positive
        s["boxes"][:5, :2] -= rng.integers(0, 2, (min(5, len(s["boxes"])), 2)) * 3  # a few negative x, y
    train = set(names[:n_train])
    test = [n for n in names if n not in train]
    queries = _pick_queries(rng, scenes, set(test), n_queries)
    write_prw(str(root), scenes, train_names=train, queries=queries)
    out = {}
    for s in scenes:
        if s["name"] not in train:
            xywh = s["boxes"].copy()
            xywh[:, :2] = np.maximum(xywh[:, :2], 0)
            out[s["name"]] = (_xyxy(xywh), np.asarray(s["pids"]))
    return out, queries


def _xyxy(xywh):
    out = np.asarray(xywh, dtype=np.float64).copy()
    out[:, 2:] += out[:, :2]
    return out


def random_results(images, queries, *, dim=16, seed=0, missing=0, quantize=None, extra_dets=3, miss_rate=0.15):
    """A results dict for ``images`` ({name: (XYXY gt, ids)}) and ``queries`` ((pid, image) pairs).

    Each person is detected with probability 1 - miss_rate (jittered box, sometimes twice); false positives
    are added; embeddings are the identity's direction plus noise (unit length). ``missing`` images are
    left out of the results. ``quantize``: round embeddings to multiples of 1/quantize (exact ties).
    """
    rng = np.random.default_rng(seed)
    directions = {}

    def direction(pid):
        if pid not in directions:
            v = rng.standard_normal(dim)
            directions[pid] = v / np.linalg.norm(v)
        return directions[pid]

    def embed(pid, noise):
        v = (direction(pid) if pid >= 0 else np.zeros(dim)) + noise * rng.standard_normal(dim) / np.sqrt(dim)
        v = v / np.linalg.norm(v)
        return np.round(v * quantize) / quantize if quantize else v

    gallery = {}
    for name, (gt, pids) in images.items():
        boxes, embs = [], []
        for box, pid in zip(gt, pids):
            for _ in range(int(rng.random() > miss_rate) + int(rng.random() < 0.2)):
                w, h = box[2] - box[0], box[3] - box[1]
                boxes.append(box + rng.normal(0, 0.15, 4) * np.array([w, h, w, h]))
                embs.append(embed(int(pid), 0.8))
        for _ in range(int(rng.integers(0, extra_dets + 1))):
            xywh = _random_boxes(rng, 1)[0]
            boxes.append(_xyxy(xywh[None])[0])
            embs.append(embed(-1, 1.0))
        scores = rng.uniform(0.2, 1.0, len(boxes))
        gallery[name] = {"boxes": torch.tensor(np.reshape(boxes, (-1, 4)), dtype=torch.float32),
                         "scores": torch.tensor(scores, dtype=torch.float32),
                         "embeddings": torch.tensor(np.reshape(embs, (-1, dim)), dtype=torch.float32)}
    for name in list(gallery)[:missing]:
        del gallery[name]
    q = np.stack([embed(pid, 0.6) for pid, _ in queries]) if queries else np.zeros((0, dim))
    return {"gallery": gallery, "queries": torch.tensor(q, dtype=torch.float32)}


def write_test_protocol(root, size, entries):
    """Overwrite TestG{size}.mat with explicit galleries.

    Args:
        entries (list[tuple]): per query ``(query image, query XYWH, idname, [(image, XYWH or None), ...])``.
    """
    records = []
    for qname, qbox, idname, gallery in entries:
        zero = np.array([[0.0]])
        query = matlab_struct([(qname, np.asarray(qbox, np.uint16).reshape(1, 4), zero, idname)],
                              ["imname", "idlocate", "ishard", "idname"], shape=(1, 1))
        rows = [(name, np.zeros((1, 0), np.uint16) if box is None else np.asarray(box, np.uint16).reshape(1, 4),
                 zero) for name, box in gallery]
        records.append((query, matlab_struct(rows, ["imname", "idlocate", "ishard"])))
    path = os.path.join(str(root), "annotation", "test", "train_test", f"TestG{size}.mat")
    sio.savemat(path, {f"TestG{size}": matlab_struct(records, ["Query", "Gallery"])})


def assert_bitwise_equal(a, b):
    """Two dicts of arrays hold the same names, dtypes, shapes and bytes (a cache hit is the build, exactly)."""
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name
