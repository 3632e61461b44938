"""CUHK-SYSU search protocol (PROTOCOLS.md): TestG{N} galleries and the full set, as arrays for the core.

Gallery images are the test pool (``annotation/pool.mat``) in file order; queries are those of the TestG
files (the same queries, in the same order, in every file). Gallery sizes: 50, 100, 500, 1000, 2000, 4000
(``TestG{N}.mat``; the protocol lists the query's own image for a few queries of TestG100 and an image
twice for a few others: both are kept as the field keeps them) and -1, the full set: the TestG50 gallery of
the query, then every other test image that is neither the query image nor in that gallery.
"""
import functools
import os

import numpy as np

from ..data.cuhk_sysu import PROTOCOL_DIR, protocol_gallery_sizes, read_images, read_pool, read_test_protocol
from .protocol import SearchProtocol

__all__ = ["GALLERY_SIZES", "FULL_SET", "gallery_images", "check_gallery_size", "search_protocol",
           "labelled_boxes", "detection_ground_truth"]

FULL_SET = -1
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000, FULL_SET)


def gallery_images(root):
    """Names of the gallery (test) images, in pool.mat order: list[str]."""
    return read_pool(root)


def check_gallery_size(root, gallery_size):
    """ValueError unless ``gallery_size`` is -1 or a size whose TestG{N}.mat exists (field sizes or others)."""
    available = protocol_gallery_sizes(root)
    if gallery_size == FULL_SET:
        if 50 not in available:
            raise FileNotFoundError(f"{os.path.join(root, PROTOCOL_DIR, 'TestG50.mat')}: not found (the full "
                                    "set, gallery size -1, starts from the TestG50 galleries)")
        return
    if isinstance(gallery_size, bool) or not isinstance(gallery_size, (int, np.integer)) or \
            gallery_size not in available:
        raise ValueError(f"unknown CUHK-SYSU gallery size {gallery_size!r}: expected -1 (full set) or one of "
                         f"{available} (TestG{{N}}.mat files under {os.path.join(root, PROTOCOL_DIR)}; the "
                         f"field's sizes are {GALLERY_SIZES[:-1]})")


def _stat(path):
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


def search_protocol(root, gallery_size=100, image_names=None):
    """The :class:`SearchProtocol` of one gallery size (cached per protocol file version: read-only arrays).

    Args:
        root (str): dataset root.
        gallery_size (int): 50, 100, 500, 1000, 2000, 4000 (any N with a TestG{N}.mat) or -1 (full set).
        image_names (list[str] or None): gallery image order (default: :func:`gallery_images`).
    """
    check_gallery_size(root, gallery_size)
    names = tuple(gallery_images(root) if image_names is None else image_names)
    size = 50 if gallery_size == FULL_SET else int(gallery_size)
    # read_test_protocol checks the file against the smallest one: both versions are part of the key.
    files = [os.path.join(root, PROTOCOL_DIR, f"TestG{n}.mat") for n in (size, protocol_gallery_sizes(root)[0])]
    return _search_protocol(root, int(gallery_size), names, tuple(_stat(f) for f in files))


@functools.lru_cache(maxsize=8)
def _search_protocol(root, gallery_size, names, _file_versions):
    index = {n: i for i, n in enumerate(names)}
    full = gallery_size == FULL_SET
    size = 50 if full else gallery_size
    queries = read_test_protocol(root, size)
    absent = np.full(4, np.nan)
    try:
        images = [index[name] for q in queries for name, _ in q["gallery"]]
    except KeyError as e:
        raise ValueError(f"{os.path.join(root, PROTOCOL_DIR, f'TestG{size}.mat')}: gallery image {e.args[0]} is "
                         "not a test image (pool.mat)") from None
    boxes = np.array([absent if box is None else box for q in queries for _, box in q["gallery"]],
                     dtype=np.float64).reshape(-1, 4)
    entry_query = np.repeat(np.arange(len(queries)), [len(q["gallery"]) for q in queries])
    exclude = np.array([index.get(q["query_image"], -1) for q in queries], dtype=np.int64) if full else None
    protocol = SearchProtocol.from_entries(entry_query, images, boxes, len(queries), len(names), rest=full,
                                           exclude_images=exclude)
    for value in vars(protocol).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return protocol


def labelled_boxes(root):
    """The field's labelled test people: {(image name, XYXY tuple)} of the query and gallery boxes of the
    smallest TestG file."""
    labelled = set()
    sizes = protocol_gallery_sizes(root)
    for query in read_test_protocol(root, sizes[0]) if sizes else []:
        labelled.add((query["query_image"], tuple(map(float, query["query_box"]))))
        labelled.update((name, tuple(map(float, box))) for name, box in query["gallery"] if box is not None)
    return labelled


def detection_ground_truth(root, image_names=None, labeled=False):
    """Every annotated person of the gallery images (Images.mat), for the detection metrics.

    Args:
        labeled (bool): also tell the labelled people apart (parses the smallest TestG file).
    Returns:
        (boxes np.ndarray[B, 4] float64 XYXY, image index np.ndarray[B] int64, labelled np.ndarray[B] bool or
        None): labelled = the box is a query or gallery box of the smallest TestG file (the field's test
        identities).
    """
    names = gallery_images(root) if image_names is None else list(image_names)
    images = read_images(root)
    missing = [n for n in names if n not in images]
    if missing:
        raise ValueError(f"{os.path.join(root, 'annotation', 'Images.mat')}: {len(missing)} gallery images have "
                         f"no annotation (e.g. {missing[0]})")
    boxes = [images[n] for n in names]
    image_index = np.repeat(np.arange(len(names)), [len(b) for b in boxes])
    boxes = np.concatenate([np.zeros((0, 4))] + boxes)
    if not labeled:
        return boxes, image_index, None
    known = labelled_boxes(root)
    is_labelled = np.fromiter(((names[i], tuple(map(float, b))) in known for i, b in zip(image_index, boxes)),
                              dtype=bool, count=len(boxes))
    return boxes, image_index, is_labelled
