"""PRW: parsers of its files and the Detectron2 dataset dicts of its three splits.

Layout under ``root`` (docs/PROTOCOLS.md "Dataset layouts", datasets/README.md)::

    frames/<frame>.jpg
    annotations/<frame>.jpg.mat    rows [id, x, y, w, h] under the first present key of box_new, anno_file,
                                   anno_previous; id -2 = unlabelled; raw ids are not contiguous
    frame_train.mat, frame_test.mat   img_index_train / img_index_test: frame names without ".jpg"
    ID_train.mat, ID_test.mat         the identities of each split (not needed: ids come from the annotations)
    query_info.txt                    "id x y w h frame" per line (frame without ".jpg"), CRLF line ends

The parsers (``read_*``) return the field's boxes (negative x, y clipped to 0, nothing else), are cached
per file (path, modification time, size) and return read-only arrays: do not modify them.
"""
import functools
import logging
import os
import re

import numpy as np

from .records import build_dataset_dicts, contiguous_ids, register_splits, set_num_identities
from .matfile import load_mat

logger = logging.getLogger(__name__)

__all__ = [
    "ANNOTATION_KEYS",
    "read_frame_names",
    "read_annotation",
    "read_split_annotations",
    "read_queries",
    "camera_id",
    "load_prw",
    "register_prw",
]

SPLITS = ("train", "gallery", "query")
ANNOTATION_KEYS = ("box_new", "anno_file", "anno_previous")  # the real files use all three, in this priority
UNLABELED = -2


def _file_key(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (expected {what})")
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


def _readonly(array):
    array.setflags(write=False)
    return array


def camera_id(name):
    """Camera of a PRW frame: the digit after ``c`` in its name (``c3s2_012437.jpg`` -> 3)."""
    match = re.match(r"c(\d)", os.path.basename(name))
    if match is None:
        raise ValueError(f"PRW frame name {name!r} does not start with c<camera digit>")
    return int(match.group(1))


@functools.lru_cache(maxsize=4)
def _read_frame_names(key, var):
    mat = load_mat(key[0], f"the variable '{var}'")
    if var not in mat:
        raise ValueError(f"{key[0]}: no variable '{var}' (found {sorted(k for k in mat if not k.startswith('__'))})")
    cells = mat[var].reshape(-1)
    if not cells.size or not all(np.asarray(c).dtype.kind == "U" and np.asarray(c).size == 1 for c in cells):
        raise ValueError(f"{key[0]}: '{var}' is a {cells.dtype} array of {cells.size} values, expected the frame "
                         "names (a non-empty cell array of strings such as 'c1s1_000151')")
    return tuple(str(np.asarray(c).reshape(-1)[0]) + ".jpg" for c in cells)


def read_frame_names(root, split):
    """Frame names of a split: ``split`` "train" (frame_train.mat) or "test" (frame_test.mat).

    Returns:
        list[str]: names with ".jpg", in file order.
    """
    if split not in ("train", "test"):
        raise ValueError(f"PRW frame split {split!r} is not 'train' or 'test'")
    path = os.path.join(root, f"frame_{split}.mat")
    return list(_read_frame_names(_file_key(path, f"the PRW {split} frame list"), f"img_index_{split}"))


@functools.lru_cache(maxsize=None)
def _read_rows(key):
    """Raw [id, x, y, w, h] rows (np.ndarray[n, 5] float64) of an annotation file."""
    path = key[0]
    mat = load_mat(path, f"one of the variables {ANNOTATION_KEYS}")
    var = next((k for k in ANNOTATION_KEYS if k in mat), None)
    if var is None:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path}: none of the keys {ANNOTATION_KEYS} (found {found})")
    rows = np.asarray(mat[var], dtype=np.float64)
    if rows.size == 0:
        return _readonly(np.zeros((0, 5)))
    if rows.ndim != 2 or rows.shape[1] != 5:
        raise ValueError(f"{path}: '{var}' has shape {rows.shape}, expected [n, 5] rows of id, x, y, w, h")
    if not np.all(np.isfinite(rows)):
        raise ValueError(f"{path}: '{var}' has non-finite values")
    return _readonly(rows)


def read_annotation(path):
    """Boxes and raw ids of one ``annotations/<frame>.jpg.mat`` file (key fallbacks as the field's).

    Negative x, y are clipped to 0 before w, h are added, as the field's loaders do.

    Returns:
        tuple[np.ndarray[n, 4] float64, np.ndarray[n] int64]: XYXY absolute pixels, raw ids (-2: unlabelled).
    """
    rows = _read_rows(_file_key(path, "a PRW frame annotation"))
    boxes = rows[:, 1:].copy()
    boxes[:, :2] = np.maximum(boxes[:, :2], 0)
    boxes[:, 2:] += boxes[:, :2]
    return _readonly(boxes), _readonly(rows[:, 0].astype(np.int64))


def read_split_annotations(root, split):
    """``read_annotation`` of every frame of a split ("train" or "test"): dict frame name -> (boxes, ids)."""
    return {n: read_annotation(os.path.join(root, "annotations", n + ".mat")) for n in read_frame_names(root, split)}


def _parse_query_line(line, path, lineno):
    parts = line.split()
    try:
        pid, x, y, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
        frame = parts[5]
    except (IndexError, ValueError):
        raise ValueError(f"{path}: line {lineno}: {line!r} is not 'id x y w h frame'") from None
    if len(parts) != 6:
        raise ValueError(f"{path}: line {lineno}: {line!r} is not 'id x y w h frame'")
    box = np.array([x, y, x + w, y + h])
    box[:2] = np.maximum(box[:2], 0)  # a few real query boxes start at negative coordinates
    return {"query_image": frame + ".jpg", "query_box": _readonly(box), "pid": pid}


@functools.lru_cache(maxsize=4)
def _read_queries(key):
    with open(key[0], "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{key[0]}: not a UTF-8 text file (byte {e.start}); expected lines 'id x y w h frame'") \
            from None
    lines = [(i + 1, line.strip()) for i, line in enumerate(text.splitlines())]  # CRLF or LF
    return tuple(_parse_query_line(line, key[0], i) for i, line in lines if line)


def read_queries(root):
    """The queries of ``query_info.txt``, in file order.

    Returns:
        list[dict]: ``query_image`` (frame name with ".jpg"), ``query_box`` (np.ndarray[4] float64 XYXY,
        x1, y1 clipped to 0), ``pid`` (int, raw PRW id).
    """
    path = os.path.join(root, "query_info.txt")
    return list(_read_queries(_file_key(path, "the PRW queries (query_info.txt)")))


def _frame_records(root, names, id_map=None):
    records = []
    for name in names:
        path = os.path.join(root, "annotations", name + ".mat")
        rows = _read_rows(_file_key(path, "a PRW frame annotation"))
        boxes, ids = read_annotation(path)
        pids = np.where(ids < 0, -1, ids)
        if id_map is not None:
            pids = np.asarray([id_map[p] if p >= 0 else -1 for p in pids], dtype=np.int64)
        records.append({"image_id": name, "boxes": boxes, "person_ids": pids,
                        "clipped": int(np.any(rows[:, 1:3] < 0, axis=1).sum()),
                        "extra": {"camera_id": camera_id(name)}})
    return records


def load_prw(root, split, dataset_name=None):
    """Detectron2 dataset dicts of a PRW split (ARCHITECTURE.md "Dataset dicts"), with ``camera_id``.

    Args:
        root (str): dataset root.
        split (str): "train" (frame_train frames; labelled raw ids remapped to 0..T-1 in sorted order,
            unlabelled -1), "gallery" (frame_test frames, raw ids, unlabelled -1) or "query" (one dict per
            line of query_info.txt, in order, with ``query_index``).
        dataset_name (str or None): registered name; a train split records ``num_identities`` in it.
    Returns:
        list[dict]
    """
    if split not in SPLITS:
        raise ValueError(f"PRW split {split!r} is not one of {SPLITS}")
    name = dataset_name or f"prw:{root}:{split}"
    image_dir = os.path.join(root, "frames")
    if split == "query":
        records = [{"image_id": q["query_image"], "boxes": q["query_box"].reshape(1, 4), "person_ids": [q["pid"]],
                    "extra": {"camera_id": camera_id(q["query_image"]), "query_index": i}}
                   for i, q in enumerate(read_queries(root))]
        return build_dataset_dicts(name, image_dir, records, query=True)
    names = read_frame_names(root, "train" if split == "train" else "test")
    id_map = None
    if split == "train":
        annotations = read_split_annotations(root, "train")
        id_map, num_ids = contiguous_ids(int(p) for _, ids in annotations.values() for p in ids)
        if dataset_name:
            set_num_identities(dataset_name, num_ids)
    return build_dataset_dicts(name, image_dir, _frame_records(root, names, id_map))


def register_prw(prefix, root):
    """Register ``f"{prefix}_train"``, ``f"{prefix}_gallery"``, ``f"{prefix}_query"`` (loaded lazily).

    Metadata: ``thing_classes=["person"]``, ``evaluator_type="person_search"``, ``dataset_format="prw"``,
    ``root``, ``split``; gallery: ``query_set``; train: ``num_identities`` once its dicts are loaded.
    """
    register_splits(prefix, functools.partial(load_prw, root), thing_classes=["person"], dataset_format="prw",
                    root=root)
