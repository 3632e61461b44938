"""PRW search protocol (docs/PROTOCOLS.md), as arrays for the core.

Gallery images are the test frames (``frame_test.mat``) in file order; queries are the lines of
``query_info.txt``. A query searches every test frame but its own ("all", the common setting) or, in the
cross-camera (multi-view) setting, only the frames of other cameras. Its ground truth: the frames of the
gallery holding its identity (the first box if the identity appears twice in a frame).
"""
import os

import numpy as np

from ..data.prw import camera_id, read_annotation, read_frame_names, read_queries
from .protocol import SearchProtocol

__all__ = ["gallery_images", "frame_annotations", "search_protocol", "query_people", "detection_ground_truth"]


def gallery_images(root):
    """Names of the gallery (test) frames with ".jpg", in frame_test.mat order: list[str]."""
    return read_frame_names(root, "test")


def frame_annotations(root, image_names):
    """Per frame: (boxes np.ndarray[n, 4] XYXY, raw ids np.ndarray[n] int64, -2 unlabelled)."""
    return [read_annotation(os.path.join(root, "annotations", name + ".mat")) for name in image_names]


def search_protocol(root, cross_camera=False, image_names=None):
    """The :class:`SearchProtocol` of the "all" setting, or of the cross-camera one if ``cross_camera``.

    Args:
        root (str): dataset root.
        cross_camera (bool): keep only gallery frames of other cameras than the query's.
        image_names (list[str] or None): gallery frame order (default: :func:`gallery_images`).
    """
    names = gallery_images(root) if image_names is None else list(image_names)
    first_box = {}  # raw id -> [(frame index, its first box in that frame)], frames in gallery order
    for i, (boxes, ids) in enumerate(frame_annotations(root, names)):
        for pid in np.unique(ids[ids >= 0]).tolist():
            first_box.setdefault(pid, []).append((i, boxes[int(np.argmax(ids == pid))]))
    index = {n: i for i, n in enumerate(names)}
    queries = read_queries(root)
    query_images = [index.get(q["query_image"], -1) for q in queries]
    ground_truth = [first_box.get(int(q["pid"]), []) for q in queries]
    groups = query_groups = None
    if cross_camera:
        groups = [camera_id(n) for n in names]
        query_groups = [camera_id(q["query_image"]) for q in queries]
    return SearchProtocol.every_other_image(len(names), query_images, ground_truth, image_groups=groups,
                                            query_groups=query_groups)


def query_people(root, image_names=None):
    """Each query's frame and box (query_info.txt), for CBGM's context (:mod:`.cbgm`).

    Returns:
        (np.ndarray[Q] int64: index of the query frame in ``image_names`` (default: :func:`gallery_images`),
        -1 if absent; np.ndarray[Q, 4] float64: the query box, XYXY absolute pixels).
    """
    names = gallery_images(root) if image_names is None else list(image_names)
    index = {n: i for i, n in enumerate(names)}
    queries = read_queries(root)
    images = np.array([index.get(q["query_image"], -1) for q in queries], dtype=np.int64)
    return images, np.array([q["query_box"] for q in queries], dtype=np.float64).reshape(-1, 4)


def detection_ground_truth(root, image_names=None, labeled=False):
    """Every annotated person of the gallery frames, for the detection metrics.

    Returns:
        (boxes np.ndarray[B, 4] float64 XYXY, image index np.ndarray[B] int64, labelled np.ndarray[B] bool);
        the labelled mask is cheap here and always returned (``labeled`` is for a uniform interface).
    """
    names = gallery_images(root) if image_names is None else list(image_names)
    annotations = frame_annotations(root, names)
    image_index = np.repeat(np.arange(len(names)), [len(ids) for _, ids in annotations])
    boxes = np.concatenate([np.zeros((0, 4))] + [b for b, _ in annotations])
    labelled = np.concatenate([np.zeros(0, dtype=bool)] + [ids >= 0 for _, ids in annotations])
    return boxes, image_index, labelled
