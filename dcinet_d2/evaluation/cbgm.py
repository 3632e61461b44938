"""Context bipartite graph matching (CBGM): evaluation-time re-scoring with the query's companions.

From Li & Miao, "Sequential End-to-end Network for Efficient Person Search" (SeqNet, AAAI 2021). People
who stand together in the query image often stand together elsewhere: a gallery image holding the query's
companions is more likely to hold the query person too. The rule, as SeqNet's evaluation code applies it
(``eval_func.py``, ``utils/km.py``), for each query q:

1. Context: the people of the query's own image, i.e. its detections with ``score >= det_thresh`` that the
   query box does not suppress (IoU with the query box <= 0.5: SeqNet adds the query box with score 1 to
   that image's detections and runs NMS at 0.5), the most confident first, at most ``k2 - 1`` of them.
   With the query box they are the graph's query side: ``k2`` counts the query itself, as SeqNet's
   ``query_dets[:k2]`` does (its first row is the query box).
2. Candidates: the ``k1`` (query, detection) pairs of highest similarity in the query's gallery
   (detections with ``score >= det_thresh``); only their images (at most ``k1``) are re-scored.
3. Matching, per candidate image: the complete bipartite graph between the query side (rows: the query,
   then its context) and the image's detections (columns), each edge weighted by the cosine similarity
   (row 0: the similarities the evaluator computed; context rows: context . detection embeddings); a
   maximum-weight matching of ``min(rows, columns)`` edges (``linear_sum_assignment(maximize=True)``;
   SeqNet: Kuhn-Munkres on the same complete graph).
4. New score: if the query is matched to detection j, ``s(q, j)`` becomes the LARGEST weight among the
   matched edges (SeqNet's ``get_max_value_result``; not the sum of the matching). No other detection
   changes. The query stays unmatched only when the image has fewer detections than query-side people;
   then nothing changes.

True positives, AP and top-k are then computed on the re-scored similarities (SeqNet labels and ranks with
them too). A query without context is left unchanged (a one-row matching gives the query's own best
detection its own similarity): its image has no other detection above ``det_thresh``, or the image is not
in the results file (no detection), or it is not a gallery image (generic galleries whose queries come
from "query" images; every CUHK-SYSU and PRW query image is a test/gallery image).

Defaults (SeqNet's ``eval_search_cuhk`` / ``eval_search_prw`` signatures, which its ``engine.py`` uses):
CUHK-SYSU k1 = 10, k2 = 3; PRW k1 = 30, k2 = 4; generic galleries (searched like PRW) take PRW's.
Where SeqNet leaves room: ties at the k1-th similarity keep the lower detection row (SeqNet: ``np.argsort``,
unspecified); two optimal matchings of exactly equal weight may be resolved differently from Kuhn-Munkres;
on the CUHK-SYSU full set (gallery -1) the query's whole gallery is a candidate (SeqNet re-scores only its
TestG50 part, a TODO in its code).
"""
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from .matching import csr_offsets, paired_iou, ranges

__all__ = ["DEFAULT_K", "CONTEXT_NMS_IOU", "default_k", "query_context", "top_images", "cbgm_rescore",
           "ContextMatching"]

# (k1, k2) of SeqNet's evaluation per dataset format.
DEFAULT_K = {"cuhk_sysu": (10, 3), "prw": (30, 4), "generic": (30, 4)}
# SeqNet's NMS threshold when the query box joins its image's detections: IoU above it = the query person.
CONTEXT_NMS_IOU = 0.5


def default_k(dataset_format, k1=None, k2=None):
    """(k1, k2): the given values, SeqNet's for the dataset format where None or 0. ValueError below 1."""
    d1, d2 = DEFAULT_K.get(dataset_format, DEFAULT_K["prw"])
    k1, k2 = int(k1 or d1), int(k2 or d2)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"CBGM needs k1 >= 1 and k2 >= 1 (got k1={k1}, k2={k2})")
    return k1, k2


def _rank_in_run(sorted_keys):
    """0-based position of each element within its run of equal keys (``sorted_keys`` ascending)."""
    return np.arange(len(sorted_keys)) - np.searchsorted(sorted_keys, sorted_keys, side="left")


def query_context(gallery, query_images, query_boxes, k2, *, det_thresh=0.5):
    """The context people of every query (rule 1 of the module docstring).

    Args:
        gallery (GalleryDetections): every gallery detection (thresholded here).
        query_images (np.ndarray[Q] int): gallery image index of each query's image, -1 if none.
        query_boxes (np.ndarray[Q, 4] float): the query boxes, XYXY absolute pixels.
        k2 (int >= 1): query-side people per graph, the query included.
        det_thresh (float): detections below it are not context (as they are not searched).
    Returns:
        (offsets np.ndarray[Q+1] int64, embeddings np.ndarray[C, D] float64): query q's context is
        ``embeddings[offsets[q]:offsets[q+1]]``, the most confident first (at most k2 - 1 rows).
    """
    images = np.asarray(query_images, dtype=np.int64).reshape(-1)
    boxes = np.asarray(query_boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != len(images) or (len(images) and not -1 <= images.min() <= images.max() < gallery.num_images):
        raise ValueError(f"query context: {len(images)} query images (expected in -1..{gallery.num_images - 1}) "
                         f"and {len(boxes)} query boxes: expected one of each per query")
    dets = gallery.above(det_thresh)
    starts, counts = dets.image_slices()
    valid = np.nonzero(images >= 0)[0]
    n = np.zeros(len(images), dtype=np.int64)
    n[valid] = counts[images[valid]]
    first = np.zeros(len(images), dtype=np.int64)
    first[valid] = starts[images[valid]]
    query, rows = np.repeat(np.arange(len(images)), n), ranges(first, n)
    # The query person's own detection is suppressed by the query box, as in SeqNet's NMS.
    keep = paired_iou(dets.boxes[rows], boxes[query]) <= CONTEXT_NMS_IOU
    query, rows = query[keep], rows[keep]
    order = np.lexsort((rows, -dets.scores[rows], query))
    query, rows = query[order], rows[order]
    keep = _rank_in_run(query) < k2 - 1
    offsets = csr_offsets(np.bincount(query[keep], minlength=len(images)))
    return offsets, dets.embeddings[rows[keep]].astype(np.float64)


def top_images(sim, pair_query, pair_det, det_image, k1):
    """The images of each query's k1 most similar detections (rule 2).

    Args:
        sim (np.ndarray[P] float): similarity of query ``pair_query[p]`` and detection ``pair_det[p]``.
        pair_query, pair_det (np.ndarray[P] int); det_image (np.ndarray[G] int): image of each detection.
        k1 (int): detections per query; ties keep the lower detection row.
    Returns:
        (query np.ndarray[S] int64, image np.ndarray[S] int64): distinct pairs, sorted by query then image.
    """
    pair_query = np.asarray(pair_query, dtype=np.int64)
    order = np.lexsort((pair_det, -np.asarray(sim), pair_query))
    top = order[_rank_in_run(pair_query[order]) < k1]
    n_img = int(det_image.max(initial=-1)) + 1
    keys = np.unique(pair_query[top] * n_img + det_image[pair_det[top]])
    return keys // max(n_img, 1), keys % max(n_img, 1)


def _match_groups(values, group_query, offsets, members, member_det, det_embeddings, context_offsets,
                  context_embeddings):
    """Rules 3-4 for every (query, image) group: one small linear_sum_assignment per group.

    Args:
        values (np.ndarray[N] float64): flat similarities; group g's are ``values[members[offsets[g]:
            offsets[g+1]]]``, of detections ``member_det[offsets[g]:offsets[g+1]]`` (one image's).
        group_query (np.ndarray[S] int): query of each group; offsets (np.ndarray[S+1] int64).
        det_embeddings (np.ndarray[G, D] float64); context_offsets, context_embeddings: of query_context.
    Returns:
        (index np.ndarray[M] int64 into ``values``, new value np.ndarray[M] float64): the query-matched
        detections of the groups where the query is matched.
    """
    index, value = [], []
    for g, q in enumerate(np.asarray(group_query).tolist()):
        cols = slice(offsets[g], offsets[g + 1])
        context = context_embeddings[context_offsets[q]:context_offsets[q + 1]]
        weights = np.vstack([values[members[cols]][None], context @ det_embeddings[member_det[cols]].T])
        rows, matched = linear_sum_assignment(weights, maximize=True)
        hit = np.nonzero(rows == 0)[0]
        if len(hit):
            index.append(members[cols][matched[hit[0]]])
            value.append(weights[rows, matched].max())
    return np.asarray(index, dtype=np.int64), np.asarray(value, dtype=np.float64)


def cbgm_rescore(sim, pair_query, pair_det, det_image, det_embeddings, context_offsets, context_embeddings, k1):
    """CBGM re-scored similarities of (query, detection) pairs (the module docstring's rule).

    Args:
        sim (np.ndarray[P] float): similarity of query ``pair_query[p]`` and detection ``pair_det[p]``;
            a query's pairs must cover every detection of each image they touch (its searched detections).
        pair_query (np.ndarray[P] int): in 0..Q-1. pair_det (np.ndarray[P] int): rows of the detections.
        det_image (np.ndarray[G] int): image of each detection.
        det_embeddings (np.ndarray[G, D] float): detection embeddings (the context edges' other end).
        context_offsets (np.ndarray[Q+1] int), context_embeddings (np.ndarray[C, D] float): query_context.
        k1 (int): candidate detections per query.
    Returns:
        np.ndarray[P] float64: a re-scored copy of ``sim``.
    """
    sim = np.array(sim, dtype=np.float64)
    pair_query, pair_det = np.asarray(pair_query, np.int64), np.asarray(pair_det, np.int64)
    det_image = np.asarray(det_image, np.int64)
    cand = np.nonzero(np.diff(context_offsets)[pair_query] > 0)[0]  # queries without context keep their scores
    if len(cand) == 0:
        return sim
    group_query, group_image = top_images(sim[cand], pair_query[cand], pair_det[cand], det_image, k1)
    n_img = int(det_image.max()) + 1
    key = pair_query[cand] * n_img + det_image[pair_det[cand]]
    group_key = group_query * n_img + group_image
    pos = np.minimum(np.searchsorted(group_key, key), len(group_key) - 1)
    inside = group_key[pos] == key
    order = np.argsort(pos[inside], kind="stable")
    members, group = cand[inside][order], pos[inside][order]
    offsets = csr_offsets(np.bincount(group, minlength=len(group_key)))
    index, value = _match_groups(sim, group_query, offsets, members, pair_det[members],
                                 np.asarray(det_embeddings, np.float64), context_offsets, context_embeddings)
    sim[index] = value
    return sim


@dataclass(frozen=True)
class ContextMatching:
    """CBGM as the ``rescore`` hook of :func:`~dcinet_d2.evaluation.protocol.evaluate_search`.

    Attributes:
        context_offsets (np.ndarray[Q+1] int64), context_embeddings (np.ndarray[C, D] float64): see
            :func:`query_context`. k1 (int), k2 (int): as in the module docstring.
    """

    context_offsets: np.ndarray
    context_embeddings: np.ndarray
    k1: int
    k2: int

    @classmethod
    def build(cls, gallery, query_images, query_boxes, k1, k2, *, det_thresh=0.5):
        """From the gallery (GalleryDetections) and each query's image index [Q] and box [Q, 4]."""
        offsets, embeddings = query_context(gallery, query_images, query_boxes, k2, det_thresh=det_thresh)
        return cls(offsets, embeddings, int(k1), int(k2))

    @property
    def queries_with_context(self):
        """Number of queries that CBGM can change (at least one context person)."""
        return int(np.count_nonzero(np.diff(self.context_offsets)))

    def pairs(self, gallery, gallery_emb, pair_query, pair_det, sim):
        """Re-scored copy of a chunk's pair similarities [P] (``gallery``: the thresholded detections)."""
        return cbgm_rescore(sim, pair_query, pair_det, gallery.image_index, gallery_emb, self.context_offsets,
                            self.context_embeddings, self.k1)

    def dense(self, gallery, gallery_emb, q0, sims, member):
        """Re-scores ``sims`` [Qc, G] of queries q0.. in place; ``member`` [Qc, G] bool: searched pairs."""
        rows = np.nonzero(np.diff(self.context_offsets)[q0:q0 + len(sims)] > 0)[0]
        if len(rows) == 0 or sims.shape[1] == 0:
            return
        masked = np.where(member[rows], sims[rows], -np.inf)
        k = min(self.k1, masked.shape[1])
        kth = np.partition(masked, -k, axis=1)[:, -k]
        # every pair at or above the k1-th value (ties included): top_images then applies the tie rule
        r, c = np.nonzero((masked >= kth[:, None]) & member[rows])
        group_query, group_image = top_images(masked[r, c], rows[r] + q0, c, gallery.image_index, self.k1)
        starts, counts = gallery.image_slices()
        n = counts[group_image]
        cols = ranges(starts[group_image], n)
        flat = np.repeat((group_query - q0) * sims.shape[1], n) + cols
        index, value = _match_groups(sims.reshape(-1), group_query, csr_offsets(n), flat, cols, gallery_emb,
                                     self.context_offsets, self.context_embeddings)
        np.put(sims, index, value)
