"""Writers of the exact on-disk layouts of CUHK-SYSU and PRW, for synthetic data and test fixtures.

The files are written in the MATLAB struct/cell layouts that ``scipy.io.loadmat`` returns for the real
datasets (docs/PROTOCOLS.md "Dataset layouts"), so the loaders in :mod:`dcinet_d2.data.cuhk_sysu` and
:mod:`dcinet_d2.data.prw` read them exactly as they read the real files.

A *scene* is a dict:

- ``name`` (str): image file name, e.g. ``"s12.jpg"`` (CUHK-SYSU) or ``"c3s2_012437.jpg"`` (PRW);
- ``image`` (np.ndarray[H, W, 3] uint8): RGB pixels, written as JPEG;
- ``boxes`` (np.ndarray[n, 4] float): XYWH absolute pixels;
- ``pids`` (list[int]): one identity per box; CUHK-SYSU: a global identity >= 0 or -1 (unlabelled);
  PRW: the raw PRW id (positive, need not be contiguous) or -2 (unlabelled; any negative is written -2);
- ``camera`` (int, PRW only): informative; the camera id of a PRW frame is the digit after ``c`` in its name.
"""
import logging
import os

import numpy as np
import scipy.io as sio
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = ["write_cuhk_sysu", "write_prw", "matlab_struct", "matlab_cell"]

CUHK_TEST_DIR = os.path.join("annotation", "test", "train_test")
PRW_UNLABELED = -2


# ----------------------------------------------------------------------------- MATLAB containers
def matlab_struct(records, fields, shape=None):
    """A MATLAB struct array as savemat expects it (and loadmat returns it).

    Args:
        records (list[tuple]): one tuple of field values per struct element.
        fields (list[str]): field names, in the file's order.
        shape (tuple[int, int] or None): array shape; default ``(1, len(records))`` (a row struct array).
    Returns:
        np.ndarray: structured array with object fields.
    """
    shape = (1, len(records)) if shape is None else shape
    out = np.zeros(shape, dtype=[(f, object) for f in fields])
    flat = out.reshape(-1)
    for i, rec in enumerate(records):
        if len(rec) != len(fields):
            raise ValueError(f"struct record {i} has {len(rec)} values, expected {len(fields)} ({fields})")
        flat[i] = tuple(rec)
    return out


def matlab_cell(items, shape=None):
    """A MATLAB cell array (np.ndarray of objects), by default a column ``(len(items), 1)`` like pool.mat."""
    shape = (len(items), 1) if shape is None else shape
    out = np.empty(shape, dtype=object)
    flat = out.reshape(-1)
    for i, item in enumerate(items):
        flat[i] = item
    return out


def _scalar(value):
    """A MATLAB double scalar: loadmat returns it as ``array([[value]])``."""
    return np.array([[value]], dtype=np.float64)


def _save_mat(path, mdict):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sio.savemat(path, mdict, do_compression=True)


def _save_jpeg(path, image):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {path}: expected np.ndarray[H, W, 3] uint8, got {image.dtype} {image.shape}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, format="JPEG", quality=95)


def _check_scene(scene):
    boxes = np.asarray(scene["boxes"], dtype=np.float64).reshape(-1, 4)
    pids = [int(p) for p in scene["pids"]]
    if len(pids) != len(boxes):
        raise ValueError(f"scene {scene['name']}: {len(boxes)} boxes but {len(pids)} pids")
    return boxes, pids


def _box_of(scene_by_name, name, pid):
    """The XYWH box of identity ``pid`` in image ``name`` (its first box if it appears twice)."""
    if name not in scene_by_name:
        raise ValueError(f"query image {name} is not among the scenes")
    boxes, pids = scene_by_name[name]
    if pid not in pids:
        raise ValueError(f"query identity {pid} does not appear in image {name}")
    return boxes[pids.index(pid)]


# ----------------------------------------------------------------------------- CUHK-SYSU
def _uint16_box(box, where):
    """idlocate of the protocol files is uint16: the box must be integral and within [0, 65535]."""
    if np.any(box < 0) or np.any(box > np.iinfo(np.uint16).max):
        raise ValueError(f"{where}: box {box.tolist()} cannot be stored as uint16 idlocate")
    return box.astype(np.uint16).reshape(1, 4)


def _cuhk_images_mat(scenes):
    records = []
    for s in scenes:
        boxes = s["boxes"]
        box = matlab_struct([(b.reshape(1, 4).copy(), _scalar(0)) for b in boxes], ["idlocate", "ishard"])
        records.append((s["name"], _scalar(len(boxes)), box))
    return {"Img": matlab_struct(records, ["imname", "nAppear", "box"])}


def _cuhk_train_mat(scenes, test_names):
    appearances = {}
    for s in scenes:
        if s["name"] in test_names:
            continue
        for box, pid in zip(s["boxes"], s["pids"]):
            if pid >= 0:
                appearances.setdefault(pid, []).append((s["name"], box.reshape(1, 4).copy(), _scalar(0)))
    cells = []
    for pid in sorted(appearances):
        scene = matlab_struct(appearances[pid], ["imname", "idlocate", "ishard"])
        cells.append(matlab_struct([(f"p{pid}", _scalar(len(appearances[pid])), scene)],
                                   ["idname", "nAppear", "scene"], shape=(1, 1)))
    return {"Train": matlab_cell(cells)}


def _cuhk_galleries(scenes, test_names, queries, seed):
    """Per query: (query record, positive gallery entries, shuffled negative image names)."""
    rng = np.random.default_rng(seed)
    by_name = {s["name"]: (s["boxes"], s["pids"]) for s in scenes}
    test_order = [s["name"] for s in scenes if s["name"] in test_names]
    out = []
    for pid, qname in queries:
        if qname not in test_names:
            raise ValueError(f"query image {qname} (identity {pid}) is not a test image")
        qbox = _uint16_box(_box_of(by_name, qname, pid), f"query {pid} in {qname}")
        query = (qname, qbox, _scalar(0), f"p{pid}")
        positives, negatives = [], []
        for name in test_order:
            if name == qname:
                continue
            boxes, pids = by_name[name]
            if pid in pids:
                box = _uint16_box(boxes[pids.index(pid)], f"gallery {name} of identity {pid}")
                positives.append((name, box, _scalar(0)))
            else:
                negatives.append(name)
        negatives = [negatives[i] for i in rng.permutation(len(negatives))]
        out.append((query, positives, negatives))
    return out


def _cuhk_test_mat(galleries, size):
    records = []
    for query, positives, negatives in galleries:
        empty = np.zeros((1, 0), dtype=np.uint16)  # absent person: a 1x0 idlocate, as in the real files
        entries = positives + [(n, empty, _scalar(0)) for n in negatives[: size - len(positives)]]
        q = matlab_struct([query], ["imname", "idlocate", "ishard", "idname"], shape=(1, 1))
        records.append((q, matlab_struct(entries, ["imname", "idlocate", "ishard"])))
    return {f"TestG{size}": matlab_struct(records, ["Query", "Gallery"])}


def write_cuhk_sysu(root, scenes, *, test_names, queries, gallery_sizes=(50, 100), seed=0):
    """Write a dataset in the exact CUHK-SYSU layout under ``root``.

    Writes ``Image/SSM/<name>`` (JPEG), ``annotation/Images.mat`` (``Img``), ``annotation/pool.mat``
    (``pool``), ``annotation/test/train_test/Train.mat`` (``Train``) and ``TestG{N}.mat`` (``TestG{N}``).
    Boxes are rounded to integer pixels (the real files hold integer boxes; the protocol files store them
    as uint16). Identities are named ``f"p{pid}"`` (``idname``).

    Args:
        root (str): output folder (created).
        scenes (list[dict]): see the module docstring; pids >= 0 labelled, -1 unlabelled.
        test_names (set[str]): image names of the test pool; every other image is a training image.
        queries (list[tuple[int, str]]): ``(pid, image_name)``: the query is the box of ``pid`` there.
        gallery_sizes (tuple[int]): protocol gallery sizes N. Each query's gallery: the other test images
            containing the person first (idlocate = its box), then negatives (empty idlocate) drawn with
            ``seed`` from the test images without the person, up to N entries. Galleries are nested
            (the first N negatives of one random order). A size that some query cannot fill is skipped
            with one warning.
        seed (int): seed of the negative draw.
    """
    checked = []
    for s in scenes:
        boxes, pids = _check_scene(s)
        checked.append({"name": s["name"], "image": s["image"], "boxes": np.round(boxes), "pids": pids})
    names = [s["name"] for s in checked]
    if len(set(names)) != len(names):
        raise ValueError("write_cuhk_sysu: duplicate image names among the scenes")
    test_names = set(test_names)
    unknown = test_names - set(names)
    if unknown:
        raise ValueError(f"write_cuhk_sysu: test images not among the scenes: {sorted(unknown)[:5]}")

    for s in checked:
        _save_jpeg(os.path.join(root, "Image", "SSM", s["name"]), s["image"])
    ann = os.path.join(root, "annotation")
    _save_mat(os.path.join(ann, "Images.mat"), _cuhk_images_mat(checked))
    _save_mat(os.path.join(ann, "pool.mat"), {"pool": matlab_cell([n for n in names if n in test_names])})
    _save_mat(os.path.join(root, CUHK_TEST_DIR, "Train.mat"), _cuhk_train_mat(checked, test_names))

    galleries = _cuhk_galleries(checked, test_names, list(queries), seed)
    for size in gallery_sizes:
        short = [i for i, (_, pos, neg) in enumerate(galleries) if len(pos) + len(neg) < size]
        if short:
            logger.warning("CUHK-SYSU writer: gallery size %d skipped: %d of %d queries have fewer "
                           "than %d other test images", size, len(short), len(galleries), size)
            continue
        _save_mat(os.path.join(root, CUHK_TEST_DIR, f"TestG{size}.mat"), _cuhk_test_mat(galleries, size))


# ----------------------------------------------------------------------------- PRW
def _format_number(value):
    """Shortest exact decimal text of a coordinate (``12`` for 12.0, ``12.5``), as query_info.txt has."""
    return np.format_float_positional(float(value), trim="-")


def _stem(name):
    return name[:-4] if name.lower().endswith(".jpg") else name


def _prw_id_list(scenes, names):
    ids = sorted({p for s in scenes if s["name"] in names for p in s["pids"] if p >= 0})
    return np.asarray(ids, dtype=np.float64).reshape(1, -1)


def write_prw(root, scenes, *, train_names, queries, annotation_keys=None):
    """Write a dataset in the exact PRW layout under ``root``.

    Writes ``frames/<name>`` (JPEG), ``annotations/<name>.mat`` (rows ``[id, x, y, w, h]`` as doubles,
    id -2 for unlabelled), ``frame_train.mat`` (``img_index_train``) and ``frame_test.mat``
    (``img_index_test``): column cell arrays of names without ``.jpg``; ``ID_train.mat`` (``ID_train``) and
    ``ID_test.mat`` (``ID_test``): 1 x n rows of the sorted labelled raw ids of each split; and
    ``query_info.txt``: ``id x y w h frame`` lines (frame without ``.jpg``), CRLF line ends.

    Args:
        root (str): output folder (created).
        scenes (list[dict]): see the module docstring; raw PRW ids (> 0), -2 (or any negative) unlabelled.
        train_names (set[str]): training frames; every other frame is a test frame.
        queries (list[tuple[int, str]]): ``(pid, frame_name)``; the query box is the first box of ``pid``
            in that (test) frame.
        annotation_keys (dict[str, str] or None): per frame name, the key its annotation is stored under
            (``"box_new"`` by default; the real dataset also uses ``"anno_file"`` and ``"anno_previous"``).
    """
    annotation_keys = annotation_keys or {}
    checked = []
    for s in scenes:
        boxes, pids = _check_scene(s)
        pids = [p if p >= 0 else PRW_UNLABELED for p in pids]
        checked.append({"name": s["name"], "image": s["image"], "boxes": boxes, "pids": pids})
    names = [s["name"] for s in checked]
    train_names = set(train_names)
    test_names = [n for n in names if n not in train_names]

    for s in checked:
        _save_jpeg(os.path.join(root, "frames", s["name"]), s["image"])
        rows = np.concatenate([np.asarray(s["pids"], np.float64).reshape(-1, 1), s["boxes"]], axis=1)
        key = annotation_keys.get(s["name"], "box_new")
        _save_mat(os.path.join(root, "annotations", s["name"] + ".mat"), {key: rows})
    _save_mat(os.path.join(root, "frame_train.mat"),
              {"img_index_train": matlab_cell([_stem(n) for n in names if n in train_names])})
    _save_mat(os.path.join(root, "frame_test.mat"), {"img_index_test": matlab_cell([_stem(n) for n in test_names])})
    _save_mat(os.path.join(root, "ID_train.mat"), {"ID_train": _prw_id_list(checked, train_names)})
    _save_mat(os.path.join(root, "ID_test.mat"), {"ID_test": _prw_id_list(checked, set(test_names))})

    by_name = {s["name"]: (s["boxes"], s["pids"]) for s in checked}
    lines = []
    for pid, name in queries:
        if name in train_names:
            raise ValueError(f"query frame {name} (identity {pid}) is a training frame")
        box = _box_of(by_name, name, int(pid))
        lines.append(" ".join([str(int(pid))] + [_format_number(v) for v in box] + [_stem(name)]))
    with open(os.path.join(root, "query_info.txt"), "w", newline="") as f:
        f.write("".join(line + "\r\n" for line in lines))
