"""Person-search scoring (mAP, top-k, CMC): the vectorised core shared by every dataset (docs/PROTOCOLS.md).

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
import logging

import numpy as np

from .matching import check_finite, cmc_curve, csr_offsets, group_first, iou_threshold, paired_iou, ranges
from .protocol import SearchMetrics

logger = logging.getLogger(__name__)

__all__ = ["evaluate_search", "TOPK"]

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
        column[images] = csr_offsets(counts[images])[:-1]  # block column of each image's first detection
        block = query_emb @ gallery_emb[ranges(starts[images], counts[images])].T
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
    return ok[group_first(group[ok])]


def _list_positions(sim, det, pair_entry, holds, entry_first_pair, query_first_pair, pair_query):
    """Each pair's position in its query's list as the field builds it (for tie-breaking in top-k)."""
    pos = np.arange(len(sim)) - query_first_pair[pair_query]
    if len(holds):
        order = holds[np.lexsort((-det[holds], -sim[holds], pair_entry[holds]))]
        entry = pair_entry[order]
        run_start = np.maximum.accumulate(np.where(group_first(entry), np.arange(len(order)), 0))
        rank = np.arange(len(order)) - run_start
        pos[order] = entry_first_pair[entry] - query_first_pair[pair_query[order]] + rank
    return pos


def _tie_break(pos_idx, sim, pos, pair_query, query_first_pair, query_pairs):
    """For positives tied with other pairs: how many tied pairs come before them in the field's order."""
    lengths = query_pairs[pair_query[pos_idx]]
    owner = np.repeat(np.arange(len(pos_idx)), lengths)
    within = np.arange(len(owner)) - np.repeat(csr_offsets(lengths)[:-1], lengths)
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
    entry_first_pair = csr_offsets(n_e)[:-1]
    pair_entry = np.repeat(np.arange(len(entry_image)), n_e)
    n_pairs = len(pair_entry)
    det = ranges(starts[entry_image], n_e)
    pair_query = entry_query[pair_entry]
    query_pairs = np.bincount(pair_query, minlength=n_q).astype(np.int64)
    query_first_pair = csr_offsets(query_pairs)[:-1]
    sim = _pair_similarities(query_emb[q0:q1], gallery_emb, entry_query, entry_image, entry_first_pair, starts,
                             counts, n_pairs)
    if rescore is not None:
        sim = rescore.pairs(gallery, gallery_emb, pair_query + q0, det, sim)

    holding = np.nonzero(~np.isnan(entry_gt[:, 0]))[0]
    holds = ranges(entry_first_pair[holding], n_e[holding])  # pairs in images holding the person
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
    det = ranges(starts[gimg], counts[gimg])
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
    check_finite("query embeddings", query_embeddings)
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
