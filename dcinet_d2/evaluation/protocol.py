"""The inputs and outputs of the person-search evaluation core (docs/PROTOCOLS.md): what every dataset
module builds (:class:`SearchProtocol`: per query, an ordered list of gallery images and where the person is;
:class:`GalleryDetections`: the model's outputs) and what the evaluations return (:class:`SearchMetrics`,
:class:`DetectionMetrics`). The evaluations themselves: search_metrics.py, detection_metrics.py.
"""
import dataclasses
from dataclasses import dataclass

import numpy as np

from .matching import check_finite, csr_offsets, group_first

__all__ = ["GalleryDetections", "SearchProtocol", "SearchMetrics", "DetectionMetrics"]


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
        check_finite("gallery detection boxes", boxes)
        check_finite("gallery detection scores", scores)
        check_finite("gallery detection embeddings", emb)
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
        check_finite("search protocol gt boxes", self.gt_boxes)
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
        first[order] = group_first((entry_query * num_images + entry_image)[order])  # first entry of an image
        gt = first & holds
        return cls(num_images=num_images,
                   gallery_offsets=csr_offsets(np.bincount(entry_query[first], minlength=num_queries)),
                   gallery_images=entry_image[first],
                   gt_offsets=csr_offsets(np.bincount(entry_query[gt], minlength=num_queries)),
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
                   gt_offsets=csr_offsets(np.bincount(gt_q, minlength=n_q)), gt_images=gt_images_arr,
                   gt_boxes=np.reshape(gt_boxes, (-1, 4)),
                   count_gt=np.bincount(gt_q[in_gallery], minlength=n_q), rest=True,
                   exclude_images=query_images, image_groups=groups if q_groups is not None else None,
                   exclude_groups=q_groups if groups is not None else None)

    # -------------------------------------------------------------------------- chunks for the core
    def pair_estimate(self, det_counts):
        """Upper bound of the (query, detection) pairs of each query: np.ndarray[Q] int64."""
        cum = csr_offsets(det_counts[self.gallery_images])
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
