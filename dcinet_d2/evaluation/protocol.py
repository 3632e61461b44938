"""The vectorised person-search evaluation core, shared by every dataset (docs/PROTOCOLS.md).

Every dataset module turns its protocol into a :class:`SearchProtocol` (per query: an ordered list of
gallery images and the person's ground-truth box in some of them) and the model's outputs into a
:class:`GalleryDetections`; :func:`evaluate_search` and :func:`evaluate_detection` then compute the field's
numbers without a Python loop per detection.

The field's rules, as implemented here:

- detections with ``score < det_thresh`` are dropped first;
- similarity = dot product of query and detection embeddings, computed in float64 (products of float32
  values are exact there, so results hardly depend on how sums are blocked; the field's float32 dot
  products can order two detections differently only when their similarities differ by less than
  float32 rounding, about 1e-7);
- in a gallery image holding the person (gt box of width w, height h), the detection of highest similarity
  with ``IoU >= min(0.5, w*h / ((w+10)*(h+10)))`` is the single true positive of that image;
- per-query AP = scikit-learn's ``average_precision_score`` over all the query's gallery detections
  (tied scores grouped) times the recall ``count_tp / count_gt``; 0 when no true positive;
- top-k = 1 if one of the k most similar detections is a true positive; mAP and top-k are means over the
  queries, in percent.

Ties in similarity (identical embeddings) are broken as ``np.argsort(s, kind="stable")[::-1]`` breaks them
in the field's code (the later detection first): inside an image holding the person, among its detections
in descending similarity; over a query's whole gallery, among the detections in the order the field lists
them (gallery images in protocol order, each image's detections in descending similarity if it holds the
person, in detection order otherwise). AP does not depend on this order (ties are grouped), top-k does.
"""
import dataclasses
import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "GalleryDetections",
    "SearchProtocol",
    "SearchMetrics",
    "DetectionMetrics",
    "evaluate_search",
    "evaluate_detection",
    "average_precision",
    "paired_iou",
    "iou_threshold",
    "cmc_curve",
]

TOPK = (1, 5, 10)
# Pairs (query, gallery detection) scored at once: bounds memory (about 100 bytes a pair).
PAIRS_PER_CHUNK = 2_000_000
# Pair by pair, a chunk's similarities come from one matrix product over the detections it touches when
# that product is at most this many times larger than the number of pairs; otherwise from one small
# product per gallery image (with the queries listing it).
DENSE_FACTOR = 8
# Galleries holding at least this fraction of all detections on average are scored on the full
# similarity matrix (PRW, the CUHK-SYSU full set); smaller ones pair by pair.
DENSE_FRACTION = 0.3


# ----------------------------------------------------------------------------- small exact helpers
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


def _check_finite(name, array):
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(np.asarray(array)))[0].tolist()
        raise ValueError(f"{name} contain NaN or infinite values (first at index {bad})")


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class GalleryDetections:
    """Detections of all gallery images, concatenated.

    Attributes:
        boxes (np.ndarray[G, 4] float64): XYXY, absolute pixels.
        scores (np.ndarray[G] float64): detection confidences.
        embeddings (np.ndarray[G, D] float32): re-id embeddings (L2-normalised by the model).
        image_index (np.ndarray[G] int64): gallery image of each detection, in 0..num_images-1.
        num_images (int): gallery images (images without detection included).
    """

    boxes: np.ndarray
    scores: np.ndarray
    embeddings: np.ndarray
    image_index: np.ndarray
    num_images: int

    def __post_init__(self):
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        emb = np.asarray(self.embeddings, dtype=np.float32)
        index = np.asarray(self.image_index, dtype=np.int64).reshape(-1)
        if emb.ndim != 2 or not len(boxes) == len(scores) == len(emb) == len(index):
            raise ValueError(f"gallery detections: {len(boxes)} boxes, {len(scores)} scores, embeddings of "
                             f"shape {emb.shape}, {len(index)} image indices: expected [G, 4], [G], [G, D], [G]")
        if len(index) and (index.min() < 0 or index.max() >= self.num_images):
            raise ValueError(f"gallery detections: image index outside 0..{self.num_images - 1}")
        _check_finite("gallery detection boxes", boxes)
        _check_finite("gallery detection scores", scores)
        _check_finite("gallery detection embeddings", emb)
        if len(index) > 1 and np.any(index[1:] < index[:-1]):
            order = np.argsort(index, kind="stable")  # group by image, keeping each image's detection order
            boxes, scores, emb, index = boxes[order], scores[order], emb[order], index[order]
        for name, value in (("boxes", boxes), ("scores", scores), ("embeddings", emb), ("image_index", index)):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "num_images", int(self.num_images))

    @classmethod
    def from_lists(cls, boxes, scores, embeddings, dim):
        """From per-image arrays: image i has ``boxes[i]`` [n_i, 4], ``scores[i]`` [n_i], ``embeddings[i]`` [n_i, D]."""
        if not len(boxes) == len(scores) == len(embeddings):
            raise ValueError(f"gallery: {len(boxes)} box arrays, {len(scores)} score arrays and "
                             f"{len(embeddings)} embedding arrays: expected one of each per image")
        counts = [len(np.asarray(s).reshape(-1)) for s in scores]
        cat = lambda arrays, shape, dt: np.concatenate(  # noqa: E731
            [np.zeros((0,) + shape[1:], dt)] + [np.asarray(a, dtype=dt).reshape(shape) for a in arrays])
        return cls(boxes=cat(boxes, (-1, 4), np.float64), scores=cat(scores, (-1,), np.float64),
                   embeddings=cat(embeddings, (-1, dim), np.float32),
                   image_index=np.repeat(np.arange(len(counts)), counts), num_images=len(counts))

    @property
    def dim(self):
        return self.embeddings.shape[1]

    def above(self, det_thresh):
        """The detections with ``score >= det_thresh``."""
        keep = self.scores >= det_thresh
        if keep.all():
            return self
        return dataclasses.replace(self, boxes=self.boxes[keep], scores=self.scores[keep],
                                   embeddings=self.embeddings[keep], image_index=self.image_index[keep])

    def image_slices(self):
        """(start, count) of each image's detections: two np.ndarray[num_images] int64."""
        counts = np.bincount(self.image_index, minlength=self.num_images).astype(np.int64)
        return np.cumsum(counts) - counts, counts


def _csr_offsets(lengths):
    return np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)


def _ranges(starts, lengths):
    """Concatenation of ``arange(starts[k], starts[k] + lengths[k])`` over k: np.ndarray int64."""
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = _csr_offsets(lengths)
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets[:-1], lengths) + np.arange(offsets[-1])


@dataclass(frozen=True)
class SearchProtocol:
    """The gallery of every query and where the query's person is in it.

    Query q's gallery, in order: ``gallery_images[gallery_offsets[q]:gallery_offsets[q+1]]`` (distinct
    images), then, if ``rest``, every other image 0..num_images-1 in index order except the query's own
    (``exclude_images[q]``, -1: none) and, when ``image_groups`` is given, except the images of the query's
    group (``exclude_groups[q]``, -1: none; the PRW cross-camera setting). Its person's gt boxes:
    ``gt_boxes[gt_offsets[q]:gt_offsets[q+1]]`` in images ``gt_images[...]`` (one box per image; an image
    of the gallery without a box does not hold the person).

    Attributes:
        num_images (int): gallery images.
        gallery_offsets (np.ndarray[Q+1] int64), gallery_images (np.ndarray[E] int64).
        gt_offsets (np.ndarray[Q+1] int64), gt_images (np.ndarray[T] int64),
        gt_boxes (np.ndarray[T, 4] float64): XYXY, absolute pixels.
        count_gt (np.ndarray[Q] int64): the recall denominator (CUHK-SYSU counts a duplicated entry twice).
        rest (bool), exclude_images (np.ndarray[Q] int64 or None), image_groups (np.ndarray[I] int64 or
        None), exclude_groups (np.ndarray[Q] int64 or None).
    """

    num_images: int
    gallery_offsets: np.ndarray
    gallery_images: np.ndarray
    gt_offsets: np.ndarray
    gt_images: np.ndarray
    gt_boxes: np.ndarray
    count_gt: np.ndarray
    rest: bool = False
    exclude_images: np.ndarray = None
    image_groups: np.ndarray = None
    exclude_groups: np.ndarray = None

    def __post_init__(self):
        cast = lambda v, dt=np.int64: None if v is None else np.asarray(v, dtype=dt)  # noqa: E731
        for name in ("gallery_offsets", "gallery_images", "gt_offsets", "gt_images", "count_gt",
                     "exclude_images", "image_groups", "exclude_groups"):
            object.__setattr__(self, name, cast(getattr(self, name)))
        object.__setattr__(self, "gt_boxes", np.asarray(self.gt_boxes, dtype=np.float64).reshape(-1, 4))
        object.__setattr__(self, "num_images", int(self.num_images))
        self._validate()
        q_of_gt = np.repeat(np.arange(self.num_queries), np.diff(self.gt_offsets))
        keys = q_of_gt * self.num_images + self.gt_images
        order = np.argsort(keys, kind="stable")
        object.__setattr__(self, "_gt_keys", keys[order])
        object.__setattr__(self, "_gt_order", order)

    def _validate(self):
        q, num = self.num_queries, self.num_images
        for name in ("gallery", "gt"):
            off, img = getattr(self, f"{name}_offsets"), getattr(self, f"{name}_images")
            if off.ndim != 1 or len(off) != q + 1 or off[0] != 0 or off[-1] != len(img) or \
                    np.any(np.diff(off) < 0):
                raise ValueError(f"search protocol: {name}_offsets is not a CSR offset array of {q} queries")
            if len(img) and (img.min() < 0 or img.max() >= num):
                raise ValueError(f"search protocol: {name}_images outside 0..{num - 1}")
            keys = np.sort(np.repeat(np.arange(q), np.diff(off)) * num + img)
            if np.any(keys[1:] == keys[:-1]):
                raise ValueError(f"search protocol: an image is listed twice in one query's {name} list")
        if len(self.gt_boxes) != len(self.gt_images):
            raise ValueError("search protocol: gt_boxes and gt_images differ in length")
        _check_finite("search protocol gt boxes", self.gt_boxes)
        if self.count_gt.shape != (q,) or np.any(self.count_gt < 0):
            raise ValueError(f"search protocol: count_gt must be {q} non-negative counts")
        for name, size in (("exclude_images", q), ("exclude_groups", q), ("image_groups", num)):
            value = getattr(self, name)
            if value is not None and value.shape != (size,):
                raise ValueError(f"search protocol: {name} must have shape ({size},), got {value.shape}")
        ex = self.exclude_images
        if ex is not None and len(ex) and (ex.min() < -1 or ex.max() >= num):
            raise ValueError(f"search protocol: exclude_images outside -1..{num - 1}")
        if (self.image_groups is None) != (self.exclude_groups is None):
            raise ValueError("search protocol: image_groups and exclude_groups go together")

    @property
    def num_queries(self):
        return len(self.gallery_offsets) - 1

    # -------------------------------------------------------------------------- constructors
    @classmethod
    def from_entries(cls, entry_query, entry_image, entry_boxes, num_queries, num_images, *, rest=False,
                     exclude_images=None):
        """From explicit gallery entries, as the CUHK-SYSU protocol files list them (vectorised).

        An image listed twice in a query's gallery counts twice in ``count_gt`` (if it holds the person) but is
        scored once, with its first entry's box.

        Args:
            entry_query (np.ndarray[E] int): query of each entry, non-decreasing (each gallery in order).
            entry_image (np.ndarray[E] int): gallery image of each entry.
            entry_boxes (np.ndarray[E, 4] float): XYXY box of the person; a row of NaN (or of -1) where absent.
            num_queries, num_images (int).
            rest, exclude_images: see the class (the CUHK-SYSU full set).
        """
        entry_query = np.asarray(entry_query, dtype=np.int64).reshape(-1)
        entry_image = np.asarray(entry_image, dtype=np.int64).reshape(-1)
        entry_boxes = np.asarray(entry_boxes, dtype=np.float64).reshape(-1, 4)
        if not len(entry_query) == len(entry_image) == len(entry_boxes):
            raise ValueError(f"gallery entries: {len(entry_query)} queries, {len(entry_image)} images, "
                             f"{len(entry_boxes)} boxes: expected one of each per entry")
        if np.any(np.diff(entry_query) < 0) or (len(entry_query) and (entry_query.min() < 0 or
                                                                     entry_query.max() >= num_queries)):
            raise ValueError(f"gallery entries: entry_query must be non-decreasing in 0..{num_queries - 1}")
        holds = ~(np.isnan(entry_boxes).any(axis=1) | (entry_boxes == -1).all(axis=1))
        order = np.argsort(entry_query * num_images + entry_image, kind="stable")
        first = np.zeros(len(entry_query), dtype=bool)
        first[order] = _group_first((entry_query * num_images + entry_image)[order])  # first entry of an image
        gt = first & holds
        return cls(num_images=num_images,
                   gallery_offsets=_csr_offsets(np.bincount(entry_query[first], minlength=num_queries)),
                   gallery_images=entry_image[first],
                   gt_offsets=_csr_offsets(np.bincount(entry_query[gt], minlength=num_queries)),
                   gt_images=entry_image[gt], gt_boxes=entry_boxes[gt],
                   count_gt=np.bincount(entry_query[holds], minlength=num_queries), rest=rest,
                   exclude_images=exclude_images)

    @classmethod
    def from_galleries(cls, galleries, num_images, *, rest=False, exclude_images=None):
        """:meth:`from_entries` given per query a list of ``(image index, XYXY box or None if absent)``."""
        lengths = [len(g) for g in galleries]
        absent = np.full(4, np.nan)
        entries = [e for g in galleries for e in g]
        boxes = np.array([absent if box is None else np.asarray(box, dtype=np.float64).reshape(4)
                          for _, box in entries]).reshape(-1, 4)
        return cls.from_entries(np.repeat(np.arange(len(galleries)), lengths), [i for i, _ in entries], boxes,
                                len(galleries), num_images, rest=rest, exclude_images=exclude_images)

    @classmethod
    def every_other_image(cls, num_images, query_images, ground_truth, *, image_groups=None,
                          query_groups=None):
        """Each query searches every gallery image but its own (PRW, generic galleries).

        Args:
            num_images (int): gallery images.
            query_images (np.ndarray[Q] int): the gallery index of each query's image, -1 if not a gallery image.
            ground_truth (list[list[tuple[int, np.ndarray]]]): per query, ``(image index, XYXY box)`` of its
                person in gallery images; an image listed twice keeps its first box.
            image_groups (np.ndarray[I] int or None): a group (PRW: camera) per image; with ``query_groups``
                (np.ndarray[Q] int), the images of the query's group are left out (cross-camera).
        Returns:
            SearchProtocol whose ``count_gt`` counts the distinct gallery images holding the person.
        """
        query_images = np.asarray(query_images, dtype=np.int64).reshape(-1)
        n_q = len(query_images)
        if len(ground_truth) != n_q:
            raise ValueError(f"every_other_image: {n_q} query images but {len(ground_truth)} ground-truth lists")
        groups = None if image_groups is None else np.asarray(image_groups, dtype=np.int64)
        q_groups = None if query_groups is None else np.asarray(query_groups, dtype=np.int64)
        gt_q, gt_images, gt_boxes = [], [], []
        for q, entries in enumerate(ground_truth):
            seen = set()
            for image, box in entries:
                if image not in seen:
                    seen.add(image)
                    gt_q.append(q)
                    gt_images.append(image)
                    gt_boxes.append(np.asarray(box, dtype=np.float64).reshape(4))
        gt_q = np.asarray(gt_q, dtype=np.int64)
        gt_images_arr = np.asarray(gt_images, dtype=np.int64)
        in_gallery = gt_images_arr != query_images[gt_q]
        if groups is not None and q_groups is not None:
            in_gallery &= groups[gt_images_arr] != q_groups[gt_q]
        return cls(num_images=num_images, gallery_offsets=np.zeros(n_q + 1, dtype=np.int64),
                   gallery_images=np.zeros(0, dtype=np.int64),
                   gt_offsets=_csr_offsets(np.bincount(gt_q, minlength=n_q)), gt_images=gt_images_arr,
                   gt_boxes=np.reshape(gt_boxes, (-1, 4)),
                   count_gt=np.bincount(gt_q[in_gallery], minlength=n_q), rest=True,
                   exclude_images=query_images, image_groups=groups if q_groups is not None else None,
                   exclude_groups=q_groups if groups is not None else None)

    # -------------------------------------------------------------------------- chunks for the core
    def pair_estimate(self, det_counts):
        """Upper bound of the (query, detection) pairs of each query: np.ndarray[Q] int64."""
        cum = _csr_offsets(det_counts[self.gallery_images])
        est = cum[self.gallery_offsets[1:]] - cum[self.gallery_offsets[:-1]]
        return est + (int(det_counts.sum()) if self.rest else 0)

    def _rest_mask(self, q0, q1, explicit_query, explicit_image):
        """[Qc, I] bool: the images of the "rest" part of each query's gallery."""
        mask = np.ones((q1 - q0, self.num_images), dtype=bool)
        mask[explicit_query - q0, explicit_image] = False
        if self.exclude_images is not None:
            ex = self.exclude_images[q0:q1]
            mask[np.nonzero(ex >= 0)[0], ex[ex >= 0]] = False
        if self.image_groups is not None:
            ex = self.exclude_groups[q0:q1]
            mask &= (self.image_groups[None, :] != ex[:, None]) | (ex[:, None] < 0)
        return mask

    def _explicit(self, q0, q1):
        s, e = self.gallery_offsets[q0], self.gallery_offsets[q1]
        return np.repeat(np.arange(q0, q1), np.diff(self.gallery_offsets[q0:q1 + 1])), self.gallery_images[s:e]

    def image_mask(self, q0, q1):
        """Gallery membership of queries q0..q1-1: np.ndarray[q1 - q0, num_images] bool."""
        queries, images = self._explicit(q0, q1)
        mask = self._rest_mask(q0, q1, queries, images) if self.rest else \
            np.zeros((q1 - q0, self.num_images), dtype=bool)
        mask[queries - q0, images] = True
        return mask

    def ground_truth(self, q0, q1):
        """The person's boxes for queries q0..q1-1: (query (global), image, XYXY box [T, 4]) arrays."""
        s, e = self.gt_offsets[q0], self.gt_offsets[q1]
        queries = np.repeat(np.arange(q0, q1), np.diff(self.gt_offsets[q0:q1 + 1]))
        return queries, self.gt_images[s:e], self.gt_boxes[s:e]

    def entries(self, q0, q1):
        """Gallery entries of queries q0..q1-1, in each query's gallery order.

        Returns:
            (query (np.ndarray[E] int64, global index), image (np.ndarray[E] int64),
             gt_box (np.ndarray[E, 4] float64, NaN where the image does not hold the person)).
        """
        queries, images = self._explicit(q0, q1)
        if self.rest:
            rq, rimg = np.nonzero(self._rest_mask(q0, q1, queries, images))
            queries = np.concatenate([queries, rq + q0])
            images = np.concatenate([images, rimg])
            order = np.argsort(queries, kind="stable")  # explicit entries stay before the rest
            queries, images = queries[order], images[order]
        gt_box = np.full((len(images), 4), np.nan)
        if len(self._gt_keys):
            keys = queries * self.num_images + images
            pos = np.minimum(np.searchsorted(self._gt_keys, keys), len(self._gt_keys) - 1)
            hit = self._gt_keys[pos] == keys
            gt_box[hit] = self.gt_boxes[self._gt_order[pos[hit]]]
        return queries, images, gt_box


# ----------------------------------------------------------------------------- outputs
@dataclass
class SearchMetrics:
    """Person-search results of one protocol.

    Attributes:
        mAP (float): percent. topk (dict[int, float]): top-1/5/10, percent.
        ap (np.ndarray[Q] float64): per-query AP x recall, in [0, 1].
        first_tp_rank (np.ndarray[Q] int64): 0-based rank of the best true positive, -1 if none.
        count_tp, count_gt (np.ndarray[Q] int64): true positives found / the recall denominator.
        cmc (np.ndarray[R] float64): percent of queries with a true positive in the top k = 1..R.
    """

    mAP: float
    topk: dict
    ap: np.ndarray
    first_tp_rank: np.ndarray
    count_tp: np.ndarray
    count_gt: np.ndarray
    cmc: np.ndarray

    def summary(self):
        """JSON-able {"mAP", "top1", "top5", "top10"} in percent."""
        return {"mAP": float(self.mAP), **{f"top{k}": float(v) for k, v in self.topk.items()}}


@dataclass
class DetectionMetrics:
    """The field's detection numbers: ``ap`` (average precision x recall) and ``recall``, percent."""

    ap: float
    recall: float
    count_tp: int
    count_gt: int
    num_detections: int

    def summary(self):
        return {"det_ap": float(self.ap), "det_recall": float(self.recall)}


# ----------------------------------------------------------------------------- search
def _chunks(estimate, budget):
    """[q0, q1) ranges whose estimated pairs stay within ``budget`` (a single query may exceed it)."""
    bounds, total, start = [], 0, 0
    for q, n in enumerate(estimate.tolist()):
        if total and total + n > budget:
            bounds.append((start, q))
            start, total = q, 0
        total += n
    bounds.append((start, len(estimate)))
    return bounds


def _pair_similarities(query_emb, gallery_emb, entry_query, entry_image, entry_first_pair, starts, counts,
                       n_pairs):
    """Similarity of every (query, detection) pair of a chunk, in float64: np.ndarray[P].

    Pairs are laid out entry by entry (entry e: its image's detections from ``entry_first_pair[e]``). When
    the chunk's queries see most of the detections it touches, one matrix product covers them all;
    otherwise each touched image multiplies its detections with the queries that list it (one small
    product per image: no per-pair gathering of embeddings).

    Args:
        query_emb (np.ndarray[Qc, D] float64): the chunk's queries; gallery_emb (np.ndarray[G, D] float64).
        entry_query (np.ndarray[E] int64): query of each entry, 0..Qc-1; entry_image (np.ndarray[E] int64).
        entry_first_pair (np.ndarray[E] int64); starts, counts (np.ndarray[I] int64): detections per image.
    """
    out = np.empty(n_pairs)
    if n_pairs == 0:
        return out
    order = np.argsort(entry_image, kind="stable")
    images, first = np.unique(entry_image[order], return_index=True)
    if len(query_emb) * int(counts[images].sum()) <= DENSE_FACTOR * n_pairs:
        column = np.full(len(counts), -1, dtype=np.int64)
        column[images] = _csr_offsets(counts[images])[:-1]  # block column of each image's first detection
        block = query_emb @ gallery_emb[_ranges(starts[images], counts[images])].T
        pair_entry = np.repeat(np.arange(len(entry_image)), counts[entry_image])
        within = np.arange(n_pairs) - entry_first_pair[pair_entry]
        return block[entry_query[pair_entry], column[entry_image[pair_entry]] + within]
    bounds = np.append(first, len(order))
    for k, image in enumerate(images.tolist()):
        n = counts[image]
        if n == 0:
            continue
        entries = order[bounds[k]:bounds[k + 1]]
        block = query_emb[entry_query[entries]] @ gallery_emb[starts[image]:starts[image] + n].T
        out[entry_first_pair[entries][:, None] + np.arange(n)] = block
    return out


def _count_at_least(sorted_rows, rows, values, strict):
    """Per i: how many entries of ``sorted_rows[rows[i]]`` (ascending) are >= values[i] (> if strict).

    One binary search for all i at once (about log2(width) vectorised steps).
    """
    width = sorted_rows.shape[1]
    lo = np.zeros(len(rows), dtype=np.int64)
    hi = np.full(len(rows), width, dtype=np.int64)
    active = lo < hi
    while np.any(active):
        mid = (lo + hi) // 2
        v = sorted_rows[rows, np.minimum(mid, width - 1)]
        right = (v <= values) if strict else (v < values)
        lo = np.where(active & right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
        active = lo < hi
    return width - lo


def _group_first(keys_sorted):
    """Boolean mask of the first element of each run of equal keys."""
    first = np.ones(len(keys_sorted), dtype=bool)
    first[1:] = keys_sorted[1:] != keys_sorted[:-1]
    return first


def _true_positives(group, det, sim, gt_boxes, det_boxes):
    """The single true positive of each (query, image holding the person) group.

    Args:
        group (np.ndarray[C] int64): group of each candidate (one detection of an image holding the person).
        det (np.ndarray[C] int64), sim (np.ndarray[C] float64): the detection and its similarity.
        gt_boxes (np.ndarray[C, 4]): the group's gt box. det_boxes (np.ndarray[G, 4]).
    Returns:
        np.ndarray[K] int64: candidate indices of the true positives (at most one per group).
    """
    ok = np.nonzero(paired_iou(det_boxes[det], gt_boxes) >= iou_threshold(gt_boxes))[0]
    # The field walks the image's detections in descending similarity (later detection first on ties).
    ok = ok[np.lexsort((-det[ok], -sim[ok], group[ok]))]
    return ok[_group_first(group[ok])]


def _list_positions(sim, det, pair_entry, holds, entry_first_pair, query_first_pair, pair_query):
    """Each pair's position in its query's list as the field builds it (for tie-breaking in top-k)."""
    pos = np.arange(len(sim)) - query_first_pair[pair_query]
    if len(holds):
        order = holds[np.lexsort((-det[holds], -sim[holds], pair_entry[holds]))]
        entry = pair_entry[order]
        run_start = np.maximum.accumulate(np.where(_group_first(entry), np.arange(len(order)), 0))
        rank = np.arange(len(order)) - run_start
        pos[order] = entry_first_pair[entry] - query_first_pair[pair_query[order]] + rank
    return pos


def _tie_break(pos_idx, sim, pos, pair_query, query_first_pair, query_pairs):
    """For positives tied with other pairs: how many tied pairs come before them in the field's order."""
    lengths = query_pairs[pair_query[pos_idx]]
    owner = np.repeat(np.arange(len(pos_idx)), lengths)
    within = np.arange(len(owner)) - np.repeat(_csr_offsets(lengths)[:-1], lengths)
    other = query_first_pair[pair_query[pos_idx]][owner] + within
    before = (sim[other] == sim[pos_idx][owner]) & (pos[other] > pos[pos_idx][owner])
    return np.bincount(owner, weights=before, minlength=len(pos_idx)).astype(np.int64)


def _tally(pq, ps, n_ge, rank, n_q):
    """Per query: sum over its true positives of precision at their similarity, their count, best rank.

    Args:
        pq (np.ndarray[K] int64): query (0..n_q-1) of each true positive; ps: its similarity;
        n_ge: detections of the query with similarity >= ps; rank: its 0-based rank in the ranked list.
    """
    # True positives of the same query at or above each one's similarity (sorted by query, descending).
    order = np.lexsort((-ps, pq))
    sq, ss = pq[order], ps[order]
    last_of_tie = np.ones(len(order), dtype=bool)
    last_of_tie[:-1] = (sq[1:] != sq[:-1]) | (ss[1:] != ss[:-1])
    tie_end = np.minimum.accumulate(np.where(last_of_tie, np.arange(len(order)), len(order))[::-1])[::-1]
    tp_ge = np.empty(len(order), dtype=np.int64)
    tp_ge[order] = tie_end - np.searchsorted(sq, sq, side="left") + 1

    precision_sum = np.bincount(pq, weights=tp_ge / np.maximum(n_ge, 1), minlength=n_q)
    count_tp = np.bincount(pq, minlength=n_q).astype(np.int64)
    best = np.full(n_q, np.iinfo(np.int64).max)
    np.minimum.at(best, pq, rank)
    return precision_sum, count_tp, np.where(count_tp > 0, best, -1)


def _score_pairs(gallery, gallery_emb, starts, counts, query_emb, protocol, q0, q1, rescore=None):
    """Queries q0..q1-1 scored pair by pair (sparse galleries; exact tie-breaking): see :func:`_tally`."""
    n_q = q1 - q0
    entry_query, entry_image, entry_gt = protocol.entries(q0, q1)
    entry_query = entry_query - q0
    n_e = counts[entry_image]
    entry_first_pair = _csr_offsets(n_e)[:-1]
    pair_entry = np.repeat(np.arange(len(entry_image)), n_e)
    n_pairs = len(pair_entry)
    det = _ranges(starts[entry_image], n_e)
    pair_query = entry_query[pair_entry]
    query_pairs = np.bincount(pair_query, minlength=n_q).astype(np.int64)
    query_first_pair = _csr_offsets(query_pairs)[:-1]
    sim = _pair_similarities(query_emb[q0:q1], gallery_emb, entry_query, entry_image, entry_first_pair, starts,
                             counts, n_pairs)
    if rescore is not None:
        sim = rescore.pairs(gallery, gallery_emb, pair_query + q0, det, sim)

    holding = np.nonzero(~np.isnan(entry_gt[:, 0]))[0]
    holds = _ranges(entry_first_pair[holding], n_e[holding])  # pairs in images holding the person
    pos_idx = holds[_true_positives(pair_entry[holds], det[holds], sim[holds], entry_gt[pair_entry[holds]],
                                    gallery.boxes)]

    table = np.full((n_q, max(int(query_pairs.max(initial=0)), 1)), -np.inf)
    table[pair_query, np.arange(n_pairs) - query_first_pair[pair_query]] = sim
    table.sort(axis=1)
    pq, ps = pair_query[pos_idx], sim[pos_idx]
    n_ge = _count_at_least(table, pq, ps, strict=False)
    rank = _count_at_least(table, pq, ps, strict=True)
    tied = np.nonzero(n_ge - rank > 1)[0]
    if len(tied):
        pos = _list_positions(sim, det, pair_entry, holds, entry_first_pair, query_first_pair, pair_query)
        rank[tied] += _tie_break(pos_idx[tied], sim, pos, pair_query, query_first_pair, query_pairs)
    return _tally(pq, ps, n_ge, rank, n_q)


def _score_dense(gallery, gallery_emb, starts, counts, query_emb, protocol, q0, q1, rescore=None):
    """Queries q0..q1-1 scored on the full similarity matrix (galleries holding most images).

    Returns None when a true positive ties with another detection: the caller then uses
    :func:`_score_pairs`, which knows the field's list order.
    """
    member = protocol.image_mask(q0, q1)
    sims = query_emb[q0:q1] @ gallery_emb.T
    if rescore is not None:
        rescore.dense(gallery, gallery_emb, q0, sims, member[:, gallery.image_index])
    gq, gimg, gbox = protocol.ground_truth(q0, q1)
    keep = member[gq - q0, gimg]
    gq, gimg, gbox = gq[keep] - q0, gimg[keep], gbox[keep]
    group = np.repeat(np.arange(len(gimg)), counts[gimg])
    det = _ranges(starts[gimg], counts[gimg])
    csim = sims[gq[group], det]
    tp = _true_positives(group, det, csim, gbox[group], gallery.boxes)
    pq, ps = gq[group[tp]], csim[tp]
    np.putmask(sims, ~member[:, gallery.image_index], -np.inf)
    sims.sort(axis=1)
    n_ge = _count_at_least(sims, pq, ps, strict=False)
    rank = _count_at_least(sims, pq, ps, strict=True)
    if np.any(n_ge - rank > 1):
        return None
    return _tally(pq, ps, n_ge, rank, q1 - q0)


def evaluate_search(gallery, query_embeddings, protocol, *, det_thresh=0.5, topk=TOPK, cmc_max_rank=100,
                    pairs_per_chunk=PAIRS_PER_CHUNK, strategy="auto", rescore=None):
    """The field's person-search metrics (see the module docstring).

    Args:
        gallery (GalleryDetections): all gallery detections (thresholded here).
        query_embeddings (np.ndarray[Q, D]): one embedding per query, in the protocol's order.
        protocol (SearchProtocol): Q queries over ``gallery.num_images`` images.
        det_thresh (float): detections with a lower score are dropped.
        topk (tuple[int]): the k of the top-k accuracies.
        cmc_max_rank (int): length of the CMC curve.
        pairs_per_chunk (int): memory bound (queries are scored in chunks of about this many pairs).
        strategy (str): "dense" (full similarity matrix), "pairs" (pair by pair) or "auto" (dense when the
            galleries hold most images). Both give the same numbers; they differ in speed.
        rescore (object or None): changes similarities before true positives and ranks are found, e.g.
            CBGM (:class:`~dcinet_d2.evaluation.cbgm.ContextMatching`). It has ``pairs(gallery, gallery_emb,
            pair_query, pair_det, sim) -> sim`` (a chunk's pairs [P]: global query index, row of the
            thresholded ``gallery``) and ``dense(gallery, gallery_emb, q0, sims, member)`` (re-scores
            ``sims`` [Qc, G] in place; ``member`` [Qc, G] bool: the pairs searched). A chunk always holds
            whole queries, so a query's whole gallery is re-scored at once.
    Returns:
        SearchMetrics.
    """
    query_embeddings = np.asarray(query_embeddings, dtype=np.float32)
    if query_embeddings.ndim != 2:
        raise ValueError(f"query embeddings: expected [Q, D], got shape {query_embeddings.shape}")
    _check_finite("query embeddings", query_embeddings)
    n_q = len(query_embeddings)
    if n_q != protocol.num_queries:
        raise ValueError(f"{n_q} query embeddings but the protocol has {protocol.num_queries} queries")
    if gallery.num_images != protocol.num_images:
        raise ValueError(f"gallery of {gallery.num_images} images but the protocol has {protocol.num_images}")
    if gallery.dim != query_embeddings.shape[1]:
        raise ValueError(f"gallery embeddings have dimension {gallery.dim}, query embeddings "
                         f"{query_embeddings.shape[1]}")
    gallery = gallery.above(det_thresh)
    starts, counts = gallery.image_slices()
    gallery_emb = gallery.embeddings.astype(np.float64)  # float32 products are exact in float64
    query_emb = query_embeddings.astype(np.float64)

    precision_sum = np.zeros(n_q)
    count_tp = np.zeros(n_q, dtype=np.int64)
    first_rank = np.full(n_q, -1, dtype=np.int64)
    estimate = protocol.pair_estimate(counts)
    n_dets = len(gallery.scores)
    if strategy not in ("auto", "dense", "pairs"):
        raise ValueError(f"strategy {strategy!r} is not 'auto', 'dense' or 'pairs'")
    dense = n_dets > 0 and n_q > 0 and (protocol.rest or float(np.mean(estimate)) >= DENSE_FRACTION * n_dets)
    dense = dense if strategy == "auto" else strategy == "dense"
    for q0, q1 in _chunks(np.full(n_q, n_dets) if dense else estimate, pairs_per_chunk):
        args = (gallery, gallery_emb, starts, counts, query_emb, protocol, q0, q1, rescore)
        scored = _score_dense(*args) if dense else None
        precision_sum[q0:q1], count_tp[q0:q1], first_rank[q0:q1] = scored or _score_pairs(*args)

    count_gt = protocol.count_gt
    if np.any(count_tp > count_gt):
        q = int(np.argmax(count_tp > count_gt))
        raise ValueError(f"search protocol: query {q} has {count_tp[q]} true positives but count_gt "
                         f"{count_gt[q]} (inconsistent protocol)")
    if np.any(count_gt == 0):
        logger.warning("%d of %d queries have no ground truth in their gallery: AP 0 (counted in the mean)",
                       int(np.sum(count_gt == 0)), n_q)
    found = count_tp > 0
    ap = np.zeros(n_q)
    # sklearn's AP (precision_sum / count_tp) times the recall count_tp / count_gt, as the field writes it.
    ap[found] = (precision_sum[found] / count_tp[found]) * (count_tp[found] / count_gt[found])
    top = {k: 100.0 * float(np.mean((first_rank >= 0) & (first_rank < k))) if n_q else 0.0 for k in topk}
    return SearchMetrics(mAP=100.0 * float(np.mean(ap)) if n_q else 0.0, topk=top, ap=ap,
                         first_tp_rank=first_rank, count_tp=count_tp, count_gt=count_gt.copy(),
                         cmc=cmc_curve(first_rank, cmc_max_rank))


# ----------------------------------------------------------------------------- detection
def _segment_argmax(segment, values, tiebreak):
    """Mask of the element with the largest value of each segment (the smallest ``tiebreak`` on ties)."""
    order = np.lexsort((tiebreak, -values, segment))
    best = np.zeros(len(segment), dtype=bool)
    best[order[_group_first(segment[order])]] = True
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
    _check_finite("detection ground-truth boxes", gt_boxes)
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
    g_start, d_start = _csr_offsets(g_count)[:-1], _csr_offsets(d_count)[:-1]
    per_image = g_count * d_count
    pair_image = np.repeat(np.arange(n_img), per_image)
    local = np.arange(len(pair_image)) - _csr_offsets(per_image)[:-1][pair_image]
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
