"""CUHK-SYSU search protocol (docs/PROTOCOLS.md): TestG{N} galleries and the full set, as arrays for the core.

Gallery images are the test pool (``annotation/pool.mat``) in file order; queries are those of the TestG
files (the same queries, in the same order, in every file). Gallery sizes: 50, 100, 500, 1000, 2000, 4000
(``TestG{N}.mat``; the protocol lists the query's own image for a few queries of TestG100 and an image
twice for a few others: both are kept as the field keeps them) and -1, the full set: the TestG50 gallery of
the query, then every other test image that is neither the query image nor in that gallery.

Parsed files are cached on disk (:mod:`.protocol_cache`, one entry per file: pool.mat, Images.mat, each TestG
file) and in memory, so that repeated evaluations, in this process or another, skip scipy.io.loadmat.
"""
import functools
import logging
import os

import numpy as np

from ..data.cuhk_sysu import (
    PROTOCOL_DIR,
    check_same_queries,
    parse_images_mat,
    parse_pool_mat,
    parse_test_protocol_mat,
    protocol_gallery_sizes,
    protocol_path,
)
from . import protocol_cache
from .protocol import SearchProtocol

logger = logging.getLogger(__name__)

__all__ = ["GALLERY_SIZES", "FULL_SET", "gallery_images", "check_gallery_size", "search_protocol",
           "query_people", "labelled_boxes", "detection_ground_truth"]

FULL_SET = -1
GALLERY_SIZES = (50, 100, 500, 1000, 2000, 4000, FULL_SET)
# Versions of the cached arrays of each file: bump one when its parse_*_mat returns something else.
_POOL_VERSION = _IMAGES_VERSION = _PROTOCOL_VERSION = 1


# ----------------------------------------------------------------------------- parsed files, cached
@functools.lru_cache(maxsize=4)
def _pool(version):
    arrays = protocol_cache.load_or_build("cuhk_sysu.pool", [version], lambda: parse_pool_mat(version[0]),
                                          version=_POOL_VERSION)
    return tuple(arrays["names"].tolist())


@functools.lru_cache(maxsize=4)
def _images(version):
    arrays = protocol_cache.load_or_build("cuhk_sysu.Images", [version], lambda: parse_images_mat(version[0]),
                                          version=_IMAGES_VERSION)
    if arrays["num_dropped"]:
        logger.warning("%s: %d boxes with zero or negative width/height dropped", version[0],
                       int(arrays["num_dropped"]))
    return arrays


@functools.lru_cache(maxsize=4)
def _protocol_file(version, gallery_size):
    return protocol_cache.load_or_build(f"cuhk_sysu.TestG{gallery_size}", [version],
                                        lambda: parse_test_protocol_mat(version[0], gallery_size),
                                        version=_PROTOCOL_VERSION)


@functools.lru_cache(maxsize=4)
def _checked_protocol(version, gallery_size, reference_version, reference_size):
    """The arrays of a TestG file whose queries were checked once against the smallest file's."""
    arrays = _protocol_file(version, gallery_size)
    if reference_version != version:
        check_same_queries(arrays, _protocol_file(reference_version, reference_size), version[0],
                           reference_version[0])
    return arrays


def _protocol_versions(root, gallery_size):
    """(version, size, reference version, reference size) of a TestG file and of the smallest one."""
    versions = []
    for size in (gallery_size, protocol_gallery_sizes(root)[0]):
        versions += [protocol_cache.file_version(protocol_path(root, size), f"the CUHK-SYSU protocol TestG{size}"),
                     size]
    return tuple(versions)


def _pool_version(root):
    return protocol_cache.file_version(os.path.join(root, "annotation", "pool.mat"), "the CUHK-SYSU test pool (pool)")


def gallery_images(root):
    """Names of the gallery (test) images, in pool.mat order: list[str]."""
    return list(_pool(_pool_version(root)))


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
    # the smallest file's version is part of the key: the queries are checked against it
    return _search_protocol(int(gallery_size), names, _protocol_versions(root, size))


def _gallery_entries(arrays, names, path):
    """Gallery image index in ``names`` of every entry of a TestG file; ValueError if one is not there."""
    index = {n: i for i, n in enumerate(names)}
    table = arrays["image_names"].tolist()
    where = np.array([index.get(n, -1) for n in table], dtype=np.int64)
    images = where[arrays["gallery_images"]]
    if len(images) and images.min() < 0:
        unknown = table[arrays["gallery_images"][np.argmax(images < 0)]]
        raise ValueError(f"{path}: gallery image {unknown} is not a test image (pool.mat)")
    return images


@functools.lru_cache(maxsize=8)
def _search_protocol(gallery_size, names, versions):
    arrays = _checked_protocol(*versions)
    full = gallery_size == FULL_SET
    offsets = arrays["gallery_offsets"]
    num_queries = len(offsets) - 1
    images = _gallery_entries(arrays, names, versions[0][0])
    boxes = arrays["gallery_boxes"].astype(np.float64)
    boxes[~arrays["gallery_has_box"]] = np.nan
    entry_query = np.repeat(np.arange(num_queries), np.diff(offsets))
    exclude = None
    if full:
        index = {n: i for i, n in enumerate(names)}
        exclude = np.array([index.get(n, -1) for n in arrays["query_images"].tolist()], dtype=np.int64)
    protocol = SearchProtocol.from_entries(entry_query, images, boxes, num_queries, len(names), rest=full,
                                           exclude_images=exclude)
    for value in vars(protocol).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return protocol


def query_people(root, gallery_size=100, image_names=None):
    """Each query's image and box (the TestG file's), for CBGM's context (:mod:`.cbgm`).

    Returns:
        (np.ndarray[Q] int64: index of the query image in ``image_names`` (default: :func:`gallery_images`),
        -1 if absent; np.ndarray[Q, 4] float64: the query box, XYXY absolute pixels).
    """
    check_gallery_size(root, gallery_size)
    names = gallery_images(root) if image_names is None else list(image_names)
    arrays = _checked_protocol(*_protocol_versions(root, 50 if gallery_size == FULL_SET else int(gallery_size)))
    index = {n: i for i, n in enumerate(names)}
    images = np.array([index.get(n, -1) for n in arrays["query_images"].tolist()], dtype=np.int64)
    return images, arrays["query_boxes"].astype(np.float64).reshape(-1, 4)


def _smallest_protocol(root):
    sizes = protocol_gallery_sizes(root)
    if not sizes:
        return None
    versions = _protocol_versions(root, sizes[0])
    return _checked_protocol(*versions)


def labelled_boxes(root):
    """The field's labelled test people: {(image name, XYXY tuple)} of the query and gallery boxes of the
    smallest TestG file."""
    arrays = _smallest_protocol(root)
    if arrays is None:
        return set()
    labelled = set(zip(arrays["query_images"].tolist(), map(tuple, arrays["query_boxes"].astype(float).tolist())))
    table = arrays["image_names"].tolist()
    has = arrays["gallery_has_box"]
    labelled.update(zip((table[i] for i in arrays["gallery_images"][has].tolist()),
                        map(tuple, arrays["gallery_boxes"][has].astype(float).tolist())))
    return labelled


def _image_boxes(root, names):
    """(boxes [B, 4] float64 XYXY, image index [B] int64) of the images ``names`` (Images.mat)."""
    path = os.path.join(root, "annotation", "Images.mat")
    arrays = _images(protocol_cache.file_version(path, "the CUHK-SYSU image annotations (Img)"))
    index = {n: i for i, n in enumerate(arrays["names"].tolist())}
    missing = [n for n in names if n not in index]
    if missing:
        raise ValueError(f"{path}: {len(missing)} gallery images have no annotation (e.g. {missing[0]})")
    which = np.array([index[n] for n in names], dtype=np.int64)
    counts = arrays["counts"][which]
    starts = (np.cumsum(arrays["counts"]) - arrays["counts"])[which]
    image_index = np.repeat(np.arange(len(names)), counts)
    # row of each output box in the file's box array: its image's start, plus its rank within the image
    rank = np.arange(len(image_index)) - np.repeat(np.cumsum(counts) - counts, counts)
    return arrays["boxes"][starts[image_index] + rank].reshape(-1, 4), image_index


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
    boxes, image_index = _image_boxes(root, names)
    if not labeled:
        return boxes, image_index, None
    known = labelled_boxes(root)
    is_labelled = np.fromiter(((names[i], tuple(map(float, b))) in known for i, b in zip(image_index, boxes)),
                              dtype=bool, count=len(boxes))
    return boxes, image_index, is_labelled
