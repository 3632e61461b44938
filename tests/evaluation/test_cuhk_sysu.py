"""CUHK-SYSU protocol on trees written by dcinet_d2.data.writers, against the loop reference."""
import numpy as np
import pytest

import eval_trees
import reference_impl
from dcinet_d2.data.cuhk_sysu import read_test_protocol
from dcinet_d2.evaluation import cuhk_sysu
from dcinet_d2.evaluation.offline import evaluate_search_results


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuhk")
    images, queries = eval_trees.cuhk_tree(root, n_images=80, n_test=60, n_ids=25, n_queries=25,
                                           gallery_sizes=(10, 50), seed=0)
    return str(root), images, queries


def assert_matches_reference(out, ref):
    np.testing.assert_allclose(out["per_query"]["ap"], ref["aps"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["per_query"]["first_tp_rank"], ref["first_rank"])
    for key in ("mAP", "top1", "top5", "top10"):
        assert abs(out[key] - ref[key]) < 1e-9


@pytest.mark.parametrize("size", [10, 50, -1])
def test_search_matches_the_reference(tree, size):
    root, images, queries = tree
    results = eval_trees.random_results(images, queries, seed=size + 7, missing=2)
    out = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=size)
    assert_matches_reference(out, reference_impl.cuhk_sysu(root, results, size))
    assert 0 < out["mAP"] < 100 and out["per_query"]["count_tp"].sum() > 0
    det = reference_impl.detection(reference_impl.cuhk_sysu_detection_gt(root), results)
    assert abs(out["det_ap"] - det["ap"]) < 1e-9 and abs(out["det_recall"] - det["recall"]) < 1e-9


def test_labelled_detection_matches_the_reference(tree):
    root, images, queries = tree
    results = eval_trees.random_results(images, queries, seed=3)
    out = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=10, labeled_only=True)
    det = reference_impl.detection(reference_impl.cuhk_sysu_detection_gt(root), results, labeled_only=True)
    assert abs(out["det_ap"] - det["ap"]) < 1e-9 and abs(out["det_recall"] - det["recall"]) < 1e-9
    assert out["detection"]["count_gt"] < sum(len(b) for b, _ in images.values())


def test_full_set_gallery(tree):
    root, _, _ = tree
    protocol = cuhk_sysu.search_protocol(root, -1)
    names = cuhk_sysu.gallery_images(root)
    first = read_test_protocol(root, 50)[0]
    mask = protocol.image_mask(0, 1)[0]
    # Every test image but the query's own; the TestG50 gallery first, then the others in pool order.
    assert mask.sum() == len(names) - 1 and not mask[names.index(first["query_image"])]
    _, listed, _ = protocol.entries(0, 1)
    assert [names[i] for i in listed[:50]] == [name for name, _ in first["gallery"]]
    assert list(listed[50:]) == sorted(listed[50:])
    np.testing.assert_array_equal(protocol.count_gt, cuhk_sysu.search_protocol(root, 50).count_gt)


def test_duplicates_and_the_query_image_in_its_gallery(tmp_path):
    # TestG100 lists an image twice for a few queries and the query's own image for two: both kept.
    root = str(tmp_path)
    images, queries = eval_trees.cuhk_tree(root, n_images=40, n_test=30, n_ids=12, n_queries=8,
                                           gallery_sizes=(10,), seed=1)
    protocol_queries = read_test_protocol(root, 10)
    entries = []
    for k, q in enumerate(protocol_queries):
        xywh = lambda b: None if b is None else [b[0], b[1], b[2] - b[0], b[3] - b[1]]  # noqa: E731
        gallery = [(name, xywh(box)) for name, box in q["gallery"]]
        if k % 2 == 0:
            gallery.insert(1, gallery[0])  # a duplicate (of a positive entry: the person's first image)
        if k % 3 == 0:
            gallery.append((q["query_image"], xywh(q["query_box"])))  # the query's own image
        entries.append((q["query_image"], xywh(q["query_box"]), q["pid"], gallery))
    eval_trees.write_test_protocol(root, 10, entries)
    protocol = cuhk_sysu.search_protocol(root, 10)
    assert protocol.count_gt[0] == sum(box is not None for _, box in entries[0][3])  # duplicates count twice
    assert np.diff(protocol.gallery_offsets)[0] == len(entries[0][3]) - 1  # but are listed once
    results = eval_trees.random_results(images, queries, seed=5)
    out = evaluate_search_results(results, "cuhk_sysu", root, gallery_size=10)
    assert_matches_reference(out, reference_impl.cuhk_sysu(root, results, 10))
    assert (out["per_query"]["count_gt"] > out["per_query"]["count_tp"]).any()


def test_gallery_sizes(tree):
    root, _, _ = tree
    with pytest.raises(ValueError, match="unknown CUHK-SYSU gallery size 100"):
        cuhk_sysu.search_protocol(root, 100)
    with pytest.raises(ValueError, match="unknown CUHK-SYSU gallery size"):
        cuhk_sysu.check_gallery_size(root, "50")
    assert cuhk_sysu.search_protocol(root, 10).num_queries == 25


def test_full_set_needs_testg50(tmp_path):
    root = str(tmp_path)
    eval_trees.cuhk_tree(root, n_images=30, n_test=20, n_ids=10, n_queries=4, gallery_sizes=(10,), seed=2)
    with pytest.raises(FileNotFoundError, match="TestG50.mat"):
        cuhk_sysu.search_protocol(root, -1)
