"""Detectron2 dataset dicts from parsed annotations, as every dataset format builds them (CUHK-SYSU, PRW,
generic): image sizes from headers, boxes clipped to the image, zero-area boxes and missing images dropped
with one warning each; and the registration of a dataset's three splits.
"""
import functools
import logging
import os

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from ..errors import error_line

logger = logging.getLogger(__name__)

__all__ = ["SPLITS", "image_sizes", "build_dataset_dicts", "contiguous_ids", "set_num_identities",
           "register_splits"]

SPLITS = ("train", "gallery", "query")
_SIZE_CACHE = {}  # absolute image folder -> {relative name: (height, width)}


def image_sizes(image_dir, names):
    """Sizes of images, read from their headers only (PIL decodes no pixels), cached per folder.

    Args:
        image_dir (str): folder the names are relative to.
        names (Iterable[str]): image names.
    Returns:
        dict[str, tuple[int, int]]: name -> (height, width) for every name found on disk (missing ones absent).
    Raises:
        ValueError naming the file whose header cannot be read (truncated on disk, not an image).
    """
    cache = _SIZE_CACHE.setdefault(os.path.abspath(image_dir), {})
    for name in names:
        if name not in cache:
            try:
                with Image.open(os.path.join(image_dir, name)) as im:
                    width, height = im.size
            except FileNotFoundError:
                continue
            except (OSError, ValueError, SyntaxError) as e:  # PIL: truncated, unidentified, broken headers
                raise ValueError(f"{os.path.join(image_dir, name)}: not a readable image ({error_line(e)})") from None
            cache[name] = (height, width)
    return {n: cache[n] for n in names if n in cache}


def _clip_boxes(boxes, height, width):
    """Clip XYXY boxes (np.ndarray[n, 4]) to the image; returns (clipped boxes, bool[n] changed)."""
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, width)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, height)
    return clipped, np.any(clipped != boxes, axis=1)


def _annotation(box, person_id, category_id=0):
    return {"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS,
            "category_id": int(category_id), "person_id": int(person_id)}


def build_dataset_dicts(dataset_name, image_dir, records, *, query=False):
    """Detectron2 dataset dicts from parsed annotations (the format of ARCHITECTURE.md "Dataset dicts").

    Images missing on disk are dropped (one warning with their count). Boxes partly outside the image are
    clipped to it, boxes of zero area after clipping are dropped: one warning each per call, with counts.

    Args:
        dataset_name (str): names the data in messages.
        image_dir (str): folder of the images; ``file_name`` becomes the absolute path.
        records (list[dict]): per image (per query if ``query``): ``image_id`` (name relative to
            ``image_dir``), ``boxes`` (np.ndarray[n, 4] XYXY absolute pixels), ``person_ids`` (int[n]),
            optional ``category_ids`` (int[n], default 0), ``height``/``width`` (else read from the header),
            ``clipped`` (int: boxes the parser already clipped, added to the count) and ``extra`` (dict of
            keys copied into the dict, e.g. ``camera_id``, ``query_index``).
        query (bool): every record is one query box, which is clipped but must not vanish (ValueError).
    Returns:
        list[dict]
    """
    known = {r["image_id"]: (r["height"], r["width"]) for r in records if "height" in r}
    sizes = image_sizes(image_dir, sorted({r["image_id"] for r in records} - set(known)))
    sizes.update({n: hw for n, hw in known.items() if os.path.isfile(os.path.join(image_dir, n))})
    missing = sorted({r["image_id"] for r in records if r["image_id"] not in sizes})
    if missing:
        logger.warning("%s: %d images missing under %s (e.g. %s): dropped", dataset_name, len(missing),
                       image_dir, missing[0])
    dicts, n_clipped, n_dropped = [], 0, 0
    for rec in records:
        if rec["image_id"] not in sizes:
            continue
        height, width = sizes[rec["image_id"]]
        boxes = np.asarray(rec["boxes"], dtype=np.float64).reshape(-1, 4)
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"{dataset_name}: image {rec['image_id']} has a non-finite box")
        boxes, changed = _clip_boxes(boxes, height, width)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if query and not keep.all():
            raise ValueError(f"{dataset_name}: query box {rec['boxes']} lies outside image {rec['image_id']} "
                             f"({width}x{height})")
        n_clipped += int(changed[keep].sum()) + rec.get("clipped", 0)
        n_dropped += int((~keep).sum())
        pids = np.asarray(rec["person_ids"]).reshape(-1)
        cats = np.asarray(rec.get("category_ids", np.zeros(len(boxes), dtype=np.int64))).reshape(-1)
        d = {
            "file_name": os.path.abspath(os.path.join(image_dir, rec["image_id"])),
            "height": int(height),
            "width": int(width),
            "image_id": rec["image_id"],
            "annotations": [_annotation(b, p, c) for b, p, c in zip(boxes[keep], pids[keep], cats[keep])],
        }
        d.update(rec.get("extra", {}))
        dicts.append(d)
    if n_clipped:
        logger.warning("%s: %d boxes partly outside their image were clipped to it", dataset_name, n_clipped)
    if n_dropped:
        logger.warning("%s: %d boxes of zero area (after clipping) were dropped", dataset_name, n_dropped)
    return dicts


def contiguous_ids(person_ids):
    """Map labelled ids (>= 0) to 0..T-1 in sorted order; returns (dict raw -> contiguous, T)."""
    labelled = sorted({int(p) for p in person_ids if p >= 0})
    return {raw: i for i, raw in enumerate(labelled)}, len(labelled)


def set_num_identities(dataset_name, num_identities):
    """Record T of a train split in its metadata (done when its dicts are loaded: counting needs the files)."""
    MetadataCatalog.get(dataset_name).set(num_identities=int(num_identities))


def register_splits(prefix, load, **metadata):
    """Register ``f"{prefix}_train"``, ``f"{prefix}_gallery"``, ``f"{prefix}_query"``, loaded lazily by
    ``load(split, dataset_name)``, with ``evaluator_type="person_search"``, ``split``, the gallery's
    ``query_set`` and ``metadata`` (``dataset_format``, ``root``, ...) in the MetadataCatalog. ValueError
    saying what to do when a split of that name is already registered (nothing is registered then)."""
    taken = [f"{prefix}_{split}" for split in SPLITS if f"{prefix}_{split}" in DatasetCatalog]
    if taken:
        raise ValueError(f"dataset {prefix!r}: {', '.join(repr(n) for n in taken)} already registered (by an earlier "
                         f"call with this name, or a built-in dataset); choose another name, or first remove each "
                         f"split with DatasetCatalog.remove(name) and MetadataCatalog.remove(name)")
    for split in SPLITS:
        name = f"{prefix}_{split}"
        DatasetCatalog.register(name, functools.partial(load, split, name))
        meta = MetadataCatalog.get(name).set(evaluator_type="person_search", split=split, **metadata)
        if split == "gallery":
            meta.set(query_set=f"{prefix}_query")
