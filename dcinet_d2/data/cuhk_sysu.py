"""CUHK-SYSU: parsers of its MATLAB files and the Detectron2 dataset dicts of its three splits.

Layout under ``root`` (docs/PROTOCOLS.md "Dataset layouts", datasets/README.md)::

    Image/SSM/*.jpg
    annotation/Images.mat                     Img: per image imname, nAppear, box (struct array: idlocate x,y,w,h)
    annotation/pool.mat                       pool: the test image names
    annotation/test/train_test/Train.mat      Train: per training identity idname, nAppear, scene (imname, idlocate)
    annotation/test/train_test/TestG{N}.mat   TestG{N}: per query Query (imname, idlocate uint16, ishard, idname)
                                              and Gallery (N entries of imname, idlocate (empty: absent), ishard)

The parsers (``read_*``) return the field's boxes exactly (no clipping to the image: they do not know its
size), are cached per file (path, modification time, size) and return read-only arrays: do not modify them.
The ``parse_*_mat`` functions parse one file into plain arrays (no cache: the evaluation caches them on disk,
:mod:`dcinet_d2.evaluation.protocol_cache`); the ``read_*`` ones are built on them.
"""
import functools
import glob
import logging
import os
import re

import numpy as np
import scipy.io as sio

from .records import build_dataset_dicts, register_splits, set_num_identities
from .matfile import load_mat

logger = logging.getLogger(__name__)

__all__ = [
    "read_images",
    "read_pool",
    "read_train_identities",
    "read_test_protocol",
    "parse_images_mat",
    "parse_pool_mat",
    "parse_test_protocol_mat",
    "check_same_queries",
    "protocol_path",
    "protocol_gallery_sizes",
    "identity_number",
    "load_cuhk_sysu",
    "register_cuhk_sysu",
]

SPLITS = ("train", "gallery", "query")
IMAGE_DIR = os.path.join("Image", "SSM")
PROTOCOL_DIR = os.path.join("annotation", "test", "train_test")


# ----------------------------------------------------------------------------- file access
def _file_key(path, what):
    """Cache key of a file (absolute path, mtime, size); FileNotFoundError naming what was expected."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (expected {what})")
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


def _load_key(path, key):
    """The variable ``key`` of a .mat file (only it is read); ValueError naming the file and the key if the
    file is not a readable .mat file (not one at all, truncated, empty) or has no such variable."""
    mat = load_mat(path, f"the variable '{key}'", [key])
    if key not in mat:
        found = sorted(name for name, _, _ in sio.whosmat(path))
        raise ValueError(f"{path}: no variable '{key}' (found {found})")
    return mat[key]


def _fields(array, path, names):
    if array.dtype.names is None or any(n not in array.dtype.names for n in names):
        got = (f"fields {list(array.dtype.names)}" if array.dtype.names is not None
               else f"a {array.dtype} array of shape {array.shape}")
        raise ValueError(f"{path}: expected a struct array with fields {names}, got {got}")


def _text(cell):
    """A MATLAB char array as loadmat returns it (``array(['s1.jpg'])``) -> str."""
    flat = np.asarray(cell).reshape(-1)
    return str(flat[0]) if flat.size else ""


def _readonly(array):
    array.setflags(write=False)
    return array


def _xywh_to_xyxy(xywh, path, where):
    """idlocate (any numeric dtype, 4 values) -> float64 XYXY; signed arithmetic (uint16 would wrap)."""
    box = np.asarray(xywh).reshape(-1)
    if box.size != 4:
        raise ValueError(f"{path}: {where}: idlocate has {box.size} values, expected x, y, w, h")
    box = box.astype(np.float64)
    box[2:] += box[:2]
    return box


# ----------------------------------------------------------------------------- Images.mat
def parse_images_mat(path):
    """The arrays of an ``Images.mat`` file (``Img``), boxes with w <= 0 or h <= 0 dropped (counted).

    Returns:
        dict: ``names`` (np.ndarray[I] str, file order), ``counts`` (np.ndarray[I] int64: kept boxes per
        image), ``boxes`` (np.ndarray[B, 4] float64 XYXY absolute pixels, image after image, file order),
        ``num_dropped`` (np.ndarray[] int64).
    """
    img = _load_key(path, "Img").reshape(-1)
    _fields(img, path, ["imname", "box"])
    names = [_text(n) for n in img["imname"]]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate image names")
    counts = np.zeros(len(img), dtype=np.int64)
    locs = []
    for i, box in enumerate(img["box"]):
        if box.size and box.dtype.names is not None:
            _fields(box, path, ["idlocate"])
            flat = box["idlocate"].reshape(-1)
            counts[i] = len(flat)
            locs.extend(flat)
    sizes = np.fromiter(map(np.size, locs), dtype=np.int64, count=len(locs))
    if np.any(sizes != 4):
        j = int(np.flatnonzero(sizes != 4)[0])
        owner = int(np.searchsorted(np.cumsum(counts), j, side="right"))
        raise ValueError(f"{path}: image {names[owner]}: a box idlocate has {sizes[j]} values, expected x, y, w, h")
    xyxy = (np.concatenate([a.reshape(1, 4) for a in locs]).astype(np.float64) if locs
            else np.zeros((0, 4)))
    if not np.all(np.isfinite(xyxy)):
        raise ValueError(f"{path}: non-finite box coordinates")
    valid = (xyxy[:, 2] > 0) & (xyxy[:, 3] > 0)
    xyxy[:, 2:] += xyxy[:, :2]
    owner = np.repeat(np.arange(len(names)), counts)
    return {"names": np.array(names, dtype=str).reshape(-1),
            "counts": np.bincount(owner[valid], minlength=len(names)).astype(np.int64),
            "boxes": xyxy[valid], "num_dropped": np.array(int((~valid).sum()), dtype=np.int64)}


def _split_images(arrays, path):
    """:func:`parse_images_mat` arrays -> {image name: read-only boxes np.ndarray[n, 4]}; logs the dropped
    boxes (one warning)."""
    if arrays["num_dropped"]:
        logger.warning("%s: %d boxes with zero or negative width/height dropped", path, int(arrays["num_dropped"]))
    boxes, counts = arrays["boxes"], arrays["counts"]
    ends = np.cumsum(counts)
    return {name: _readonly(boxes[s:e])
            for name, s, e in zip(arrays["names"].tolist(), (ends - counts).tolist(), ends.tolist())}


@functools.lru_cache(maxsize=4)
def _read_images(key):
    return _split_images(parse_images_mat(key[0]), key[0])


def read_images(root):
    """All images of ``annotation/Images.mat`` with their boxes.

    Returns:
        dict[str, np.ndarray[n, 4] float64]: image name -> boxes XYXY absolute pixels, in file order; boxes
        with w <= 0 or h <= 0 are dropped (one warning with their count).
    """
    path = os.path.join(root, "annotation", "Images.mat")
    return dict(_read_images(_file_key(path, "the CUHK-SYSU image annotations (Img)")))


def parse_pool_mat(path):
    """The test image names of a ``pool.mat`` file (``pool``), in file order: {"names": np.ndarray[P] str}.

    ValueError naming the file unless ``pool`` is a non-empty cell array of strings."""
    cells = _load_key(path, "pool").reshape(-1)
    if not cells.size or not all(np.asarray(c).dtype.kind == "U" for c in cells):
        raise ValueError(f"{path}: 'pool' is a {cells.dtype} array of {cells.size} values, expected the test "
                         "image names (a non-empty cell array of strings)")
    return {"names": np.array([_text(n) for n in cells], dtype=str).reshape(-1)}


@functools.lru_cache(maxsize=4)
def _read_pool(key):
    return tuple(parse_pool_mat(key[0])["names"].tolist())


def read_pool(root):
    """Names of the test images (``annotation/pool.mat``, ``pool``), in file order: list[str]."""
    path = os.path.join(root, "annotation", "pool.mat")
    return list(_read_pool(_file_key(path, "the CUHK-SYSU test pool (pool)")))


# ----------------------------------------------------------------------------- Train.mat
@functools.lru_cache(maxsize=4)
def _read_train(key):
    path = key[0]
    identities = []
    for t, cell in enumerate(_load_key(path, "Train").reshape(-1)):
        person = np.asarray(cell).reshape(-1)
        if person.size != 1:
            raise ValueError(f"{path}: identity {t}: expected one struct (idname, nAppear, scene)")
        _fields(person, path, ["idname", "scene"])
        person = person[0]
        scenes = np.asarray(person["scene"]).reshape(-1)
        _fields(scenes, path, ["imname", "idlocate"])
        appearances = tuple((_text(s["imname"]), _readonly(_xywh_to_xyxy(s["idlocate"], path, f"identity {t}")))
                            for s in scenes)
        identities.append((_text(person["idname"]), appearances))
    return tuple(identities)


def read_train_identities(root):
    """Training identities of ``Train.mat``, in file order (their index is the contiguous id 0..T-1).

    Returns:
        list[tuple[str, tuple[tuple[str, np.ndarray[4]], ...]]]: (idname, ((image name, XYXY box), ...)).
    """
    path = os.path.join(root, PROTOCOL_DIR, "Train.mat")
    return list(_read_train(_file_key(path, "the CUHK-SYSU training identities (Train)")))


# ----------------------------------------------------------------------------- TestG{N}.mat
def _query_arrays(protocol, path):
    """The Query structs of a TestG struct array -> (image names, int32 XYXY boxes [Q, 4], idnames)."""
    names, boxes, pids = [], [], []
    for qi, query in enumerate(protocol["Query"]):
        q = np.asarray(query).reshape(-1)
        if q.size != 1:
            raise ValueError(f"{path}: query {qi}: expected one Query struct, got {q.size}")
        _fields(q, path, ["imname", "idlocate", "idname"])
        q = q[0]
        names.append(_text(q["imname"]))
        boxes.append(_xywh_to_xyxy(q["idlocate"], path, f"query {qi}"))
        pids.append(_text(q["idname"]))
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4).astype(np.int32)
    return np.array(names, dtype=str).reshape(-1), boxes, np.array(pids, dtype=str).reshape(-1)


def _where(offsets, j):
    """Query index and entry index within its gallery of flat gallery entry ``j``."""
    qi = int(np.searchsorted(offsets, j, side="right")) - 1
    return qi, int(j - offsets[qi])


def _sizes(cells):
    """Element count of every array of an object array: np.ndarray[n] int64."""
    return np.fromiter((np.asarray(c).size for c in cells), dtype=np.int64, count=len(cells))


def _concatenate_flat(cells):
    """The arrays of an object array, flattened and concatenated."""
    try:  # fast path: loadmat gives every char array as a 1-D array of strings
        out = np.concatenate(cells.tolist())
        if out.ndim == 1:
            return out
    except ValueError:
        pass
    return np.concatenate([np.asarray(c).reshape(-1) for c in cells])


def _gallery_arrays(protocol, path):
    """The Gallery structs of a TestG struct array, flattened query after query (vectorised: TestG4000
    lists 11.6M entries).

    Returns: offsets [Q+1] int64, image names [E] str, has box [E] bool, int32 XYXY boxes [E, 4] (0: absent).
    """
    galleries = [np.asarray(g).reshape(-1) for g in protocol["Gallery"]]
    listed = [g for g in galleries if g.size]
    for g in listed:
        _fields(g, path, ["imname", "idlocate"])
    offsets = np.concatenate([[0], np.cumsum([g.size for g in galleries], dtype=np.int64)]).astype(np.int64)
    cells = np.concatenate([g["imname"] for g in listed]) if listed else np.zeros(0, dtype=object)
    name_sizes = _sizes(cells)
    if np.any(name_sizes != 1):
        qi, _ = _where(offsets, int(np.flatnonzero(name_sizes != 1)[0]))
        raise ValueError(f"{path}: query {qi}: a gallery entry has no image name")
    names = _concatenate_flat(cells) if len(cells) else np.zeros(0, dtype=str)
    locs = np.concatenate([g["idlocate"] for g in listed]) if listed else np.zeros(0, dtype=object)
    box_sizes = _sizes(locs)
    bad = np.flatnonzero((box_sizes != 0) & (box_sizes != 4))
    if bad.size:
        qi, j = _where(offsets, int(bad[0]))
        raise ValueError(f"{path}: query {qi}, gallery entry {j}: idlocate has {box_sizes[bad[0]]} values, "
                         "expected x, y, w, h")
    has_box = box_sizes == 4
    boxes = np.zeros((len(locs), 4), dtype=np.int32)
    if has_box.any():
        # float64 as the query boxes: uint16 x + w would wrap
        xyxy = np.concatenate([a.reshape(1, 4) for a in locs[has_box]]).astype(np.float64)
        xyxy[:, 2:] += xyxy[:, :2]
        boxes[has_box] = xyxy.astype(np.int32)
    return offsets, names, has_box, boxes


def parse_test_protocol_mat(path, gallery_size):
    """The arrays of a ``TestG{gallery_size}.mat`` file (variable ``TestG{gallery_size}``).

    Returns:
        dict of np.ndarray: ``query_images`` [Q] str, ``query_boxes`` [Q, 4] int32 XYXY (idlocate is uint16,
        added in a signed type), ``query_pids`` [Q] str (idnames), ``gallery_offsets`` [Q+1] int64 (query q's
        entries are ``gallery_offsets[q]:gallery_offsets[q+1]``, in file order), ``image_names`` [K] str
        (the distinct gallery image names, sorted), ``gallery_images`` [E] int64 (index into
        ``image_names``), ``gallery_has_box`` [E] bool (False: the person is absent), ``gallery_boxes``
        [E, 4] int32 XYXY (zeros where absent).
    """
    protocol = _load_key(path, f"TestG{int(gallery_size)}").reshape(-1)
    _fields(protocol, path, ["Query", "Gallery"])
    query_images, query_boxes, query_pids = _query_arrays(protocol, path)
    offsets, names, has_box, boxes = _gallery_arrays(protocol, path)
    image_names, gallery_images = np.unique(names, return_inverse=True)
    return {"query_images": query_images, "query_boxes": query_boxes, "query_pids": query_pids,
            "gallery_offsets": offsets, "image_names": image_names,
            "gallery_images": gallery_images.reshape(-1).astype(np.int64), "gallery_has_box": has_box,
            "gallery_boxes": boxes}


def check_same_queries(arrays, reference, path, reference_path):
    """ValueError unless two :func:`parse_test_protocol_mat` results hold the same queries in the same order
    (image, box, idname): every TestG file must."""
    if not all(np.array_equal(arrays[k], reference[k]) for k in ("query_images", "query_boxes", "query_pids")):
        raise ValueError(f"{path}: its queries differ from those of {os.path.basename(reference_path)} (all TestG "
                         "files must hold the same queries in the same order)")


def _protocol_queries(arrays):
    """:func:`parse_test_protocol_mat` arrays -> the query dicts of :func:`read_test_protocol` (the boxes are
    read-only views of the arrays)."""
    query_boxes, boxes = _readonly(arrays["query_boxes"]), _readonly(arrays["gallery_boxes"])
    table = arrays["image_names"].tolist()
    names = [table[i] for i in arrays["gallery_images"].tolist()]
    entries = [(n, boxes[j] if has else None)
               for j, (n, has) in enumerate(zip(names, arrays["gallery_has_box"].tolist()))]
    offsets = arrays["gallery_offsets"].tolist()
    return tuple({"query_image": image, "query_box": query_boxes[qi], "pid": pid,
                  "gallery": entries[offsets[qi]:offsets[qi + 1]]}
                 for qi, (image, pid) in enumerate(zip(arrays["query_images"].tolist(),
                                                       arrays["query_pids"].tolist())))


def protocol_path(root, gallery_size):
    """Path of ``annotation/test/train_test/TestG{gallery_size}.mat`` under ``root``."""
    return os.path.join(root, PROTOCOL_DIR, f"TestG{int(gallery_size)}.mat")


@functools.lru_cache(maxsize=2)
def _protocol_arrays(key, gallery_size):
    return parse_test_protocol_mat(key[0], gallery_size)


@functools.lru_cache(maxsize=2)
def _read_protocol(key, reference_key, gallery_size, reference_size):
    arrays = _protocol_arrays(key, gallery_size)
    if reference_key is not None:
        check_same_queries(arrays, _protocol_arrays(reference_key, reference_size), key[0], reference_key[0])
    return _protocol_queries(arrays)


def protocol_gallery_sizes(root):
    """Gallery sizes N whose ``TestG{N}.mat`` exists under ``root``, ascending: list[int]."""
    files = glob.glob(os.path.join(glob.escape(os.path.join(root, PROTOCOL_DIR)), "TestG*.mat"))
    return sorted(int(m.group(1)) for m in (re.fullmatch(r"TestG(\d+)\.mat", os.path.basename(f)) for f in files)
                  if m)


def read_test_protocol(root, gallery_size):
    """The queries and galleries of ``annotation/test/train_test/TestG{gallery_size}.mat``.

    The field's sizes are 50, 100, 500, 1000, 2000, 4000 (-1, the full set, is built by the evaluation);
    any size whose file exists is read. Every TestG file must hold the same queries in the same order as
    the smallest one (ValueError otherwise).

    Returns:
        list[dict]: per query ``query_image`` (str), ``query_box`` (np.ndarray[4] int32 XYXY: idlocate is
        uint16, converted in int32), ``pid`` (str: the idname), ``gallery`` (list of (image name,
        np.ndarray[4] int32 XYXY, or None where the person is absent), in file order; the person's
        entries come first, and an image may be listed twice).
    """
    if int(gallery_size) <= 0:
        raise ValueError(f"gallery size {gallery_size}: expected a positive N of a TestG{{N}}.mat file")
    size = int(gallery_size)
    key = _file_key(protocol_path(root, size), f"the CUHK-SYSU protocol TestG{size}")
    sizes = protocol_gallery_sizes(root)
    reference = sizes[0] if sizes and sizes[0] != size else None
    reference_key = None if reference is None else _file_key(protocol_path(root, reference),
                                                             f"the CUHK-SYSU protocol TestG{reference}")
    return list(_read_protocol(key, reference_key, size, reference))


# ----------------------------------------------------------------------------- dataset dicts
def identity_number(idname):
    """Integer identity of a CUHK-SYSU idname: its digits (``"p5533"`` -> 5533); ValueError without digits."""
    digits = re.sub(r"\D", "", idname)
    if not digits:
        raise ValueError(f"identity name {idname!r} has no digits (expected e.g. 'p5533')")
    return int(digits)


def _attach(boxes, pids, name, box, pid):
    """Give ``pid`` to the box of image ``name`` equal to ``box``; False if there is none."""
    if name not in boxes:
        return False
    match = np.flatnonzero(np.all(boxes[name] == box, axis=1))
    if match.size:
        pids[name][match[0]] = pid
    return bool(match.size)


def _records(boxes, pids):
    return [{"image_id": n, "boxes": boxes[n], "person_ids": pids[n]} for n in boxes]


def _train_records(root):
    pool = set(read_pool(root))
    boxes = {n: b for n, b in read_images(root).items() if n not in pool}
    pids = {n: np.full(len(b), -1, dtype=np.int64) for n, b in boxes.items()}
    identities = read_train_identities(root)
    unmatched = sum(not _attach(boxes, pids, name, box, t)
                    for t, (_, appearances) in enumerate(identities) for name, box in appearances)
    if unmatched:
        logger.warning("CUHK-SYSU %s: %d Train.mat boxes match no training box of Images.mat: ignored",
                       root, unmatched)
    return _records(boxes, pids), len(identities)


def _gallery_records(root):
    images = read_images(root)
    pool = read_pool(root)
    missing = [n for n in pool if n not in images]
    if missing:
        raise ValueError(f"{os.path.join(root, 'annotation', 'pool.mat')}: {len(missing)} test images are not "
                         f"in Images.mat (e.g. {missing[0]})")
    boxes = {n: images[n] for n in pool}
    pids = {n: np.full(len(b), -1, dtype=np.int64) for n, b in boxes.items()}
    sizes = protocol_gallery_sizes(root)
    if not sizes:
        raise FileNotFoundError(f"{os.path.join(root, PROTOCOL_DIR)}: no TestG{{N}}.mat protocol file")
    unmatched = 0
    for q in read_test_protocol(root, sizes[0]):
        pid = identity_number(q["pid"])
        unmatched += not _attach(boxes, pids, q["query_image"], q["query_box"], pid)
        for name, box in q["gallery"]:
            if box is not None:
                unmatched += not _attach(boxes, pids, name, box, pid)
    if unmatched:
        logger.warning("CUHK-SYSU %s: %d protocol boxes match no test box of Images.mat", root, unmatched)
    return _records(boxes, pids)


def _query_records(root):
    sizes = protocol_gallery_sizes(root)
    if not sizes:
        raise FileNotFoundError(f"{os.path.join(root, PROTOCOL_DIR)}: no TestG{{N}}.mat protocol file")
    return [{"image_id": q["query_image"], "boxes": q["query_box"].reshape(1, 4),
             "person_ids": [identity_number(q["pid"])], "extra": {"query_index": i}}
            for i, q in enumerate(read_test_protocol(root, sizes[0]))]


def load_cuhk_sysu(root, split, dataset_name=None):
    """Detectron2 dataset dicts of a CUHK-SYSU split (ARCHITECTURE.md "Dataset dicts").

    Args:
        root (str): dataset root (``Image/SSM``, ``annotation``).
        split (str): "train" (images outside the pool; Train.mat identities attached by exact box match
            as contiguous ids 0..T-1 in Train.mat order, other people -1), "gallery" (the pool images with
            all their boxes; identities from the smallest TestG file: the digits of the idname) or "query"
            (one dict per query of the smallest TestG file, TestG50 for the real dataset, in its order).
        dataset_name (str or None): registered name; a train split records ``num_identities`` in it.
    Returns:
        list[dict]
    """
    if split not in SPLITS:
        raise ValueError(f"CUHK-SYSU split {split!r} is not one of {SPLITS}")
    name = dataset_name or f"cuhk_sysu:{root}:{split}"
    image_dir = os.path.join(root, IMAGE_DIR)
    if split == "train":
        records, num_ids = _train_records(root)
        if dataset_name:
            set_num_identities(dataset_name, num_ids)
        return build_dataset_dicts(name, image_dir, records)
    if split == "gallery":
        return build_dataset_dicts(name, image_dir, _gallery_records(root))
    return build_dataset_dicts(name, image_dir, _query_records(root), query=True)


def register_cuhk_sysu(prefix, root):
    """Register ``f"{prefix}_train"``, ``f"{prefix}_gallery"``, ``f"{prefix}_query"`` (loaded lazily).

    Metadata: ``thing_classes=["person"]``, ``evaluator_type="person_search"``, ``dataset_format="cuhk_sysu"``,
    ``root``, ``split``; gallery: ``query_set``; train: ``num_identities`` once its dicts are loaded.
    """
    register_splits(prefix, functools.partial(load_cuhk_sysu, root), thing_classes=["person"],
                    dataset_format="cuhk_sysu", root=root)
