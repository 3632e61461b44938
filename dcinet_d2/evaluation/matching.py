"""The array kernels of the person-search protocols: the field's exact box and ranking formulas, vectorised,
and the run-length (CSR) index helpers the evaluations share (search_metrics.py, detection_metrics.py, cbgm.py).
"""
import numpy as np

__all__ = ["paired_iou", "iou_threshold", "average_precision", "cmc_curve", "check_finite", "csr_offsets",
           "ranges", "group_first"]


def paired_iou(a, b):
    """IoU of ``a[i]`` with ``b[i]`` on continuous coordinates (no +1), as the field computes it.

    Args:
        a, b (np.ndarray[N, 4]): XYXY boxes, absolute pixels.
    Returns:
        np.ndarray[N] float64; 0 where the union is not positive (degenerate boxes).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    iw = np.maximum(0.0, np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]))
    ih = np.maximum(0.0, np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]))
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou_threshold(gt_boxes):
    """The field's IoU threshold of a gt box: ``min(0.5, w*h / ((w+10)*(h+10)))`` (small people are lenient).

    Args:
        gt_boxes (np.ndarray[N, 4]): XYXY, absolute pixels.
    Returns:
        np.ndarray[N] float64.
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64)
    w = gt_boxes[:, 2] - gt_boxes[:, 0]
    h = gt_boxes[:, 3] - gt_boxes[:, 1]
    return np.minimum(0.5, w * h / ((w + 10.0) * (h + 10.0)))


def average_precision(labels, scores):
    """scikit-learn's ``average_precision_score`` (binary, tied scores grouped), vectorised.

    AP = sum over positives p of ``TP(score >= s_p) / N(score >= s_p)``, divided by the number of
    positives: the step integral of the precision-recall curve over distinct thresholds.

    Args:
        labels (np.ndarray[N] bool): true positives.
        scores (np.ndarray[N] float).
    Returns:
        float in [0, 1]; 0 when there is no positive.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    pos = np.sort(scores[labels])
    if len(pos) == 0:
        return 0.0
    n_ge = len(scores) - np.searchsorted(np.sort(scores), pos, side="left")
    tp_ge = len(pos) - np.searchsorted(pos, pos, side="left")
    return float(np.sum(tp_ge / n_ge) / len(pos))


def cmc_curve(first_tp_rank, max_rank=100):
    """Cumulative match characteristic: percent of queries whose first true positive is within the top k.

    Args:
        first_tp_rank (np.ndarray[Q] int): 0-based rank of each query's best true positive, -1 if none.
        max_rank (int): curve length.
    Returns:
        np.ndarray[max_rank] float64: element k-1 is top-k, in percent.
    """
    ranks = np.asarray(first_tp_rank)
    if len(ranks) == 0:
        return np.zeros(max_rank)
    found = ranks[ranks >= 0]
    hist = np.bincount(np.minimum(found, max_rank), minlength=max_rank + 1)[:max_rank]
    return 100.0 * np.cumsum(hist) / len(ranks)


def check_finite(name, array):
    """ValueError naming ``name`` and the first bad index when ``array`` holds NaN or infinite values."""
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(np.asarray(array)))[0].tolist()
        raise ValueError(f"{name} contain NaN or infinite values (first at index {bad})")


def csr_offsets(lengths):
    """Offsets [len(lengths) + 1] int64 of consecutive runs of the given lengths (CSR row pointers)."""
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def ranges(starts, lengths):
    """Concatenation of ``arange(starts[k], starts[k] + lengths[k])`` over k: np.ndarray int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = csr_offsets(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets[:-1], lengths) + np.arange(offsets[-1])


def group_first(keys_sorted):
    """Boolean mask of the first element of each run of equal keys."""
    first = np.ones(len(keys_sorted), dtype=bool)
    first[1:] = keys_sorted[1:] != keys_sorted[:-1]
    return first
