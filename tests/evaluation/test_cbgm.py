"""CBGM re-scoring (dcinet_d2.evaluation.cbgm): against a brute force over all matchings, on hand-made cases,
through the evaluation core (dense and pair-by-pair layouts agree) and through dcinet-eval."""
import itertools
import json
import math

import numpy as np
import pytest
import torch

import eval_trees
from dcinet_d2.config import add_dcinet_config
from dcinet_d2.data.writers import write_cuhk_sysu
from dcinet_d2.evaluation.cbgm import ContextMatching, cbgm_rescore, default_k, query_context
from dcinet_d2.evaluation.cli import main
from dcinet_d2.evaluation.offline import evaluate_search_results
from dcinet_d2.evaluation.protocol import GalleryDetections, SearchProtocol
from dcinet_d2.evaluation.search_metrics import evaluate_search


# ----------------------------------------------------------------------------- brute force
def _best_matching(weights):
    """All maximum-weight matchings of min(rows, cols) edges, by enumeration: (best total, list of edge lists)."""
    m, n = weights.shape
    if m <= n:
        matchings = [list(zip(range(m), cols)) for cols in itertools.permutations(range(n), m)]
    else:
        matchings = [list(zip(rows, range(n))) for rows in itertools.permutations(range(m), n)]
    totals = [sum(weights[i, j] for i, j in edges) for edges in matchings]
    best = max(totals)
    return best, [edges for edges, t in zip(matchings, totals) if t == best]


def brute_force(sim, pair_query, pair_det, det_image, det_emb, ctx_offsets, ctx_emb, k1):
    """CBGM with loops; None if some graph has two optimal matchings that disagree (exact ties)."""
    out = np.array(sim, dtype=np.float64)
    for q in sorted(set(pair_query.tolist())):
        context = ctx_emb[ctx_offsets[q]:ctx_offsets[q + 1]]
        if len(context) == 0:
            continue
        mine = [p for p in range(len(sim)) if pair_query[p] == q]
        top = sorted(mine, key=lambda p: (-sim[p], pair_det[p]))[:k1]
        for image in sorted({int(det_image[pair_det[p]]) for p in top}):
            members = [p for p in mine if det_image[pair_det[p]] == image]
            weights = np.array([[sim[p] for p in members]] +
                               [[float(np.dot(c, det_emb[pair_det[p]])) for p in members] for c in context])
            _, optima = _best_matching(weights)
            outcomes = set()
            for edges in optima:
                query_edge = [j for i, j in edges if i == 0]
                outcomes.add((query_edge[0], max(weights[i, j] for i, j in edges)) if query_edge else None)
            if len(outcomes) > 1:
                return None
            outcome = outcomes.pop()
            if outcome is not None:
                out[members[outcome[0]]] = outcome[1]
    return out


def _dyadic(rng, shape):
    """Values in (-1, 1) on a 1/1024 grid: their dot products and sums are exact in float64."""
    return rng.integers(-1023, 1024, shape).astype(np.float64) / 1024


def _random_case(rng):
    n_img, n_q, dim = int(rng.integers(2, 6)), int(rng.integers(1, 4)), 4
    counts = rng.integers(0, 6, n_img)
    det_image = np.repeat(np.arange(n_img), counts)
    det_emb = _dyadic(rng, (len(det_image), dim))
    query_emb = _dyadic(rng, (n_q, dim))
    ctx_counts = rng.integers(0, 4, n_q)
    ctx_offsets = np.concatenate([[0], np.cumsum(ctx_counts)])
    ctx_emb = _dyadic(rng, (int(ctx_counts.sum()), dim))
    pair_query, pair_det = [], []
    for q in range(n_q):
        for image in np.nonzero(rng.random(n_img) < 0.7)[0]:
            rows = np.nonzero(det_image == image)[0]
            pair_query += [q] * len(rows)
            pair_det += rows.tolist()
    order = rng.permutation(len(pair_det))  # the layout must not matter
    pair_query, pair_det = np.asarray(pair_query, np.int64)[order], np.asarray(pair_det, np.int64)[order]
    sim = np.einsum("pd,pd->p", query_emb[pair_query], det_emb[pair_det])
    return sim, pair_query, pair_det, det_image, det_emb, ctx_offsets, ctx_emb


def test_rescore_equals_the_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    checked = changed = 0
    for _ in range(300):
        case = _random_case(rng)
        k1 = int(rng.choice([1, 2, 3, 5, 100]))
        expected = brute_force(*case, k1)
        if expected is None:
            continue
        got = cbgm_rescore(*case, k1)
        np.testing.assert_array_equal(got, expected)
        checked += 1
        changed += int(np.any(got != case[0]))
    assert checked > 250 and changed > 50  # the cases exercise the rule, not only the identity


# ----------------------------------------------------------------------------- hand-made cases
E = np.eye(4)
QUERY_BOX = [10, 10, 60, 160]


def _unit(*v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _companion_gallery(query_image_people):
    """Image 0: the query image; image 1: the person P (similarity 0.5) with a companion look-alike C';
    image 2: a distractor D (similarity 0.6) with a stranger."""
    boxes = [QUERY_BOX, [100, 10, 150, 160]][:len(query_image_people)] + \
        [[10, 10, 60, 160], [100, 10, 150, 160], [10, 10, 60, 160], [100, 10, 150, 160]]
    emb = list(query_image_people) + [_unit(0.5, 0, 0.75 ** 0.5, 0), _unit(0, 0.95, 0, 0.0975 ** 0.5),
                                      _unit(0.6, 0, 0, 0.8), E[3]]
    n0 = len(query_image_people)
    return GalleryDetections(boxes=boxes, scores=[0.99, 0.9][:n0] + [0.9] * 4, embeddings=emb,
                             image_index=[0] * n0 + [1, 1, 2, 2], num_images=3)


def _companion_protocol():
    return SearchProtocol.from_galleries([[(1, [10, 10, 60, 160]), (2, None)]], 3)


@pytest.mark.parametrize("strategy", ["pairs", "dense"])
def test_a_gallery_image_holding_the_companion_moves_up(strategy):
    gallery = _companion_gallery([E[0], E[1]])  # the query person and the companion C
    protocol = _companion_protocol()
    plain = evaluate_search(gallery, [E[0]], protocol, strategy=strategy)
    assert plain.first_tp_rank[0] == 1 and plain.ap[0] == pytest.approx(0.5)  # D (0.6) before P (0.5)
    hook = ContextMatching.build(gallery, [0], [QUERY_BOX], k1=10, k2=3)
    assert hook.queries_with_context == 1
    np.testing.assert_array_equal(hook.context_embeddings, [E[1]])  # the query's own detection is suppressed
    rescored = evaluate_search(gallery, [E[0]], protocol, strategy=strategy, rescore=hook)
    assert rescored.first_tp_rank[0] == 0 and rescored.ap[0] == 1.0


def test_the_matched_detection_takes_the_largest_matched_edge():
    gallery = _companion_gallery([E[0], E[1]])
    offsets, context = query_context(gallery, [0], [QUERY_BOX], k2=3)
    pair_det = np.arange(2, 6)  # images 1 and 2
    sim = gallery.embeddings[pair_det].astype(np.float64) @ E[0]
    out = cbgm_rescore(sim, np.zeros(4, np.int64), pair_det, gallery.image_index, gallery.embeddings, offsets,
                       context, k1=10)
    # P takes C-C' (0.95 > 0.5); C' unchanged; D keeps its own 0.6 (larger than C with the stranger, 0)
    np.testing.assert_allclose(out, [0.95, sim[1], 0.6, sim[3]], rtol=0, atol=1e-6)  # float32 embeddings
    # k1 = 1: only the image of the best detection (D's) is a candidate; P keeps 0.5
    out = cbgm_rescore(sim, np.zeros(4, np.int64), pair_det, gallery.image_index, gallery.embeddings, offsets,
                       context, k1=1)
    np.testing.assert_array_equal(out, sim)


@pytest.mark.parametrize("case", ["alone", "companion below det_thresh", "query image not in gallery", "k2 = 1"])
def test_without_context_the_scores_are_unchanged(case):
    people = [E[0]] if case == "alone" else [E[0], E[1]]
    gallery = _companion_gallery(people)
    if case == "companion below det_thresh":
        gallery = GalleryDetections(boxes=gallery.boxes, scores=np.r_[0.99, 0.3, gallery.scores[2:]],
                                    embeddings=gallery.embeddings, image_index=gallery.image_index, num_images=3)
    image, k2 = (-1 if case == "query image not in gallery" else 0), (1 if case == "k2 = 1" else 3)
    hook = ContextMatching.build(gallery, [image], [QUERY_BOX], k1=10, k2=k2)
    assert hook.queries_with_context == 0
    protocol = _companion_protocol()
    for strategy in ("pairs", "dense"):
        plain = evaluate_search(gallery, [E[0]], protocol, strategy=strategy)
        rescored = evaluate_search(gallery, [E[0]], protocol, strategy=strategy, rescore=hook)
        assert rescored.mAP == plain.mAP and np.array_equal(rescored.first_tp_rank, plain.first_tp_rank)
    sim = gallery.embeddings[2:].astype(np.float64) @ E[0]
    out = cbgm_rescore(sim, np.zeros(4, np.int64), np.arange(2, 6), gallery.image_index, gallery.embeddings,
                       hook.context_offsets, hook.context_embeddings, k1=10)
    np.testing.assert_array_equal(out, sim)


def test_context_is_the_most_confident_other_people_of_the_query_image():
    boxes = [QUERY_BOX, [12, 12, 62, 158], [100, 0, 150, 100], [200, 0, 250, 100], [300, 0, 350, 100],
             [400, 0, 450, 100], [0, 0, 10, 10]]
    scores = [0.95, 0.97, 0.6, 0.9, 0.4, 0.8, 0.99]
    emb = np.eye(7)
    gallery = GalleryDetections(boxes=boxes, scores=scores, embeddings=emb, image_index=[0] * 6 + [1],
                                num_images=2)
    offsets, context = query_context(gallery, [0, 1, -1], [QUERY_BOX, QUERY_BOX, QUERY_BOX], k2=4, det_thresh=0.5)
    # query 0: rows 0, 1 overlap the query box (IoU > 0.5), row 4 is below 0.5: rows 3, 5, 2 by score, k2 - 1 = 3
    np.testing.assert_array_equal(offsets, [0, 3, 4, 4])
    np.testing.assert_array_equal(context[:3], emb[[3, 5, 2]])
    np.testing.assert_array_equal(context[3], emb[6])  # query 1: its image's only detection
    assert default_k("cuhk_sysu") == (10, 3) and default_k("prw") == (30, 4) and default_k("prw", 5, 0) == (5, 4)
    with pytest.raises(ValueError, match="k1 >= 1"):
        default_k("prw", -1)


# ----------------------------------------------------------------------------- through the core
@pytest.mark.parametrize("rest", [False, True])
def test_dense_and_pair_layouts_give_the_same_numbers(rest):
    rng = np.random.default_rng(3)
    n_img, dim, n_q = 30, 8, 12
    counts = rng.integers(0, 6, n_img)
    index = np.repeat(np.arange(n_img), counts)
    xy = rng.uniform(0, 400, (len(index), 2))
    boxes = np.hstack([xy, xy + rng.uniform(20, 80, (len(index), 2))])
    emb = np.round(rng.standard_normal((len(index), dim)) * 4) / 4  # some exact ties
    gallery = GalleryDetections(boxes=boxes, scores=rng.uniform(0.3, 1, len(index)), embeddings=emb,
                                image_index=index, num_images=n_img)
    has = np.nonzero(counts)[0]
    query_images = rng.choice(has, n_q)
    query_boxes = np.array([boxes[index == i][0] for i in query_images])
    galleries = []
    for q in range(n_q):
        others = [i for i in rng.permutation(n_img)[:15].tolist() if i != query_images[q]]
        galleries.append([(i, boxes[index == i][0] if counts[i] and rng.random() < 0.3 else None) for i in others])
    protocol = SearchProtocol.from_galleries(galleries, n_img, rest=rest,
                                             exclude_images=query_images if rest else None)
    queries = np.round(rng.standard_normal((n_q, dim)) * 4) / 4
    hook = ContextMatching.build(gallery, query_images, query_boxes, k1=4, k2=3)
    assert hook.queries_with_context >= n_q // 3
    out = {s: evaluate_search(gallery, queries, protocol, strategy=s, rescore=hook, pairs_per_chunk=50)
           for s in ("pairs", "dense")}
    np.testing.assert_array_equal(out["pairs"].ap, out["dense"].ap)
    np.testing.assert_array_equal(out["pairs"].first_tp_rank, out["dense"].first_tp_rank)
    plain = evaluate_search(gallery, queries, protocol)
    assert not np.array_equal(plain.ap, out["pairs"].ap)


# ----------------------------------------------------------------------------- dcinet-eval and the evaluator
def _companion_tree(root, seed=0):
    """CUHK-SYSU tree where people walk in pairs (2k, 2k+1): every image holds one pair and a stranger.
    Results: the queried people (even ids) have noisy embeddings, their companions clean ones."""
    rng = np.random.default_rng(seed)
    names, scenes = [f"s{i}.jpg" for i in range(48)], []
    for i, name in enumerate(names):
        pair = i % 8
        scenes.append({"name": name, "image": np.zeros((8, 8, 3), np.uint8), "pids": [2 * pair, 2 * pair + 1, -1],
                       "boxes": np.array([[20, 40, 60, 150], [200, 40, 60, 150], [400, 40, 60, 150]], float)})
    queries = [(2 * p, names[p]) for p in range(8)]
    write_cuhk_sysu(str(root), scenes, test_names=set(names), queries=queries, gallery_sizes=(10,), seed=seed)
    directions = rng.standard_normal((17, 16))
    gallery = {}
    for s in scenes:
        noise = np.array([2.5, 0.1, 1.0])[:, None] * rng.standard_normal((3, 16)) / 4
        emb = directions[[s["pids"][0], s["pids"][1], 16]] / 4 + noise
        xyxy = s["boxes"].copy()
        xyxy[:, 2:] += xyxy[:, :2]  # detections on the annotated boxes (XYWH -> XYXY)
        gallery[s["name"]] = {"boxes": torch.tensor(xyxy, dtype=torch.float32),
                              "scores": torch.tensor([0.9, 0.8, 0.7]),
                              "embeddings": torch.nn.functional.normalize(torch.tensor(emb, dtype=torch.float32))}
    q = directions[[p for p, _ in queries]] + 0.1 * rng.standard_normal((8, 16))
    results = {"gallery": gallery, "queries": torch.nn.functional.normalize(torch.tensor(q, dtype=torch.float32))}
    path = root / "results.pth"
    torch.save(results, path)
    return str(root), results, str(path)


@pytest.fixture(scope="module")
def companions(tmp_path_factory):
    return _companion_tree(tmp_path_factory.mktemp("cbgm"))


def test_command_line_with_and_without_cbgm(companions, capsys):
    root, _, path = companions
    base = ["--format", "cuhk_sysu", "--root", root, "--results", path, "--gallery-size", "10"]
    assert main(base) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(base + ["--cbgm"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    both = json.loads(lines[-1])
    assert "CUHK-SYSU (gallery 10) + CBGM (k1 10, k2 3)" in "\n".join(lines[:-1])
    assert all(both[k] == plain[k] for k in plain)  # the plain numbers are those of a run without --cbgm
    assert both["cbgm_k1"] == 10 and both["cbgm_k2"] == 3
    assert both["mAP@cbgm"] > plain["mAP"] + 10 and both["top1@cbgm"] >= plain["top1"]
    assert main(base + ["--cbgm", "--cbgm-k1", "1", "--cbgm-k2", "2"]) == 0
    small = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (small["cbgm_k1"], small["cbgm_k2"]) == (1, 2) and small["mAP@cbgm"] != both["mAP@cbgm"]


@pytest.mark.parametrize("args, message", [
    (["--cbgm-k1", "5"], "error: --cbgm-k1 applies with --cbgm only"),
    (["--cbgm", "--cbgm-k2", "0"], "error: --cbgm-k2 0: expected a whole number >= 1"),
])
def test_command_line_cbgm_errors(companions, capsys, args, message):
    root, _, path = companions
    assert main(["--format", "cuhk_sysu", "--root", root, "--results", path, "--gallery-size", "10"] + args) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == message


def test_evaluator_reports_cbgm_metrics_beside_the_plain_ones(companions, tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog

    from dcinet_d2.evaluation.evaluator import build_person_search_evaluator

    root, results, _ = companions
    MetadataCatalog.get("cbgm_test_gallery").set(dataset_format="cuhk_sysu", root=root)
    cfg = get_cfg()
    add_dcinet_config(cfg)
    assert not cfg.TEST.PERSON_SEARCH.CBGM and cfg.TEST.PERSON_SEARCH.CBGM_K1 == 0
    cfg.merge_from_list(["TEST.PERSON_SEARCH.CBGM", "True", "TEST.PERSON_SEARCH.GALLERY_SIZES", "[10]",
                         "TEST.PERSON_SEARCH.COCO_AP", "False"])
    evaluator = build_person_search_evaluator(cfg, "cbgm_test_gallery", str(tmp_path))._evaluators[0]
    metrics = evaluator._metrics(results)
    offline = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=10, cbgm=True)
    assert metrics["mAP"] == offline["mAP"] and metrics["mAP@cbgm"] == offline["cbgm"]["mAP"]
    assert {"top1@cbgm", "top5@cbgm", "top10@cbgm"} <= set(metrics)
    assert (tmp_path / "cmc.png").stat().st_size > 0  # plain and CBGM curves


def test_evaluator_reports_embedding_spread_and_warns_on_collapse(companions, tmp_path, caplog):
    """A trained model whose re-id branch collapsed (every box embedded alike) scored mAP 2 beside detection
    AP 92 without a word; the evaluator now reports the mean cosine between gallery detections and warns."""
    import copy
    import logging

    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog

    from dcinet_d2.evaluation.evaluator import build_person_search_evaluator

    root, results, _ = companions
    MetadataCatalog.get("cbgm_test_gallery").set(dataset_format="cuhk_sysu", root=root)
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.merge_from_list(["TEST.PERSON_SEARCH.GALLERY_SIZES", "[10]", "TEST.PERSON_SEARCH.COCO_AP", "False"])
    evaluator = build_person_search_evaluator(cfg, "cbgm_test_gallery", str(tmp_path))._evaluators[0]
    emb = torch.cat([g["embeddings"] for g in results["gallery"].values()]).double()
    sim = emb @ emb.t()
    brute = float((sim.sum() - sim.diagonal().sum()) / (len(emb) * (len(emb) - 1)))
    with caplog.at_level(logging.WARNING):
        metrics = evaluator._metrics(results)
    assert metrics["embed_mean_cos"] == pytest.approx(brute, abs=1e-9) and brute < 0.5
    assert "collapsed" not in caplog.text
    collapsed = copy.deepcopy(results)
    for g in collapsed["gallery"].values():  # one direction, plus float noise
        g["embeddings"] = torch.nn.functional.normalize(torch.ones_like(g["embeddings"])
                                                        + 1e-4 * torch.randn_like(g["embeddings"]))
    with caplog.at_level(logging.WARNING):
        metrics = evaluator._metrics(collapsed)
    assert metrics["embed_mean_cos"] > 0.999 and "embeddings have collapsed: mean cosine 1.000" in caplog.text
    caplog.clear()
    for g in collapsed["gallery"].values():  # a dead branch: every embedding zero
        g["embeddings"] = torch.zeros_like(g["embeddings"])
    with caplog.at_level(logging.WARNING):
        metrics = evaluator._metrics(collapsed)
    assert math.isnan(metrics["embed_mean_cos"]) and "144 of 144 gallery detections have an all-zero" in caplog.text
    for g in collapsed["gallery"].values():  # no detection at all (an early model): scores 0, no crash
        g.update(boxes=torch.zeros(0, 4), scores=torch.zeros(0), embeddings=torch.zeros(0, 16))
    metrics = evaluator._metrics(collapsed)
    assert metrics["mAP"] == 0 and metrics["top1"] == 0 and math.isnan(metrics["embed_mean_cos"])


def test_query_people_of_every_format(companions, tmp_path):
    from dcinet_d2.data.prw import read_queries
    from dcinet_d2.evaluation import cuhk_sysu, generic, prw

    root, _, _ = companions
    images, boxes = cuhk_sysu.query_people(root, 10)
    names = cuhk_sysu.gallery_images(root)
    assert [names[i] for i in images] == [f"s{p}.jpg" for p in range(8)]
    np.testing.assert_array_equal(boxes, np.tile([20, 40, 80, 190], (8, 1)))  # the even id's box, XYXY

    prw_root = tmp_path / "prw"
    frames, queries = eval_trees.prw_tree(prw_root, n_frames=40, n_train=10, n_ids=12, n_queries=8, seed=1)
    images, boxes = prw.query_people(str(prw_root))
    names = prw.gallery_images(str(prw_root))
    expected = read_queries(str(prw_root))
    assert [names[i] for i in images] == [q["query_image"] for q in expected]
    np.testing.assert_array_equal(boxes, [q["query_box"] for q in expected])
    results = eval_trees.random_results(frames, queries, seed=5)
    out = evaluate_search_results(results, "prw", str(prw_root), cbgm=True)
    plain = evaluate_search_results(results, "prw", str(prw_root))
    assert out["mAP"] == plain["mAP"] and (out["cbgm"]["k1"], out["cbgm"]["k2"]) == (30, 4)
    assert out["cbgm"]["queries_with_context"] > 0 and out["cbgm"]["per_query"]["ap"].shape == (8,)

    data = {"images": [{"id": 1, "file_name": "g/1.jpg"}, {"id": 2, "file_name": "q/2.jpg", "split": "query"},
                       {"id": 3, "file_name": "g/3.jpg", "height": 50, "width": 30}],
            "annotations": [{"id": i, "image_id": img, "bbox": [5, 5, 40, 60], "category_id": 1, "identity": 7}
                            for i, img in ((10, 1), (20, 2), (30, 3))],
            "categories": [{"id": 1, "name": "person"}], "queries": [20, 30, 10]}
    path = tmp_path / "generic.json"
    path.write_text(json.dumps(data))
    images, boxes = generic.query_people(str(path))
    assert images.tolist() == [-1, 1, 0]  # a "query" image is no gallery image: no context
    np.testing.assert_array_equal(boxes, [[5, 5, 45, 65], [5, 5, 30, 50], [5, 5, 45, 65]])  # clipped to 30 x 50
