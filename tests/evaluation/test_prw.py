"""PRW protocol ("all" and cross-camera) on trees written by dcinet_d2.data.writers, against the loop reference."""
import numpy as np
import pytest
import torch

import eval_trees
import reference_impl
from dcinet_d2.data.prw import camera_id, read_queries
from dcinet_d2.data.writers import write_prw
from dcinet_d2.evaluation import prw
from dcinet_d2.evaluation.offline import evaluate_search_results


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("prw")
    images, queries = eval_trees.prw_tree(root, n_frames=70, n_train=15, n_ids=20, n_queries=25, n_cams=3, seed=0)
    return str(root), images, queries


@pytest.mark.parametrize("cross", [False, True])
def test_search_matches_the_reference(tree, cross):
    root, images, queries = tree
    results = eval_trees.random_results(images, queries, seed=11, missing=2)
    out = evaluate_search_results(results, "prw", root, cross_camera=cross)
    ref = reference_impl.prw(root, results, cross)
    np.testing.assert_allclose(out["per_query"]["ap"], ref["aps"], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(out["per_query"]["first_tp_rank"], ref["first_rank"])
    for key in ("mAP", "top1", "top5", "top10"):
        assert abs(out[key] - ref[key]) < 1e-9
    assert 0 < out["mAP"] < 100
    for labeled_only in (False, True):
        out = evaluate_search_results(results, "prw", root, cross_camera=cross, labeled_only=labeled_only)
        det = reference_impl.detection(reference_impl.prw_detection_gt(root), results, labeled_only=labeled_only)
        assert abs(out["det_ap"] - det["ap"]) < 1e-9 and abs(out["det_recall"] - det["recall"]) < 1e-9


def test_ground_truth_counts(tree):
    root, images, _ = tree
    names = prw.gallery_images(root)
    queries = read_queries(root)
    everywhere = prw.search_protocol(root)
    cross = prw.search_protocol(root, cross_camera=True)
    for q, query in enumerate(queries):
        holding = [n for n in names if n != query["query_image"] and query["pid"] in images[n][1]]
        assert everywhere.count_gt[q] == len(holding)
        other = [n for n in holding if camera_id(n) != camera_id(query["query_image"])]
        assert cross.count_gt[q] == len(other)
        mask = cross.image_mask(q, q + 1)[0]
        assert mask.sum() == sum(camera_id(n) != camera_id(query["query_image"]) for n in names)
    assert (cross.count_gt < everywhere.count_gt).any()


def test_first_box_of_a_doubled_identity_is_the_ground_truth(tmp_path):
    # Frame 2 holds identity 7 twice; its first box is the ground truth.
    image = np.zeros((8, 8, 3), np.uint8)
    scenes = [{"name": "c1s1_000001.jpg", "image": image, "boxes": [[0, 0, 40, 80]], "pids": [7]},
              {"name": "c2s1_000002.jpg", "image": image, "boxes": [[100, 0, 40, 80], [0, 0, 40, 80]], "pids": [7, 7]}]
    write_prw(str(tmp_path), scenes, train_names=set(), queries=[(7, "c1s1_000001.jpg")])
    protocol = prw.search_protocol(str(tmp_path))
    np.testing.assert_array_equal(protocol.gt_boxes[protocol.gt_images == 1], [[100, 0, 140, 80]])
    assert protocol.count_gt.tolist() == [1]  # the query's own frame is not in its gallery
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    for box, ap in (([100, 0, 140, 80], 100.0), ([0, 0, 40, 80], 0.0)):
        results = {"gallery": {"c2s1_000002.jpg": {"boxes": t([box]), "scores": t([1.0]), "embeddings": t([[1.0]])}},
                   "queries": t([[1.0]])}
        assert evaluate_search_results(results, "prw", str(tmp_path))["mAP"] == ap
