"""MOTChallenge sequences as a person-search dataset: the ground truth of MOT16 / MOT17 / MOT20 (CVAT's
"MOT 1.1" export writes the same), each sequence one camera, split into train, gallery and query by a fixed
rule. Its dataset dicts are built as the generic format's (generic.py, records.py) and searched by the
generic protocol (evaluation/generic.py).

Layout: ``root`` is one sequence folder, or a folder whose sub-folders are sequences (those holding
``gt/gt.txt``, in name order)::

    <sequence>/gt/gt.txt        one box a line: frame, id, x, y, w, h, flag, class, visibility (frames 1-based;
                                the last three optional: flag 1, class -1, visibility 1)
    <sequence>/img1/000001.jpg  the frames (numbered file names; seqinfo.ini's imDir and imExt when it names them)
    <sequence>/seqinfo.ini      optional: [Sequence] name (the camera's name, else the folder's), imWidth and
                                imHeight (else read from each frame's header), frameRate, imDir, imExt

Rows, as MOTChallenge defines them: flag 0 means "ignore" and the row is dropped; class 1 (pedestrian) or -1
(no class: MOT15 and files without the column) is a person with an identity (a negative id: a person without
one); classes 2 (person on vehicle) and 7 (static person) are persons without an identity (detection
targets, not re-id targets); every other class (vehicles, occluders, distractors, reflections, crowds) is
dropped. Visibility is not used. Identities are per sequence (MOTChallenge numbers each sequence's people
from 1), unless ``shared_ids``: one id is one person in every sequence (cameras labelled consistently).

Splits (deterministic, from the ground truth alone):

- identities, sorted by (sequence, id) (by id with ``shared_ids``), the one at position i (0-based) is a test
  identity when floor((i + 1) f) > floor(i f), f = ``TEST_FRACTION`` (0.5: every second one), else a train
  identity: test identities are spread evenly over the sequences and the ids;
- a frame is a gallery (test) frame when at least half of its people with an identity are test identities
  (frames without any: gallery, as distractors), else a train frame; in each split the people of the
  other split's identities are kept as persons without an identity, so no identity is labelled in both
  splits (the train frames still show some test people, unlabelled, as detection targets);
- queries: each test identity seen in at least 2 gallery frames gives one query per sequence (camera) it is
  seen in, its box in the first (lowest-numbered) gallery frame of that sequence; ordered by identity, then
  sequence. A query searches every other gallery frame (the generic protocol), so its neighbouring frames
  count: on video, consecutive frames are easy matches.

``register_mot(name, root)`` registers ``f"{name}_train"``, ``f"{name}_gallery"``, ``f"{name}_query"``;
every folder under ``<datasets>/mot/`` is registered as ``mot_<folder>_*`` on import (builtin.py).
Results files of a MOT gallery key its frames by their path under ``root`` (several sequences share frame
names).
"""
import configparser
import functools
import logging
import math
import os
import re

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["TEST_FRACTION", "PERSON_CLASSES", "UNLABELLED_PERSON_CLASSES", "read_gt", "sequence_folders",
           "read_mot", "load_mot", "register_mot"]

TEST_FRACTION = 0.5
PERSON_CLASSES = (1, -1)  # pedestrian; no class given
UNLABELLED_PERSON_CLASSES = (2, 7)  # person on vehicle, static person


def _bad(path, problem):
    return ValueError(f"{path}: {problem}")


def _parse_row(path, lineno, line):
    parts = [p.strip() for p in line.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if not 6 <= len(values) <= 10 or not np.all(np.isfinite(values)):
        raise _bad(path, f"line {lineno}: {line!r} is not 'frame, id, x, y, w, h[, flag, class, visibility]' "
                         "(comma-separated numbers)")
    frame, pid, x, y, w, h = values[:6]
    flag, cls = (values[6:8] + [1.0, -1.0][len(values[6:8]):])
    if frame < 1 or not frame.is_integer() or not pid.is_integer():
        raise _bad(path, f"line {lineno}: frame {parts[0]} and id {parts[1]} must be integers, frames from 1")
    if w < 0 or h < 0:
        raise _bad(path, f"line {lineno}: width {parts[4]} or height {parts[5]} is negative")
    return int(frame), int(pid), [x, y, x + w, y + h], 0 if flag == 0 else 1, int(cls)


@functools.lru_cache(maxsize=16)
def _read_gt(key):
    path = key[0]
    with open(path, encoding="utf-8-sig") as f:
        lines = [(i + 1, line.strip()) for i, line in enumerate(f)]
    return tuple(_parse_row(path, i, line) for i, line in lines if line)


def read_gt(path):
    """The rows of a ``gt/gt.txt`` file: tuple of (frame, id, XYXY box [x, y, x + w, y + h], flag, class), in
    file order, every row (the rules of the module docstring apply later). ValueError naming the file and line
    for a row that is not 6 to 10 comma-separated numbers, a non-integer frame or id, a frame below 1 or a
    negative width or height."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (expected a MOTChallenge ground-truth file)")
    st = os.stat(path)
    return _read_gt((os.path.abspath(path), st.st_mtime_ns, st.st_size))


def sequence_folders(root):
    """The sequence folders of ``root``: itself when it holds ``gt/gt.txt``, else its sub-folders that do,
    sorted by name. FileNotFoundError naming ``root`` when there are none."""
    if os.path.isfile(os.path.join(root, "gt", "gt.txt")):
        return [root]
    subs = sorted(os.path.join(root, d) for d in os.listdir(root)) if os.path.isdir(root) else []
    found = [d for d in subs if os.path.isfile(os.path.join(d, "gt", "gt.txt"))]
    if not found:
        raise FileNotFoundError(f"{root}: no MOTChallenge sequence (expected gt/gt.txt in it or in its sub-folders)")
    return found


def _seqinfo(folder):
    """The [Sequence] section of seqinfo.ini as a dict (empty when there is no file)."""
    path = os.path.join(folder, "seqinfo.ini")
    if not os.path.isfile(path):
        return {}
    parser = configparser.ConfigParser()
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as e:
        raise _bad(path, f"not an INI file ({e.message.splitlines()[0]})") from None
    return dict(parser["Sequence"]) if parser.has_section("Sequence") else {}


def _sequence(root, folder):
    """One sequence: camera name, frames {number: file name relative to ``root``} (a gt frame without a file
    gets its expected name: build_dataset_dicts drops it with one warning), size (height, width) or None,
    rows."""
    info = _seqinfo(folder)
    image_dir, ext = info.get("imdir", "img1"), info.get("imext", ".jpg").lower()
    full = os.path.join(folder, image_dir)
    if not os.path.isdir(full):
        raise FileNotFoundError(f"{full}: not found (expected the sequence's frames, 000001{ext} ...)")
    rel = os.path.relpath(full, root).replace(os.sep, "/")
    prefix = "" if rel == "." else rel + "/"
    frames = {int(m.group(1)): prefix + name
              for name in os.listdir(full) if (m := re.fullmatch(r"(\d+)" + re.escape(ext), name.lower()))}
    rows = read_gt(os.path.join(folder, "gt", "gt.txt"))
    frames.update({r[0]: f"{prefix}{r[0]:06d}{ext}" for r in rows if r[0] not in frames})
    size = None
    if "imwidth" in info and "imheight" in info:
        try:
            size = (int(info["imheight"]), int(info["imwidth"]))
        except ValueError:
            raise _bad(os.path.join(folder, "seqinfo.ini"), f"imWidth {info['imwidth']!r} / imHeight "
                                                            f"{info['imheight']!r} are not integers") from None
    camera = info.get("name") or os.path.basename(os.path.abspath(folder))
    return camera, frames, size, rows


def _is_test(position, fraction):
    return math.floor((position + 1) * fraction) > math.floor(position * fraction)


@functools.lru_cache(maxsize=8)
def _read_mot(root, shared_ids, stamp):
    sequences = [_sequence(root, folder) for folder in sequence_folders(root)]
    boxes = {}  # (sequence index, frame) -> [(box, identity key or None)]
    for s, (_, frames, _, rows) in enumerate(sequences):
        for frame in frames:
            boxes[(s, frame)] = []
        for frame, pid, box, flag, cls in rows:
            if flag == 0 or cls not in PERSON_CLASSES + UNLABELLED_PERSON_CLASSES:
                continue
            labelled = cls in PERSON_CLASSES and pid >= 0
            boxes[(s, frame)].append((box, (pid if shared_ids else (s, pid)) if labelled else None))
    keys = sorted({k for people in boxes.values() for _, k in people if k is not None})
    number = {k: i for i, k in enumerate(keys)}
    test = {k for i, k in enumerate(keys) if _is_test(i, TEST_FRACTION)}
    images, annotations, ann_index = [], {}, {}
    for (s, frame), people in sorted(boxes.items()):
        camera, frames, size, _ = sequences[s]
        labelled = [k for _, k in people if k is not None]
        split = "gallery" if sum(k in test for k in labelled) * 2 >= len(labelled) else "train"
        image_id = len(images)
        img = {"id": image_id, "file_name": frames[frame], "split": split,
               "camera": camera, "frame": frame}
        if size:
            img.update(height=size[0], width=size[1])
        images.append(img)
        annotations[image_id] = []
        for box, k in people:
            own = k is not None and (k in test) == (split == "gallery")
            ann_id = len(ann_index)
            annotations[image_id].append((ann_id, box, number[k] if own else -1, 0))
            ann_index[ann_id] = image_id
    return {"images": images, "annotations": annotations, "queries": _queries(images, annotations),
            "classes": ["person"], "ann_index": ann_index, "key_by_path": True}


def _queries(images, annotations):
    """Annotation ids of the queries (module docstring): per test identity with >= 2 gallery frames, its first
    gallery box in each sequence, by identity then sequence."""
    first, frames = {}, {}
    for img in images:  # sorted by sequence, then frame
        if img["split"] != "gallery":
            continue
        for ann_id, _, identity, _ in annotations[img["id"]]:
            if identity >= 0:
                first.setdefault((identity, img["camera"]), ann_id)
                frames.setdefault(identity, set()).add(img["id"])
    return [ann_id for (identity, _), ann_id in sorted(first.items(), key=lambda kv: (kv[0][0], kv[1]))
            if len(frames[identity]) >= 2]


def read_mot(root, shared_ids=False):
    """The MOT sequences under ``root`` in the parsed form of :func:`dcinet_d2.data.generic.read_search_json`
    (``images`` with their ``split``, ``camera`` and ``frame``; ``annotations``; ``queries``; ``classes``;
    ``ann_index``), split by the rules of the module docstring; ``key_by_path``: results files key the
    gallery frames by ``file_name`` (relative to ``root``), not by base name. Cached until a gt.txt changes."""
    root = os.path.abspath(root)
    stamp = tuple((os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in
                  (os.path.join(f, "gt", "gt.txt") for f in sequence_folders(root)))
    return _read_mot(root, bool(shared_ids), stamp)


def load_mot(root, split, dataset_name=None, shared_ids=False):
    """Dataset dicts of one split ("train", "gallery" or "query") of the MOT sequences under ``root``, as
    :func:`dcinet_d2.data.generic.load_search_dataset` gives them (train: identities 0..T-1; each dict also
    has ``camera``, the sequence's name)."""
    from .generic import load_parsed

    return load_parsed(read_mot(root, shared_ids), root, root, split, dataset_name)


def register_mot(name, root, shared_ids=False):
    """Register ``f"{name}_train"``, ``f"{name}_gallery"`` and ``f"{name}_query"`` of the MOT sequences under
    ``root`` (loaded lazily). Metadata: ``evaluator_type="person_search"``, ``dataset_format="mot"``, ``root``,
    ``image_root``, ``shared_ids``, ``thing_classes=["person"]``, ``split``; gallery: ``query_set``."""
    from .records import register_splits

    register_splits(name, lambda split, dataset_name: load_mot(root, split, dataset_name, shared_ids),
                    dataset_format="mot", root=root, image_root=root, shared_ids=bool(shared_ids),
                    thing_classes=["person"])
