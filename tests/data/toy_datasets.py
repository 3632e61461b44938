"""Small CUHK-SYSU / PRW / generic fixture trees with hand-countable contents, and post-editing helpers
that reproduce the real files' traps. Imported by name by the tests of tests/data (tests/data/conftest.py
puts this folder on sys.path)."""
import json
import os

import numpy as np
import scipy.io as sio
from PIL import Image

from dcinet_d2.data.writers import matlab_struct, write_cuhk_sysu, write_prw

HEIGHT, WIDTH = 60, 90


def image(height=HEIGHT, width=WIDTH, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def scene(name, boxes, pids, width=WIDTH, **extra):
    return dict(name=name, image=image(HEIGHT, width, seed=len(name) + len(boxes)),
                boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4), pids=list(pids), **extra)


# ----------------------------------------------------------------------------- CUHK-SYSU
# Train: s1..s4 (identities 100, 101, 102 -> 0, 1, 2); test: s5..s10 (identities 200, 201, queried).
CUHK_SCENES = [
    ("s1.jpg", [[10, 5, 20, 40], [40, 5, 20, 40], [70, 5, 15, 30]], [100, 101, -1]),
    ("s2.jpg", [[10, 5, 20, 40], [50, 10, 20, 40], [60, 0, 0, 30]], [100, -1, -1]),      # zero width
    ("s3.jpg", [[5, 5, 20, 40], [30, 5, 20, 40], [80, 20, 30, 30]], [101, 102, -1]),     # x2 = 110 > 90
    ("s4.jpg", [[5, 5, 20, 40], [-3, 10, 20, 30]], [102, -1]),                           # negative x
    ("s5.jpg", [[10, 5, 20, 40], [40, 5, 20, 40]], [200, -1]),
    ("s6.jpg", [[12, 6, 20, 40], [45, 5, 20, 40]], [200, 201]),
    ("s7.jpg", [[10, 10, 20, 40]], [201]),
    ("s8.jpg", [[30, 5, 20, 40]], [-1]),
    ("s9.jpg", [[5, 5, 20, 40]], [200]),                                                  # 100 px wide
    ("s10.jpg", [[50, 5, 20, 40]], [-1]),
]
CUHK_TEST = {f"s{i}.jpg" for i in range(5, 11)}
CUHK_QUERIES = [(200, "s5.jpg"), (201, "s6.jpg")]
CUHK_SIZES = (3, 5, 6)  # 6 cannot be filled (5 other test images): skipped


def cuhk_scenes():
    return [scene(n, b, p, width=100 if n == "s9.jpg" else WIDTH) for n, b, p in CUHK_SCENES]


def write_toy_cuhk(root, seed=0):
    write_cuhk_sysu(str(root), cuhk_scenes(), test_names=CUHK_TEST, queries=CUHK_QUERIES,
                    gallery_sizes=CUHK_SIZES, seed=seed)
    return str(root)


def protocol_path(root, size):
    return os.path.join(str(root), "annotation", "test", "train_test", f"TestG{size}.mat")


def edit_protocol(root, size, edit):
    """Load TestG{size}.mat, apply ``edit(struct array (1, Q))`` in place, save it back."""
    path = protocol_path(root, size)
    data = sio.loadmat(path)[f"TestG{size}"]
    edit(data)
    sio.savemat(path, {f"TestG{size}": data})


def empty_idlocate_as(root, size, empty):
    """Rewrite every empty gallery idlocate of TestG{size} as ``empty`` (e.g. a 0x0 double: MATLAB [])."""
    def edit(data):
        for gallery in data["Gallery"].reshape(-1):
            for entry in gallery.reshape(-1):
                if entry["idlocate"].size == 0:
                    entry["idlocate"] = empty
    edit_protocol(root, size, edit)


def swap_queries(root, size):
    """Swap the first two queries of TestG{size} (a protocol file out of order with the others)."""
    def edit(data):
        flat = data.reshape(-1)
        flat[0], flat[1] = flat[1].copy(), flat[0].copy()
    edit_protocol(root, size, edit)


def write_protocol(root, size, queries):
    """Write TestG{size}.mat by hand: ``queries`` = list of ((imname, idlocate, idname), [(imname, idlocate)])."""
    records = []
    for (qname, qloc, idname), gallery in queries:
        q = matlab_struct([(qname, np.asarray(qloc, np.uint16).reshape(1, -1), np.array([[0.0]]), idname)],
                          ["imname", "idlocate", "ishard", "idname"], shape=(1, 1))
        g = matlab_struct([(n, np.asarray(loc, np.uint16).reshape(1, -1), np.array([[0.0]])) for n, loc in gallery],
                          ["imname", "idlocate", "ishard"])
        records.append((q, g))
    path = protocol_path(root, size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sio.savemat(path, {f"TestG{size}": matlab_struct(records, ["Query", "Gallery"])})


# ----------------------------------------------------------------------------- PRW
# Train frames: raw ids 5, 17, 42 (-> 0, 1, 2); test frames: raw ids 301, 733.
PRW_SCENES = [
    ("c1s1_000100.jpg", [[10, 5, 20, 40], [40, 5, 20, 40], [-4, 3, 20, 40]], [17, -2, 5]),   # negative x
    ("c2s1_000200.jpg", [[10, 5, 20, 40], [30, -2, 20, 40]], [42, 17]),                      # negative y
    ("c3s1_000300.jpg", [[10, 5, 20, 40], [50, 5, 0, 40]], [5, -2]),                         # zero width
    ("c1s2_000400.jpg", [[10, 5, 20, 40], [40, 5, 20, 40]], [301, -2]),
    ("c2s2_000500.jpg", [[12, 6, 20, 40], [45, 5, 20, 40]], [301, 733]),
    ("c3s2_000600.jpg", [[10, 10, 20, 40]], [733]),
    ("c1s3_000700.jpg", [[30, 5, 20, 40], [-5, 2, 20, 30]], [-2, 301]),                     # negative x
]
PRW_TRAIN = {"c1s1_000100.jpg", "c2s1_000200.jpg", "c3s1_000300.jpg"}
PRW_QUERIES = [(301, "c1s2_000400.jpg"), (733, "c3s2_000600.jpg"), (301, "c1s3_000700.jpg")]
PRW_KEYS = {"c2s1_000200.jpg": "anno_file", "c2s2_000500.jpg": "anno_previous"}


def prw_scenes():
    return [scene(n, b, p, camera=int(n[1])) for n, b, p in PRW_SCENES]


def write_toy_prw(root):
    write_prw(str(root), prw_scenes(), train_names=PRW_TRAIN, queries=PRW_QUERIES, annotation_keys=PRW_KEYS)
    return str(root)


# ----------------------------------------------------------------------------- generic
def write_toy_generic(root):
    """A generic gallery of tattoos and logos: 2 train, 3 gallery, 1 query-only image (odd ones 70 x 80 px,
    sizes not in the JSON); returns the JSON path."""
    os.makedirs(os.path.join(str(root), "imgs"), exist_ok=True)
    images = []
    for i, split in enumerate(["train", "train", "gallery", "gallery", "gallery", "query"]):
        name = f"imgs/{i}.png"
        entry = {"id": 10 + i, "file_name": name, "split": split}
        if i % 2 == 0:
            Image.fromarray(image(seed=i)).save(os.path.join(str(root), name))
            entry.update(height=HEIGHT, width=WIDTH)
        else:  # 70 x 80 pixels, sizes not in the JSON: read from the headers
            Image.fromarray(image(70, 80, seed=i)).save(os.path.join(str(root), name))
        images.append(entry)
    annotations = [
        {"id": 1, "image_id": 10, "bbox": [1, 1, 10, 10], "category_id": 7, "identity": 40},
        {"id": 2, "image_id": 10, "bbox": [20, 1, 10, 10], "category_id": 9, "identity": -1},
        {"id": 3, "image_id": 11, "bbox": [1, 1, 10, 10], "category_id": 7, "identity": 12},
        {"id": 4, "image_id": 11, "bbox": [70, 50, 20, 20], "category_id": 7, "identity": 40},  # clipped
        {"id": 5, "image_id": 12, "bbox": [1, 1, 10, 10], "category_id": 7, "identity": 3},
        {"id": 6, "image_id": 12, "bbox": [30, 1, 0, 10], "category_id": 7, "identity": -1},    # zero width
        {"id": 7, "image_id": 13, "bbox": [5, 5, 10, 10], "category_id": 9, "identity": 3},
        {"id": 8, "image_id": 14, "bbox": [5, 5, 10, 10], "category_id": 9},                    # no identity
        {"id": 9, "image_id": 15, "bbox": [2, 2, 20, 20], "category_id": 7, "identity": 3},
    ]
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 7, "name": "tattoo"}, {"id": 9, "name": "logo"}],
            "queries": [9, {"annotation_id": 7}]}
    path = os.path.join(str(root), "gallery.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path
