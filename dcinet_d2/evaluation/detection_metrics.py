"""The field's detection numbers (AP x recall, recall) of a gallery's detections, vectorised."""
import numpy as np

from .matching import average_precision, check_finite, csr_offsets, group_first, paired_iou
from .protocol import DetectionMetrics

__all__ = ["evaluate_detection"]


def _segment_argmax(segment, values, tiebreak):
    """Mask of the element with the largest value of each segment (the smallest ``tiebreak`` on ties)."""
    order = np.lexsort((tiebreak, -values, segment))
    best = np.zeros(len(segment), dtype=bool)
    best[order[group_first(segment[order])]] = True
    return best


def evaluate_detection(gallery, gt_boxes, gt_image_index, *, det_thresh=0.5, iou_thresh=0.5, gt_labeled=None):
    """The field's detection recall and AP over the gallery.

    Detections with ``score >= det_thresh`` and ground truths are matched per image: a pair counts if its
    IoU (rounded to float32, as the field stores it) is >= ``iou_thresh``, is the largest IoU of the
    detection over the image's ground truths and the largest IoU of the ground truth over the image's
    detections (first index on ties). recall = matched / ground truths; AP = average precision of the
    detections (scored by confidence) times recall.

    Args:
        gallery (GalleryDetections): detections (embeddings unused).
        gt_boxes (np.ndarray[B, 4]): XYXY ground-truth boxes of the gallery images.
        gt_image_index (np.ndarray[B] int): their images.
        det_thresh (float), iou_thresh (float).
        gt_labeled (np.ndarray[B] bool or None): if given, labelled people only: unlabelled ground truths
            are dropped and so are images without a labelled one, detections included (the field's
            ``labeled_only``).
    Returns:
        DetectionMetrics (percent).
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    gt_image = np.asarray(gt_image_index, dtype=np.int64).reshape(-1)
    if len(gt_image) != len(gt_boxes):
        raise ValueError(f"detection ground truth: {len(gt_boxes)} boxes but {len(gt_image)} image indices")
    if len(gt_image) and (gt_image.min() < 0 or gt_image.max() >= gallery.num_images):
        raise ValueError(f"detection ground truth: image index outside 0..{gallery.num_images - 1}")
    check_finite("detection ground-truth boxes", gt_boxes)
    dets = gallery.above(det_thresh)
    det_boxes, det_scores, det_image = dets.boxes, dets.scores, dets.image_index
    if gt_labeled is not None:
        labeled = np.asarray(gt_labeled, dtype=bool).reshape(-1)
        gt_boxes, gt_image = gt_boxes[labeled], gt_image[labeled]
        keep = np.bincount(gt_image, minlength=gallery.num_images)[det_image] > 0
        det_boxes, det_scores, det_image = det_boxes[keep], det_scores[keep], det_image[keep]
    order = np.argsort(gt_image, kind="stable")
    gt_boxes, gt_image = gt_boxes[order], gt_image[order]

    n_img = gallery.num_images
    g_count = np.bincount(gt_image, minlength=n_img).astype(np.int64)
    d_count = np.bincount(det_image, minlength=n_img).astype(np.int64)
    g_start, d_start = csr_offsets(g_count)[:-1], csr_offsets(d_count)[:-1]
    per_image = g_count * d_count
    pair_image = np.repeat(np.arange(n_img), per_image)
    local = np.arange(len(pair_image)) - csr_offsets(per_image)[:-1][pair_image]
    gi = g_start[pair_image] + local // np.maximum(d_count[pair_image], 1)
    dj = d_start[pair_image] + local % np.maximum(d_count[pair_image], 1)
    iou = paired_iou(det_boxes[dj], gt_boxes[gi]).astype(np.float32)
    matched = (iou >= iou_thresh) & _segment_argmax(dj, iou, gi) & _segment_argmax(gi, iou, dj)

    det_true = np.zeros(len(det_scores), dtype=bool)
    det_true[dj[matched]] = True
    count_tp, count_gt = int(matched.sum()), len(gt_boxes)
    recall = count_tp / count_gt if count_gt else 0.0
    ap = average_precision(det_true, det_scores) * recall if count_tp else 0.0
    return DetectionMetrics(ap=100.0 * ap, recall=100.0 * recall, count_tp=count_tp, count_gt=count_gt,
                            num_detections=len(det_scores))
