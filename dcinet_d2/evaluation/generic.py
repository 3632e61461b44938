"""Search protocol of the generic gallery JSON format (:mod:`dcinet_d2.data.generic`), as arrays for the core;
also of MOTChallenge sequences (:mod:`dcinet_d2.data.mot`), which parse into the same form.

Gallery images are the "gallery" images of the file, in file order, named by the base name of their
``file_name`` (the key of the results file; ValueError if two gallery images share a base name); MOT frames
by their ``file_name`` (path under the root: every sequence has a 000001.jpg). Each query
(an annotation id of "queries") searches every gallery image but its own; its ground truth: the gallery
images holding an annotation of its identity (the first one if the identity appears twice in an image).
Boxes are those of the file, clipped to the image when the file gives its ``height`` and ``width``.
"""
import os

import numpy as np

from ..data.generic import read_search_json
from .protocol import SearchProtocol

__all__ = ["gallery_images", "search_protocol", "query_people", "detection_ground_truth"]


def _gallery(json_file):
    """(parsed, gallery images, their names); ``json_file`` may also be an already parsed gallery (a dict, as
    :func:`dcinet_d2.data.mot.read_mot` returns)."""
    parsed = json_file if isinstance(json_file, dict) else read_search_json(json_file)
    images = [img for img in parsed["images"] if img["split"] == "gallery"]
    names = [img["file_name"] if parsed.get("key_by_path") else os.path.basename(img["file_name"]) for img in images]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"{json_file}: two gallery images share the base name {dup!r} (results files key "
                         "gallery images by base name)")
    return parsed, images, names


def _boxes(img, annotations):
    """XYXY boxes (np.ndarray[n, 4]) and identities (np.ndarray[n] int64) of one image's annotations."""
    boxes = np.asarray([a[1] for a in annotations], dtype=np.float64).reshape(-1, 4)
    if "height" in img and "width" in img:
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, img["width"])
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, img["height"])
    return boxes, np.asarray([a[2] for a in annotations], dtype=np.int64)


def gallery_images(json_file):
    """Base names of the gallery images, in file order: list[str]."""
    return _gallery(json_file)[2]


def search_protocol(json_file, image_names=None):
    """The :class:`SearchProtocol` of a generic gallery: each query against every other gallery image."""
    parsed, images, names = _gallery(json_file)
    if image_names is not None and list(image_names) != names:
        raise ValueError(f"{json_file}: image_names differ from the gallery images of the file")
    first_box = {}  # identity -> [(gallery index, box)]
    for i, img in enumerate(images):
        boxes, ids = _boxes(img, parsed["annotations"][img["id"]])
        for pid in np.unique(ids[ids >= 0]).tolist():
            first_box.setdefault(pid, []).append((i, boxes[int(np.argmax(ids == pid))]))
    gallery_index = {img["id"]: i for i, img in enumerate(images)}
    query_images, ground_truth = [], []
    for q, ann_id in enumerate(parsed["queries"]):
        if ann_id not in parsed["ann_index"]:
            raise ValueError(f"{json_file}: query {q}: unknown annotation id {ann_id!r}")
        image_id = parsed["ann_index"][ann_id]
        identity = next(a[2] for a in parsed["annotations"][image_id] if a[0] == ann_id)
        if identity < 0:
            raise ValueError(f"{json_file}: query {q}: annotation {ann_id} has no identity")
        query_images.append(gallery_index.get(image_id, -1))
        ground_truth.append(first_box.get(identity, []))
    return SearchProtocol.every_other_image(len(images), query_images, ground_truth)


def query_people(json_file, image_names=None):
    """Each query's image and box, for CBGM's context (:mod:`.cbgm`).

    Returns:
        (np.ndarray[Q] int64: gallery index of the query's image, -1 if it is not a gallery image (a "query"
        image: CBGM then leaves the query unchanged); np.ndarray[Q, 4] float64: the query box, XYXY,
        clipped as the ground truth is).
    """
    parsed, images, names = _gallery(json_file)
    if image_names is not None and list(image_names) != names:
        raise ValueError(f"{json_file}: image_names differ from the gallery images of the file")
    gallery_index = {img["id"]: i for i, img in enumerate(images)}
    by_id = {img["id"]: img for img in parsed["images"]}
    query_images, boxes = [], []
    for q, ann_id in enumerate(parsed["queries"]):
        if ann_id not in parsed["ann_index"]:
            raise ValueError(f"{json_file}: query {q}: unknown annotation id {ann_id!r}")
        image_id = parsed["ann_index"][ann_id]
        annotation = [a for a in parsed["annotations"][image_id] if a[0] == ann_id][:1]
        boxes.append(_boxes(by_id[image_id], annotation)[0][0])
        query_images.append(gallery_index.get(image_id, -1))
    return np.asarray(query_images, dtype=np.int64), np.reshape(boxes, (-1, 4)).astype(np.float64)


def detection_ground_truth(json_file, image_names=None, labeled=False):
    """Every annotation of the gallery images: (boxes [B, 4] XYXY, image index [B], labelled [B] bool).

    The labelled mask (identity >= 0) is cheap here and always returned (``labeled``: a uniform interface).
    """
    parsed, images, names = _gallery(json_file)
    per_image = [_boxes(img, parsed["annotations"][img["id"]]) for img in images]
    image_index = np.repeat(np.arange(len(images)), [len(ids) for _, ids in per_image])
    boxes = np.concatenate([np.zeros((0, 4))] + [b for b, _ in per_image])
    labelled = np.concatenate([np.zeros(0, dtype=bool)] + [ids >= 0 for _, ids in per_image])
    return boxes, image_index, labelled
