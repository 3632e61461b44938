"""A straightforward re-implementation of the field's person-search evaluation, written from docs/PROTOCOLS.md
the way the field's code does it: files parsed with scipy.io.loadmat, Python loops per query, per gallery
image and per detection, scikit-learn's ``average_precision_score``. Independent of dcinet_d2.evaluation
(it imports nothing from dcinet_d2); used only by the tests and scripts/benchmark_eval.py to check that
the vectorised core gives the same numbers.

Deterministic tie rule (as ``np.argsort(x)[::-1]`` behaves in the field's code on short arrays): sort
ascending with a stable sort, then reverse. Similarities are dot products in float64.
"""
import os
import re

import numpy as np
import scipy.io as sio
from sklearn.metrics import average_precision_score

TOPK = (1, 5, 10)


def _iou(a, b):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _descending(values):
    return np.argsort(np.asarray(values, dtype=np.float64), kind="stable")[::-1]


def _as_numpy(results):
    """Results dict (tensors) -> name -> (boxes [N,4] float64, scores [N] float64, feats [N,D] float32)."""
    gallery = {}
    for name, entry in results["gallery"].items():
        gallery[name] = (np.asarray(entry["boxes"], dtype=np.float64).reshape(-1, 4),
                         np.asarray(entry["scores"], dtype=np.float64).reshape(-1),
                         np.asarray(entry["embeddings"], dtype=np.float32))
    return gallery, np.asarray(results["queries"], dtype=np.float32)


# ----------------------------------------------------------------------------- search, given galleries
def search(gallery, query_feats, galleries, det_thresh=0.5, max_rank=100):
    """The field's search loop.

    Args:
        gallery (dict[str, tuple]): image name -> (boxes [N, 4] XYXY, scores [N], embeddings [N, D]).
        query_feats (np.ndarray[Q, D]).
        galleries (list[list[tuple[str, np.ndarray or None]]]): per query, its gallery in order:
            (image name, XYXY gt box of the person or None); an image may be listed twice.
    Returns:
        dict: mAP, top1, top5, top10 (percent), aps (list), first_rank (list, -1 none), cmc (percent).
    """
    name_to_det = {}
    for name, (boxes, scores, feats) in gallery.items():
        keep = [j for j in range(len(scores)) if scores[j] >= det_thresh]
        if keep:
            name_to_det[name] = (boxes[keep], feats[keep])
    aps, accs, first_ranks = [], [], []
    for i, galler in enumerate(galleries):
        q = query_feats[i].astype(np.float64)
        y_true, y_score = [], []
        count_gt, count_tp = 0, 0
        scored = set()
        for name, gt in galler:
            count_gt += gt is not None
            if name not in name_to_det or name in scored:
                continue
            scored.add(name)
            det, feat = name_to_det[name]
            sim = [float(feat[j].astype(np.float64) @ q) for j in range(len(det))]
            label = [0] * len(sim)
            if gt is not None:
                gt = [float(v) for v in gt]
                w, h = gt[2] - gt[0], gt[3] - gt[1]
                thresh = min(0.5, (w * h) / ((w + 10) * (h + 10)))
                order = _descending(sim)
                sim = [sim[j] for j in order]
                det = det[order]
                for j in range(len(det)):
                    if _iou([float(v) for v in det[j]], gt) >= thresh:
                        label[j] = 1
                        count_tp += 1
                        break
            y_true.extend(label)
            y_score.extend(sim)
        assert count_tp <= count_gt
        ap = 0.0 if count_tp == 0 else average_precision_score(y_true, y_score) * (count_tp / count_gt)
        aps.append(ap)
        order = _descending(y_score)
        ranked = [y_true[j] for j in order]
        accs.append([min(1, sum(ranked[:k])) for k in TOPK])
        first_ranks.append(ranked.index(1) if 1 in ranked else -1)
    cmc = [100.0 * np.mean([0 <= r < k for r in first_ranks]) for k in range(1, max_rank + 1)]
    out = {"mAP": 100.0 * float(np.mean(aps)), "aps": aps, "first_rank": first_ranks, "cmc": np.asarray(cmc)}
    for col, k in enumerate(TOPK):
        out[f"top{k}"] = 100.0 * float(np.mean([a[col] for a in accs]))
    return out


# ----------------------------------------------------------------------------- CUHK-SYSU
def _cuhk_name(cell):
    return str(np.asarray(cell).reshape(-1)[0])


def _cuhk_box(idlocate):
    box = np.asarray(idlocate).reshape(-1).astype(np.int32)  # uint16 in the files: signed before adding
    if box.size == 0:
        return None
    box[2:] += box[:2]
    return box


def cuhk_sysu_galleries(root, gallery_size):
    """Per query: its gallery list [(name, XYXY or None)], read from TestG{N}.mat (and pool.mat for -1)."""
    pool = [_cuhk_name(c) for c in sio.loadmat(os.path.join(root, "annotation", "pool.mat"))["pool"].reshape(-1)]
    size = 50 if gallery_size == -1 else gallery_size
    protoc = sio.loadmat(os.path.join(root, "annotation", "test", "train_test", f"TestG{size}.mat"))
    protoc = protoc[f"TestG{size}"].reshape(-1)
    galleries = []
    for item in protoc:
        query = item["Query"].reshape(-1)[0]
        query_name = _cuhk_name(query["imname"])
        entries = [(_cuhk_name(g["imname"]), _cuhk_box(g["idlocate"])) for g in item["Gallery"].reshape(-1)]
        if gallery_size == -1:
            listed = {name for name, _ in entries}
            entries += [(name, None) for name in pool if name != query_name and name not in listed]
        galleries.append(entries)
    return galleries


def cuhk_sysu(root, results, gallery_size=100, det_thresh=0.5):
    gallery, queries = _as_numpy(results)
    return search(gallery, queries, cuhk_sysu_galleries(root, gallery_size), det_thresh)


def cuhk_sysu_detection_gt(root, labeled=True):
    """Test images' boxes from Images.mat: name -> (XYXY [n, 4], labelled [n] bool; all False unless
    ``labeled``, which parses the smallest TestG file)."""
    pool = [_cuhk_name(c) for c in sio.loadmat(os.path.join(root, "annotation", "pool.mat"))["pool"].reshape(-1)]
    labelled = set()
    folder = os.path.join(root, "annotation", "test", "train_test")
    smallest = min(int(m.group(1)) for m in (re.fullmatch(r"TestG(\d+)\.mat", f) for f in os.listdir(folder)) if m)
    protoc = sio.loadmat(os.path.join(folder, f"TestG{smallest}.mat"))[f"TestG{smallest}"] if labeled else []
    for item in np.reshape(protoc, -1):
        query = item["Query"].reshape(-1)[0]
        labelled.add((_cuhk_name(query["imname"]), tuple(_cuhk_box(query["idlocate"]).tolist())))
        for g in item["Gallery"].reshape(-1):
            box = _cuhk_box(g["idlocate"])
            if box is not None:
                labelled.add((_cuhk_name(g["imname"]), tuple(box.tolist())))
    images = {}
    for img in sio.loadmat(os.path.join(root, "annotation", "Images.mat"))["Img"].reshape(-1):
        boxes = []
        for b in img["box"].reshape(-1):
            x, y, w, h = np.asarray(b["idlocate"]).reshape(-1).astype(np.float64)
            if w > 0 and h > 0:
                boxes.append([x, y, x + w, y + h])
        images[_cuhk_name(img["imname"])] = np.asarray(boxes).reshape(-1, 4)
    return {n: (images[n], np.array([(n, tuple(b)) in labelled for b in images[n]], dtype=bool)) for n in pool}


# ----------------------------------------------------------------------------- PRW
def _camera(name):
    return int(re.match(r"c(\d)", name).group(1))


def prw_annotations(root):
    """Test frames in order: name -> (XYXY [n, 4], raw ids [n])."""
    frames = sio.loadmat(os.path.join(root, "frame_test.mat"))["img_index_test"].reshape(-1)
    out = {}
    for cell in frames:
        name = str(np.asarray(cell).reshape(-1)[0]) + ".jpg"
        mat = sio.loadmat(os.path.join(root, "annotations", name + ".mat"))
        key = next(k for k in ("box_new", "anno_file", "anno_previous") if k in mat)
        rows = np.asarray(mat[key], dtype=np.float64).reshape(-1, 5)
        boxes = rows[:, 1:].copy()
        boxes[:, :2] = np.maximum(boxes[:, :2], 0)
        boxes[:, 2:] += boxes[:, :2]
        out[name] = (boxes, rows[:, 0].astype(np.int64))
    return out


def prw_galleries(root, cross_camera=False):
    annos = prw_annotations(root)
    galleries = []
    with open(os.path.join(root, "query_info.txt")) as f:
        lines = [line.split() for line in f if line.strip()]
    for parts in lines:
        pid, query_name = int(parts[0]), parts[5] + ".jpg"
        entries = []
        for name, (boxes, ids) in annos.items():
            if name == query_name or (cross_camera and _camera(name) == _camera(query_name)):
                continue
            match = boxes[ids == pid]
            entries.append((name, match[0] if len(match) else None))
        galleries.append(entries)
    return galleries


def prw(root, results, cross_camera=False, det_thresh=0.5):
    gallery, queries = _as_numpy(results)
    return search(gallery, queries, prw_galleries(root, cross_camera), det_thresh)


def prw_detection_gt(root):
    return {n: (boxes, ids >= 0) for n, (boxes, ids) in prw_annotations(root).items()}


# ----------------------------------------------------------------------------- detection
def detection(ground_truth, results, det_thresh=0.5, iou_thresh=0.5, labeled_only=False):
    """The field's detection loop.

    Args:
        ground_truth (dict[str, tuple]): gallery image -> (XYXY boxes [n, 4], labelled [n] bool).
        results (dict): results dict (images absent from it have no detection).
    Returns:
        dict: ap, recall (percent).
    """
    gallery, _ = _as_numpy(results)
    y_true, y_score = [], []
    count_gt, count_tp = 0, 0
    for name, (gt_boxes, labelled) in ground_truth.items():
        if labeled_only:
            gt_boxes = gt_boxes[labelled]
            if len(gt_boxes) == 0:
                continue
        boxes, scores, _ = gallery.get(name, (np.zeros((0, 4)), np.zeros(0), None))
        keep = [j for j in range(len(scores)) if scores[j] >= det_thresh]
        det, det_scores = boxes[keep], scores[keep]
        if len(det) == 0:
            count_gt += len(gt_boxes)
            continue
        ious = np.zeros((len(gt_boxes), len(det)), dtype=np.float32)
        for i in range(len(gt_boxes)):
            for j in range(len(det)):
                ious[i, j] = _iou(gt_boxes[i], det[j])
        tfmat = ious >= iou_thresh
        for j in range(len(det)):
            if len(gt_boxes):
                best = np.argmax(ious[:, j])
                for i in range(len(gt_boxes)):
                    if i != best:
                        tfmat[i, j] = False
        for i in range(len(gt_boxes)):
            best = np.argmax(ious[i, :])
            for j in range(len(det)):
                if j != best:
                    tfmat[i, j] = False
        for j in range(len(det)):
            y_score.append(det_scores[j])
            y_true.append(bool(tfmat[:, j].any()))
        count_tp += int(tfmat.sum())
        count_gt += len(gt_boxes)
    recall = count_tp / count_gt if count_gt else 0.0
    ap = average_precision_score(y_true, y_score) * recall if count_tp else 0.0
    return {"ap": 100.0 * ap, "recall": 100.0 * recall}
