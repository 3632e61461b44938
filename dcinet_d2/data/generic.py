"""The generic gallery format (any object category, e.g. tattoos); its dataset dicts are built as every
format's are (records.py: image sizes from headers, clipping, dropping, missing images).

Generic format: a COCO-style JSON file (datasets/README.md has an example)::

    {"images":      [{"id": 1, "file_name": "a/001.jpg", "height": 480, "width": 640,
                      "split": "gallery"}, ...],            # split: "train" | "gallery" | "query"; default "gallery"
     "annotations": [{"id": 7, "image_id": 1, "bbox": [x, y, w, h], "category_id": 1,
                      "identity": 12}, ...],                 # identity: int >= 0, or -1 / absent = unlabelled
     "categories":  [{"id": 1, "name": "tattoo"}, ...],
     "queries":     [7, {"annotation_id": 9}, ...]}          # annotation ids, in the protocol's order

``height``/``width`` are optional (read from the image header when absent). Other keys (COCO's ``info``,
``licenses``, ``segmentation``, ``area``, ``iscrowd``, ...) are ignored. Bad input is a ValueError naming the
file and the entry: a file that is not JSON, entries of the wrong type, duplicate image ids, file names or
annotation ids, NaN / infinite boxes, a negative width or height. Boxes of zero area (after clipping to the
image) are dropped with one warning counting them. ``register_search_dataset(name,
json_file, image_root)`` registers three splits:

- ``f"{name}_train"``: the "train" images; labelled identities remapped to 0..T-1 (sorted raw identities);
- ``f"{name}_gallery"``: the "gallery" images, with their raw identities;
- ``f"{name}_query"``: one dict per query annotation, in "queries" order (its image may be a "gallery" or
  a "query"-only image, never a "train" image).
"""
import functools
import json
import logging
import os

import numpy as np
from detectron2.data import MetadataCatalog

from .records import SPLITS, build_dataset_dicts, contiguous_ids, register_splits, set_num_identities

logger = logging.getLogger(__name__)

__all__ = ["read_search_json", "load_parsed", "load_search_dataset", "register_search_dataset",
           "convert_coco_with_identity"]


# ----------------------------------------------------------------------------- the generic JSON format
def _file_key(path):
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=8)
def _read_json(key):
    with open(key[0]) as f:
        return json.load(f)


def _bad(json_file, problem):
    return ValueError(f"{json_file}: {problem}")


def _parse_identity(json_file, ann):
    identity = ann.get("identity", -1)
    if identity is None:
        return -1
    if isinstance(identity, bool) or not isinstance(identity, (int, np.integer)):
        raise _bad(json_file, f"annotation {ann.get('id')}: identity {identity!r} is not an int (-1: unlabelled)")
    return max(int(identity), -1)


def _parse_bbox(json_file, ann):
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise _bad(json_file, f"annotation {ann.get('id')}: bbox {bbox!r} is not [x, y, w, h]") from None
    if not np.all(np.isfinite([x, y, w, h])):
        raise _bad(json_file, f"annotation {ann.get('id')}: bbox {bbox!r} holds NaN or infinite values")
    if w < 0 or h < 0:
        raise _bad(json_file, f"annotation {ann.get('id')}: bbox {bbox!r} has a negative width or height "
                              "(expected [x, y, w, h], w, h >= 0)")
    return [x, y, x + w, y + h]


def _load_json(json_file):
    """The parsed JSON content (a dict with the three lists of dicts); ValueError naming the file otherwise."""
    try:
        data = _read_json(_file_key(json_file))
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise _bad(json_file, f"not a JSON file ({e})") from None
    if not isinstance(data, dict):
        raise _bad(json_file, f"holds a JSON {type(data).__name__}, expected an object with 'images', "
                              "'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise _bad(json_file, f"no '{key}' list (expected a COCO-style file with 'identity' annotations)")
        if not isinstance(data[key], list) or not all(isinstance(e, dict) for e in data[key]):
            raise _bad(json_file, f"'{key}' is not a list of objects")
    if not isinstance(data.get("queries", []), list):
        raise _bad(json_file, "'queries' is not a list of annotation ids")
    return data


def _check_unique(json_file, values, what):
    seen = set()
    for value in values:
        if value in seen:
            raise _bad(json_file, f"{what} {value!r} appears twice (expected each once)")
        seen.add(value)


def _check_size(json_file, img):
    for key in ("height", "width"):
        value = img.get(key)
        if key in img and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
                           or not float(value).is_integer()):
            raise _bad(json_file, f"image {img['id']}: {key} {value!r} is not a positive integer (pixels)")


def read_search_json(json_file):
    """Parse and validate a generic gallery JSON file.

    Returns:
        dict with ``images`` (list of image dicts, each with a ``split``), ``annotations`` (dict image id ->
        list of (annotation id, XYXY box, identity, contiguous category index)), ``queries`` (list of
        annotation ids), ``classes`` (category names), ``ann_index`` (annotation id -> image id).
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{json_file}: generic gallery JSON not found")
    data = _load_json(json_file)
    _check_unique(json_file, (img["id"] for img in data["images"] if "id" in img), "image id")
    _check_unique(json_file, (img["file_name"] for img in data["images"] if "file_name" in img), "image file_name")
    _check_unique(json_file, (a["id"] for a in data["annotations"] if a.get("id") is not None), "annotation id")
    for cat in data["categories"]:
        if "id" not in cat or "name" not in cat:
            raise _bad(json_file, f"category {cat!r} needs 'id' and 'name'")
    cat_index = {c["id"]: i for i, c in enumerate(data["categories"])}
    images, by_image, ann_index = {}, {}, {}
    for img in data["images"]:
        split = img.get("split", "gallery")
        if split not in SPLITS:
            raise _bad(json_file, f"image {img.get('id')}: split {split!r} is not one of {SPLITS}")
        if "id" not in img or "file_name" not in img:
            raise _bad(json_file, f"image entry {img!r} needs 'id' and 'file_name'")
        _check_size(json_file, img)
        images[img["id"]] = dict(img, split=split)
        by_image[img["id"]] = []
    for ann in data["annotations"]:
        if ann.get("image_id") not in images:
            raise _bad(json_file, f"annotation {ann.get('id')}: unknown image_id {ann.get('image_id')!r}")
        if ann.get("category_id") not in cat_index:
            raise _bad(json_file, f"annotation {ann.get('id')}: unknown category_id {ann.get('category_id')!r}")
        box = _parse_bbox(json_file, ann)
        by_image[ann["image_id"]].append((ann.get("id"), box, _parse_identity(json_file, ann),
                                          cat_index[ann["category_id"]]))
        ann_index[ann.get("id")] = ann["image_id"]
    queries = [q.get("annotation_id") if isinstance(q, dict) else q for q in data.get("queries", [])]
    return {"images": list(images.values()), "annotations": by_image, "queries": queries,
            "classes": [c["name"] for c in data["categories"]], "ann_index": ann_index}


def _image_record(img, anns, id_map=None):
    boxes = np.asarray([a[1] for a in anns], dtype=np.float64).reshape(-1, 4)
    pids = [a[2] if id_map is None or a[2] < 0 else id_map[a[2]] for a in anns]
    rec = {"image_id": img["file_name"], "boxes": boxes, "person_ids": pids, "category_ids": [a[3] for a in anns]}
    if "height" in img and "width" in img:
        rec.update(height=img["height"], width=img["width"])
    if "camera" in img:
        rec["extra"] = {"camera": img["camera"]}
    return rec


def _query_records(json_file, parsed):
    images = {img["id"]: img for img in parsed["images"]}
    records = []
    for index, ann_id in enumerate(parsed["queries"]):
        if ann_id not in parsed["ann_index"]:
            raise _bad(json_file, f"query {index}: unknown annotation id {ann_id!r}")
        img = images[parsed["ann_index"][ann_id]]
        if img["split"] == "train":
            raise _bad(json_file, f"query {index}: annotation {ann_id} lies in a training image")
        ann = next(a for a in parsed["annotations"][img["id"]] if a[0] == ann_id)
        if ann[2] < 0:
            raise _bad(json_file, f"query {index}: annotation {ann_id} has no identity")
        rec = _image_record(img, [ann])
        rec["extra"] = {**rec.get("extra", {}), "query_index": index}
        records.append(rec)
    return records


def load_search_dataset(json_file, image_root, split, dataset_name=None):
    """Dataset dicts of one split of a generic gallery JSON (see the module docstring).

    Args:
        json_file (str): the JSON file.
        image_root (str): folder the images' ``file_name`` are relative to.
        split (str): "train", "gallery" or "query".
        dataset_name (str or None): registered name; its metadata receives ``thing_classes`` and, for
            "train", ``num_identities``.
    Returns:
        list[dict]: ``category_id`` is the index of the category in "categories".
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    return load_parsed(read_search_json(json_file), json_file, image_root, split, dataset_name)


def load_parsed(parsed, source, image_root, split, dataset_name=None):
    """:func:`load_search_dataset` of an already parsed gallery (the form :func:`read_search_json` returns;
    other formats, e.g. MOT sequences, parse into it); ``source`` names it in messages."""
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    name = dataset_name or f"{source}:{split}"
    if split == "query":
        dicts = build_dataset_dicts(name, image_root, _query_records(source, parsed), query=True)
    else:
        images = [img for img in parsed["images"] if img["split"] == split]
        if not images:
            raise _bad(source, f"no images with split '{split}'")
        id_map = None
        if split == "train":
            id_map, num_ids = contiguous_ids(a[2] for img in images for a in parsed["annotations"][img["id"]])
            if dataset_name:
                set_num_identities(dataset_name, num_ids)
        records = [_image_record(img, parsed["annotations"][img["id"]], id_map) for img in images]
        dicts = build_dataset_dicts(name, image_root, records)
    if dataset_name:
        MetadataCatalog.get(dataset_name).set(thing_classes=parsed["classes"])
    return dicts


def register_search_dataset(name, json_file, image_root):
    """Register ``f"{name}_train"``, ``f"{name}_gallery"`` and ``f"{name}_query"`` (lazy loading).

    Metadata: ``evaluator_type="person_search"``, ``dataset_format="generic"``, ``root`` (the JSON file),
    ``image_root``, ``split``, gallery: ``query_set``; ``thing_classes`` and (train) ``num_identities`` are
    set when the split is loaded.
    """
    register_splits(name, functools.partial(load_search_dataset, json_file, image_root),
                    dataset_format="generic", root=json_file, image_root=image_root)


# ----------------------------------------------------------------------------- conversion from COCO
def _lookup(ann, key):
    """``ann[key]``, where a dotted key walks nested dicts (``"attributes.track_id"``); None if absent."""
    value = ann
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _identities(annotations, identity_key):
    """Integer identity per annotation: ints kept (negative -> -1), other values numbered in sorted order."""
    raw = [_lookup(a, identity_key) for a in annotations]
    others = sorted({str(v) for v in raw if v is not None and not isinstance(v, (int, np.integer))})
    offset = 1 + max([int(v) for v in raw if isinstance(v, (int, np.integer))] + [-1])
    names = {s: offset + i for i, s in enumerate(others)}
    return [-1 if v is None else max(int(v), -1) if isinstance(v, (int, np.integer)) else names[str(v)]
            for v in raw]


def _choose_queries(images, annotations, query_fraction, seed):
    """One query per eligible identity (seen in >= 2 non-train images), a ``query_fraction`` of them."""
    split_of = {img["id"]: img.get("split", "gallery") for img in images}
    seen = {}
    for ann in annotations:
        if ann["identity"] >= 0 and split_of[ann["image_id"]] != "train":
            seen.setdefault(ann["identity"], []).append(ann)
    eligible = sorted(i for i, anns in seen.items() if len({a["image_id"] for a in anns}) >= 2)
    rng = np.random.default_rng(seed)
    count = int(round(query_fraction * len(eligible)))
    chosen = sorted(rng.choice(len(eligible), size=count, replace=False).tolist()) if count else []
    return [seen[eligible[i]][int(rng.integers(len(seen[eligible[i]])))]["id"] for i in chosen]


def convert_coco_with_identity(coco_json, out_json, *, identity_key="identity", query_fraction=1.0, seed=0):
    """Write a generic gallery JSON from a COCO file whose annotations carry an identity field.

    Rule: the identity of an annotation is ``ann[identity_key]`` (a dotted key walks nested dicts; absent,
    None or negative: unlabelled, -1; non-integer values such as strings get new integer identities in
    sorted order). Images keep their ``split`` if they have one, else become "gallery". Queries: of the
    identities seen in at least two non-train images, a ``query_fraction`` (drawn with ``seed``) each
    gets one query, a random annotation of it; queries are listed in identity order.

    Args:
        coco_json (str): input COCO JSON (images, annotations, categories).
        out_json (str): output path (folders created).
        identity_key (str): annotation field holding the identity.
        query_fraction (float): in [0, 1].
        seed (int): seed of the query draw.
    Returns:
        dict: the written JSON content.
    """
    if not 0.0 <= query_fraction <= 1.0:
        raise ValueError(f"query_fraction {query_fraction} is not in [0, 1]")
    with open(coco_json) as f:
        coco = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in coco:
            raise _bad(coco_json, f"no '{key}' list (expected a COCO file)")
    images = [{k: img[k] for k in ("id", "file_name", "height", "width", "split") if k in img}
              for img in coco["images"]]
    identities = _identities(coco["annotations"], identity_key)
    annotations = [{"id": a["id"], "image_id": a["image_id"], "bbox": list(a["bbox"]),
                    "category_id": a["category_id"], "identity": ident}
                   for a, ident in zip(coco["annotations"], identities)]
    out = {"images": images, "annotations": annotations,
           "categories": [{"id": c["id"], "name": c["name"]} for c in coco["categories"]],
           "queries": _choose_queries(images, annotations, query_fraction, seed)}
    os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
    with open(out_json, "w") as f:
        json.dump(out, f)
    logger.info("wrote %s: %d images, %d annotations, %d queries", out_json, len(images), len(annotations),
                len(out["queries"]))
    return out
