"""The vectorised core against hand computations, scikit-learn and the loop reference (reference_impl)."""
import logging

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

import reference_impl
from dcinet_d2.evaluation.detection_metrics import evaluate_detection
from dcinet_d2.evaluation.matching import average_precision, cmc_curve, iou_threshold, paired_iou
from dcinet_d2.evaluation.protocol import GalleryDetections, SearchProtocol
from dcinet_d2.evaluation.search_metrics import evaluate_search

STRATEGIES = ("pairs", "dense")


def gallery_of(per_image, dim):
    """GalleryDetections from [(boxes [n, 4], scores [n], embeddings [n, D]) per image]."""
    return GalleryDetections.from_lists([p[0] for p in per_image], [p[1] for p in per_image],
                                        [p[2] for p in per_image], dim)


def reference_gallery(per_image):
    return {str(i): (np.asarray(b, float).reshape(-1, 4), np.asarray(s, float).reshape(-1),
                     np.asarray(e, np.float32).reshape(len(np.asarray(s).reshape(-1)), np.shape(e)[-1]))
            for i, (b, s, e) in enumerate(per_image)}


def reference_galleries(galleries):
    return [[(str(i), box) for i, box in g] for g in galleries]


def assert_same(ours, ref):
    np.testing.assert_allclose(ours.ap, ref["aps"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ours.first_tp_rank, ref["first_rank"])
    for key in ("mAP", "top1", "top5", "top10"):
        assert abs(ours.summary()[key] - ref[key]) < 1e-9, key
    np.testing.assert_allclose(ours.cmc, ref["cmc"], rtol=0, atol=1e-9)


# ----------------------------------------------------------------------------- small exact helpers
def test_average_precision_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 40))
        scores = rng.integers(0, 1 + trial % 6, n).astype(float) / 4  # few distinct values: many ties
        labels = rng.random(n) < 0.3
        if not labels.any():
            labels[int(rng.integers(n))] = True
        assert abs(average_precision(labels, scores) - average_precision_score(labels, scores)) < 1e-12


def test_average_precision_by_hand():
    # Ranked: 0.9 (+), 0.8 (-), 0.7 (+): AP = (1/1 + 2/3) / 2.
    assert average_precision([1, 0, 1], [0.9, 0.8, 0.7]) == pytest.approx((1 + 2 / 3) / 2, abs=1e-15)
    # One tie group of three holding one positive: precision 1/3 at the only threshold.
    assert average_precision([0, 1, 0], [0.5, 0.5, 0.5]) == pytest.approx(1 / 3, abs=1e-15)
    assert average_precision([0, 0], [0.5, 0.1]) == 0.0


def test_paired_iou_and_threshold_by_hand():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [5, 5, 5, 9]], float)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(paired_iou(a, b), [1.0, 50 / 150, 0.0, 0.0])
    # w = h = 10: 100 / 400 = 0.25 (lenient for small people); large boxes: 0.5.
    np.testing.assert_allclose(iou_threshold(np.array([[0, 0, 10, 10], [0, 0, 100, 200]], float)), [0.25, 0.5])


def test_cmc_curve():
    np.testing.assert_allclose(cmc_curve(np.array([0, 2, -1, 7]), max_rank=4), [25, 25, 50, 50])


# ----------------------------------------------------------------------------- crafted search cases
def test_hand_computed_query():
    # Image 0 holds the person (gt 10x20: IoU threshold min(0.5, 200/600) = 1/3): d0 overlaps it
    # (sim 0.9), d1 does not (0.95). Image 1 lacks the person: d2 (0.8), d3 (0.99). Image 2 holds the
    # person but has no detection: counted in count_gt.
    e = lambda *v: np.asarray(v, np.float32)  # noqa: E731
    per_image = [
        ([[0, 0, 10, 20], [50, 50, 60, 70]], [0.9, 0.9], [e(0.9, 0), e(0.95, 0)]),
        ([[0, 0, 10, 20], [1, 1, 5, 5]], [0.9, 0.9], [e(0.8, 0), e(0.99, 0)]),
        (np.zeros((0, 4)), [], np.zeros((0, 2))),
    ]
    galleries = [[(0, [0, 0, 10, 20]), (1, None), (2, [100, 100, 150, 200])]]
    protocol = SearchProtocol.from_galleries(galleries, 3)
    for strategy in STRATEGIES:
        out = evaluate_search(gallery_of(per_image, 2), [[1.0, 0.0]], protocol, strategy=strategy)
        # Ranked: d3 (-), d1 (-), d0 (+), d2 (-): AP 1/3, recall 1/2.
        assert out.ap[0] == pytest.approx(1 / 6, abs=1e-15)
        assert out.first_tp_rank[0] == 2 and out.count_tp[0] == 1 and out.count_gt[0] == 2
        assert out.summary() == pytest.approx({"mAP": 100 / 6, "top1": 0.0, "top5": 100.0, "top10": 100.0})
    assert_same(out, reference_impl.search(reference_gallery(per_image), np.array([[1.0, 0.0]]),
                                           reference_galleries(galleries)))


def test_only_the_most_similar_overlapping_detection_is_a_true_positive():
    # Two detections overlap the person; the more similar one is the true positive, the other a negative.
    e = lambda *v: np.asarray(v, np.float32)  # noqa: E731
    per_image = [([[0, 0, 40, 80], [2, 2, 40, 80], [100, 0, 140, 80]], [1, 1, 1], [e(0.5), e(0.7), e(0.6)])]
    out = evaluate_search(gallery_of(per_image, 1), [[1.0]], SearchProtocol.from_galleries([[(0, [0, 0, 40, 80])]], 1))
    # Ranked: d1 (+, 0.7), d2 (-), d0 (-): AP 1.
    assert out.ap[0] == 1.0 and out.first_tp_rank[0] == 0


def test_small_box_iou_threshold():
    # gt 10 x 10: threshold 0.25. A detection with IoU exactly 0.25 matches, one with IoU 0.2 does not.
    e = lambda *v: np.asarray(v, np.float32)  # noqa: E731
    gt = [0, 0, 10, 10]
    for box, expected in (([0, 0, 10, 2.5], 1.0), ([0, 0, 10, 2], 0.0)):
        per_image = [([box], [1.0], [e(1.0)])]
        out = evaluate_search(gallery_of(per_image, 1), [[1.0]], SearchProtocol.from_galleries([[(0, gt)]], 1))
        assert out.ap[0] == expected
    # The same IoU of 0.25 does not match a large person (threshold 0.5).
    per_image = [([[0, 0, 100, 25]], [1.0], [e(1.0)])]
    out = evaluate_search(gallery_of(per_image, 1), [[1.0]],
                          SearchProtocol.from_galleries([[(0, [0, 0, 100, 100])]], 1))
    assert out.ap[0] == 0.0


def test_duplicate_gallery_entries_count_twice_but_score_once():
    e = lambda *v: np.asarray(v, np.float32)  # noqa: E731
    per_image = [([[0, 0, 40, 80]], [1.0], [e(0.9)]), ([[0, 0, 40, 80]], [1.0], [e(0.95)])]
    box = [0, 0, 40, 80]
    galleries = [[(0, box), (0, box), (1, None)],   # listed twice: count_gt 2, one true positive
                 [(1, None), (0, None), (0, box)]]  # first entry absent: scored without the person
    protocol = SearchProtocol.from_galleries(galleries, 2)
    np.testing.assert_array_equal(protocol.count_gt, [2, 1])
    for strategy in STRATEGIES:
        out = evaluate_search(gallery_of(per_image, 1), [[1.0], [1.0]], protocol, strategy=strategy)
        # Query 0: ranked d1 (-), d0 (+): AP 1/2 x recall 1/2. Query 1: no true positive.
        np.testing.assert_allclose(out.ap, [0.25, 0.0])
        np.testing.assert_array_equal(out.count_tp, [1, 0])
    assert_same(out, reference_impl.search(reference_gallery(per_image), np.ones((2, 1)),
                                           reference_galleries(galleries)))


def test_ties_follow_the_field_order():
    # All similarities equal. List order: image 0 holds the person, its detections re-sorted by
    # similarity, later detection first on ties: [b, a]; then image 1: [c]. The field's
    # argsort(...)[::-1] puts the later ones first: c, a, b: the true positive a is at rank 1.
    e = lambda *v: np.asarray(v, np.float32)  # noqa: E731
    per_image = [([[0, 0, 40, 80], [100, 0, 140, 80]], [1, 1], [e(0.5), e(0.5)]), ([[0, 0, 9, 9]], [1], [e(0.5)])]
    galleries = [[(0, [0, 0, 40, 80]), (1, None)]]
    for strategy in STRATEGIES:
        out = evaluate_search(gallery_of(per_image, 1), [[1.0]], SearchProtocol.from_galleries(galleries, 2),
                              strategy=strategy)
        assert out.ap[0] == pytest.approx(1 / 3, abs=1e-15)  # one tie group: precision 1/3
        assert out.first_tp_rank[0] == 1 and out.topk[1] == 0.0 and out.topk[5] == 100.0
    assert_same(out, reference_impl.search(reference_gallery(per_image), np.ones((1, 1)),
                                           reference_galleries(galleries)))


def test_no_detections_and_absent_person(caplog):
    empty = [(np.zeros((0, 4)), [], np.zeros((0, 3)))] * 3
    protocol = SearchProtocol.from_galleries([[(0, [0, 0, 10, 10]), (1, None)], [(2, None)]], 3)
    for strategy in STRATEGIES:
        with caplog.at_level(logging.WARNING):
            out = evaluate_search(gallery_of(empty, 3), np.ones((2, 3)), protocol, strategy=strategy)
        assert out.mAP == 0.0 and out.topk == {1: 0.0, 5: 0.0, 10: 0.0}
        np.testing.assert_array_equal(out.first_tp_rank, [-1, -1])
        np.testing.assert_array_equal(out.count_gt, [1, 0])
    assert "1 of 2 queries have no ground truth" in caplog.text


def test_every_other_image_leaves_out_the_query_image_and_its_group():
    e = lambda *v: np.asarray(v, np.float32)  # noqa: E731
    box = [0, 0, 40, 80]
    per_image = [([box], [1.0], [e(1.0)])] * 4
    groups = [1, 1, 2, 3]
    truth = [[(0, box), (1, box), (2, box)]]  # the person is in images 0 (the query's own), 1 and 2
    all_images = SearchProtocol.every_other_image(4, [0], truth)
    cross = SearchProtocol.every_other_image(4, [0], truth, image_groups=groups, query_groups=[1])
    assert all_images.count_gt.tolist() == [2] and cross.count_gt.tolist() == [1]
    for strategy in STRATEGIES:
        out = evaluate_search(gallery_of(per_image, 1), [[1.0]], all_images, strategy=strategy)
        assert out.count_tp[0] == 2  # images 1 and 2; image 0 is not in the gallery
        # Cross-group: images 2, 3 only; all four similarities tie.
        out = evaluate_search(gallery_of(per_image, 1), [[1.0]], cross, strategy=strategy)
        assert out.count_tp[0] == 1 and out.ap[0] == pytest.approx(0.5)
    np.testing.assert_array_equal(all_images.image_mask(0, 1), [[False, True, True, True]])
    np.testing.assert_array_equal(cross.image_mask(0, 1), [[False, False, True, True]])


# ----------------------------------------------------------------------------- random cases vs the reference
def random_case(rng, n_images=30, n_queries=12, dim=6, quantize=None, max_dets=6):
    per_image = []
    for _ in range(n_images):
        n = int(rng.integers(0, max_dets + 1))
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(4, 60, (n, 2))
        emb = rng.standard_normal((n, dim)).astype(np.float32)
        if quantize:
            emb = np.round(emb * quantize) / quantize
        per_image.append((np.concatenate([xy, xy + wh], 1), rng.uniform(0.3, 1.0, n), emb.astype(np.float32)))
    queries = rng.standard_normal((n_queries, dim)).astype(np.float32)
    if quantize:
        queries = np.round(queries * quantize) / quantize

    def gt_near(image):
        boxes = per_image[image][0]
        if len(boxes) and rng.random() < 0.8:
            b = boxes[int(rng.integers(len(boxes)))]
            return b + rng.normal(0, 3, 4)
        xy = rng.uniform(0, 100, 2)
        return np.concatenate([xy, xy + rng.uniform(4, 60, 2)])

    return per_image, queries, gt_near


@pytest.mark.parametrize("quantize", [None, 2])
def test_random_explicit_galleries_match_the_reference(quantize):
    rng = np.random.default_rng(1 if quantize is None else 2)
    per_image, queries, gt_near = random_case(rng, quantize=quantize)
    galleries = []
    for _ in range(len(queries)):
        images = rng.choice(30, size=int(rng.integers(1, 15)), replace=False).tolist()
        images += images[: int(rng.integers(0, 3))]  # a few duplicates
        rng.shuffle(images)
        galleries.append([(i, gt_near(i) if rng.random() < 0.4 else None) for i in images])
    ref = reference_impl.search(reference_gallery(per_image), queries, reference_galleries(galleries))
    protocol = SearchProtocol.from_galleries(galleries, 30)
    gallery = gallery_of(per_image, queries.shape[1])
    for strategy in STRATEGIES:
        for chunk in (7, 10**6):
            assert_same(evaluate_search(gallery, queries, protocol, strategy=strategy, pairs_per_chunk=chunk), ref)
    if quantize:
        assert min(len(set(g[2].ravel().tolist())) for g in per_image if len(g[2])) < 6  # ties did happen


@pytest.mark.parametrize("cross", [False, True])
def test_random_every_other_image_matches_the_reference(cross):
    rng = np.random.default_rng(3)
    per_image, queries, gt_near = random_case(rng, n_images=25, quantize=4 if cross else None)
    groups = rng.integers(0, 3, 25)
    query_images = rng.integers(-1, 25, len(queries))
    truth = [[(int(i), gt_near(int(i))) for i in rng.choice(25, size=int(rng.integers(0, 6)), replace=False)]
             for _ in range(len(queries))]
    query_groups = rng.integers(0, 3, len(queries))
    protocol = SearchProtocol.every_other_image(25, query_images, truth, image_groups=groups if cross else None,
                                                query_groups=query_groups if cross else None)
    galleries = []
    for q in range(len(queries)):
        boxes = dict(reversed(truth[q]))
        galleries.append([(i, boxes.get(i)) for i in range(25) if i != query_images[q] and
                          (not cross or groups[i] != query_groups[q])])
    ref = reference_impl.search(reference_gallery(per_image), queries, reference_galleries(galleries))
    for strategy in STRATEGIES:
        assert_same(evaluate_search(gallery_of(per_image, queries.shape[1]), queries, protocol,
                                    strategy=strategy, pairs_per_chunk=50), ref)


def test_rest_after_explicit_galleries_matches_the_reference():
    # The CUHK-SYSU full set: the explicit gallery, then every other image but the query's.
    rng = np.random.default_rng(4)
    per_image, queries, gt_near = random_case(rng, n_images=20, quantize=2)
    explicit = [[(int(i), gt_near(int(i)) if rng.random() < 0.5 else None)
                 for i in rng.choice(20, size=5, replace=False)] for _ in range(len(queries))]
    query_images = rng.integers(0, 20, len(queries))
    protocol = SearchProtocol.from_galleries(explicit, 20, rest=True, exclude_images=query_images)
    galleries = [g + [(i, None) for i in range(20) if i != query_images[q] and i not in {j for j, _ in g}]
                 for q, g in enumerate(explicit)]
    ref = reference_impl.search(reference_gallery(per_image), queries, reference_galleries(galleries))
    for strategy in STRATEGIES:
        assert_same(evaluate_search(gallery_of(per_image, queries.shape[1]), queries, protocol,
                                    strategy=strategy), ref)


def test_det_thresh_drops_low_scores():
    rng = np.random.default_rng(5)
    per_image, queries, gt_near = random_case(rng)
    galleries = [[(i, gt_near(i)) for i in range(0, 30, 3)] for _ in range(len(queries))]
    protocol = SearchProtocol.from_galleries(galleries, 30)
    for thresh in (0.0, 0.7):
        ref = reference_impl.search(reference_gallery(per_image), queries, reference_galleries(galleries),
                                    det_thresh=thresh)
        assert_same(evaluate_search(gallery_of(per_image, 6), queries, protocol, det_thresh=thresh), ref)


# ----------------------------------------------------------------------------- bad input
def test_bad_search_input_is_named():
    per_image = [([[0, 0, 10, 10]], [1.0], [[1.0, 0.0]])]
    gallery = gallery_of(per_image, 2)
    protocol = SearchProtocol.from_galleries([[(0, None)]], 1)
    with pytest.raises(ValueError, match="dimension 2, query embeddings 3"):
        evaluate_search(gallery, np.ones((1, 3)), protocol)
    with pytest.raises(ValueError, match="2 query embeddings but the protocol has 1"):
        evaluate_search(gallery, np.ones((2, 2)), protocol)
    with pytest.raises(ValueError, match="query embeddings contain NaN"):
        evaluate_search(gallery, [[np.nan, 1.0]], protocol)
    with pytest.raises(ValueError, match="embeddings contain NaN"):
        gallery_of([([[0, 0, 10, 10]], [1.0], [[np.nan, 0.0]])], 2)
    with pytest.raises(ValueError, match="scores contain NaN"):
        gallery_of([([[0, 0, 10, 10]], [np.nan], [[1.0, 0.0]])], 2)
    with pytest.raises(ValueError, match="listed twice"):
        SearchProtocol(num_images=2, gallery_offsets=[0, 2], gallery_images=[1, 1], gt_offsets=[0, 0],
                       gt_images=[], gt_boxes=np.zeros((0, 4)), count_gt=[0])
    with pytest.raises(ValueError, match="outside 0..1"):
        SearchProtocol.from_galleries([[(2, None)]], 2)
    with pytest.raises(ValueError, match="strategy"):
        evaluate_search(gallery, np.ones((1, 2)), protocol, strategy="fast")


# ----------------------------------------------------------------------------- detection
def test_detection_by_hand():
    # Image 0: gts A [0,0,10,10], B [20,0,30,10]; detections d0 = A (0.9), d1 overlaps A with IoU 0.6
    # (0.8), d2 = B shifted, IoU 1/3 (0.7). Image 1: gt C, no detection. Image 2: d3 (0.95), no gt.
    gallery = GalleryDetections.from_lists(
        [[[0, 0, 10, 10], [0, 0, 10, 6], [25, 0, 35, 10]], [], [[0, 0, 5, 5]]],
        [[0.9, 0.8, 0.7], [], [0.95]], [np.zeros((3, 1)), np.zeros((0, 1)), np.zeros((1, 1))], 1)
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10]], float)
    out = evaluate_detection(gallery, gt, [0, 0, 1])
    # One match (d0 - A): recall 1/3. Ranked: d3 (-), d0 (+), d1 (-), d2 (-): AP 1/2 x recall.
    assert out.count_tp == 1 and out.count_gt == 3
    assert out.recall == pytest.approx(100 / 3) and out.ap == pytest.approx(100 / 6)
    labelled = evaluate_detection(gallery, gt, [0, 0, 1], gt_labeled=[True, False, False])
    # Labelled only: image 0 keeps A; images without a labelled person (1, 2) are dropped entirely.
    assert labelled.count_gt == 1 and labelled.num_detections == 3
    assert labelled.recall == 100.0 and labelled.ap == pytest.approx(100.0)
    assert evaluate_detection(gallery, gt, [0, 0, 1], det_thresh=0.92).ap == 0.0


def test_detection_matches_the_reference():
    rng = np.random.default_rng(6)
    per_image, _, _ = random_case(rng, n_images=40, max_dets=8)
    gts, gt_image, labelled = [], [], []
    for i, (boxes, _, _) in enumerate(per_image):
        n = int(rng.integers(0, 5))
        near = boxes[rng.integers(0, len(boxes), n)] + rng.normal(0, 4, (n, 4)) if len(boxes) else \
            np.tile([10.0, 10, 50, 90], (n, 1))
        gts.append(near)
        gt_image += [i] * n
        labelled += (rng.random(n) < 0.6).tolist()
    gt = np.concatenate(gts)
    labelled = np.asarray(labelled)
    results = {"gallery": {str(i): {"boxes": b, "scores": s} for i, (b, s, _) in enumerate(per_image)}}
    reference_gt = {str(i): (gt[np.asarray(gt_image) == i], labelled[np.asarray(gt_image) == i])
                    for i in range(40)}
    gallery = gallery_of(per_image, 6)
    for thresh in (0.5, 0.0):
        for labeled_only in (False, True):
            ref = reference_impl.detection({k: v for k, v in reference_gt.items() if len(v[0]) or not labeled_only},
                                           _with_embeddings(results), det_thresh=thresh, labeled_only=labeled_only)
            ours = evaluate_detection(gallery, gt, gt_image, det_thresh=thresh,
                                      gt_labeled=labelled if labeled_only else None)
            assert abs(ours.ap - ref["ap"]) < 1e-9 and abs(ours.recall - ref["recall"]) < 1e-9


def _with_embeddings(results):
    gallery = {k: dict(v, embeddings=np.zeros((len(v["scores"]), 1), np.float32))
               for k, v in results["gallery"].items()}
    return {"gallery": gallery, "queries": np.zeros((0, 1), np.float32)}


def test_detection_rounds_iou_to_float32_as_the_field_stores_it():
    # IoU = 0.49999999387 in float64, exactly 0.5 in float32: the field's detection counts it (its IoU
    # matrix is float32); its search does not (IoU compared in float64).
    box = np.array([[19.108850479125977, 0.0, 100.0, 61.811458587646484]], np.float32)
    gt = np.array([[0.0, 0.0, 100.0, 100.0]])
    assert paired_iou(box, gt)[0] < 0.5 <= np.float32(paired_iou(box, gt)[0])
    gallery = GalleryDetections.from_lists([box], [[1.0]], [[[1.0]]], 1)
    assert evaluate_detection(gallery, gt, [0]).recall == 100.0
    ref = reference_impl.detection({"0": (gt, np.ones(1, bool))},
                                   {"gallery": {"0": {"boxes": box, "scores": [1.0], "embeddings": [[1.0]]}},
                                    "queries": np.ones((1, 1))})
    assert ref["recall"] == 100.0
    out = evaluate_search(gallery, [[1.0]], SearchProtocol.from_galleries([[(0, gt[0])]], 1))
    assert out.count_tp[0] == 0


def test_tied_detections_in_the_person_image():
    # Two detections overlap the person with the same similarity, a third does not (also tied). The field
    # lists the image in argsort(sim)[::-1] order (later first): d2, d1, d0; the first overlapping one, d1,
    # is the true positive. The final argsort(...)[::-1] puts the later-listed first: d0, d1, d2: rank 1.
    box = [0, 0, 40, 80]
    per_image = [([box, [1, 1, 40, 80], [100, 0, 140, 80]], [1, 1, 1], [[0.5], [0.5], [0.5]])]
    galleries = [[(0, box)]]
    for strategy in STRATEGIES:
        out = evaluate_search(gallery_of(per_image, 1), [[1.0]], SearchProtocol.from_galleries(galleries, 1),
                              strategy=strategy)
        assert out.first_tp_rank[0] == 1 and out.ap[0] == pytest.approx(1 / 3)
    assert_same(out, reference_impl.search(reference_gallery(per_image), np.ones((1, 1)),
                                           reference_galleries(galleries)))


def test_detection_ties_take_the_first_index():
    # d0 has the same IoU (9/11) with A and B; B = d1. Ties go to the first ground truth (A), so A-d0 and
    # B-d1 both match. Symmetrically, C has the same IoU with d2 and d3, and D = d3: C-d2 and D-d3 match.
    boxes = [[1, 0, 11, 10], [2, 0, 12, 10], [1, 50, 11, 60], [-1, 50, 9, 60]]
    gt = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [0, 50, 10, 60], [-1, 50, 9, 60]], float)
    gallery = GalleryDetections.from_lists([boxes], [[0.9, 0.8, 0.7, 0.6]], [np.zeros((4, 1))], 1)
    out = evaluate_detection(gallery, gt, [0, 0, 0, 0])
    assert out.count_tp == 4
    ref = reference_impl.detection({"0": (gt, np.ones(4, bool))}, {"gallery": {"0": {
        "boxes": np.asarray(boxes, float), "scores": [0.9, 0.8, 0.7, 0.6], "embeddings": np.zeros((4, 1))}},
        "queries": np.zeros((0, 1))})
    assert ref["recall"] == 100.0


def test_absent_rows_may_be_nan_or_minus_one():
    boxes = np.array([[0, 0, 10, 10], [-1, -1, -1, -1], [np.nan] * 4, [5, 5, 9, 9]], float)
    protocol = SearchProtocol.from_entries([0, 0, 1, 1], [0, 1, 0, 1], boxes, 2, 2)
    assert protocol.count_gt.tolist() == [1, 1] and protocol.gt_images.tolist() == [0, 1]
