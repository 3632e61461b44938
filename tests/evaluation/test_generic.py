"""Search protocol of the generic gallery JSON format (hand-computed, and against the loop reference)."""
import json

import numpy as np
import pytest
import torch

import reference_impl
from dcinet_d2.evaluation import generic
from dcinet_d2.evaluation.offline import evaluate_search_results


def write_json(path, images, annotations, queries):
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "tattoo"}],
            "queries": queries}
    path.write_text(json.dumps(data))
    return str(path)


def ann(i, image, box, identity):
    return {"id": i, "image_id": image, "bbox": box, "category_id": 1, "identity": identity}


@pytest.fixture
def gallery_json(tmp_path):
    images = [{"id": 1, "file_name": "a/1.jpg", "split": "gallery"},
              {"id": 2, "file_name": "b/2.jpg", "split": "gallery", "height": 100, "width": 50},
              {"id": 3, "file_name": "c/3.jpg"},  # gallery by default
              {"id": 4, "file_name": "q/4.jpg", "split": "query"},
              {"id": 5, "file_name": "t/5.jpg", "split": "train"}]
    annotations = [ann(10, 1, [0, 0, 20, 40], 5), ann(11, 1, [30, 0, 20, 40], -1),
                   ann(20, 2, [10, 10, 60, 40], 5),  # clipped to the 50 px wide image: [10, 10, 50, 50]
                   ann(30, 3, [0, 0, 20, 40], 6), ann(31, 3, [0, 0, 20, 40], 5),
                   ann(40, 4, [0, 0, 20, 40], 6), ann(50, 5, [0, 0, 20, 40], 5)]
    return write_json(tmp_path / "gallery.json", images, annotations, [10, 40])


def test_protocol(gallery_json):
    assert generic.gallery_images(gallery_json) == ["1.jpg", "2.jpg", "3.jpg"]
    protocol = generic.search_protocol(gallery_json)
    # Query 0 (identity 5, in gallery image 1.jpg): searches 2.jpg and 3.jpg, both hold identity 5.
    # Query 1 (identity 6, in query-only image 4.jpg): searches all three, 3.jpg holds it.
    np.testing.assert_array_equal(protocol.image_mask(0, 2), [[False, True, True], [True, True, True]])
    assert protocol.count_gt.tolist() == [2, 1]
    gt_q, gt_img, gt_box = protocol.ground_truth(0, 1)
    np.testing.assert_array_equal(gt_img, [0, 1, 2])  # the query's own image is listed, not counted
    np.testing.assert_allclose(gt_box[1], [10, 10, 50, 50])
    boxes, image_index, labelled = generic.detection_ground_truth(gallery_json)
    assert image_index.tolist() == [0, 0, 1, 2, 2] and labelled.tolist() == [True, False, True, True, True]


def test_evaluation_by_hand(gallery_json):
    t = lambda v: torch.tensor(v, dtype=torch.float32)  # noqa: E731
    results = {"gallery": {
        "1.jpg": {"boxes": t([[0, 0, 20, 40]]), "scores": t([0.9]), "embeddings": t([[1.0, 0.0]])},
        "2.jpg": {"boxes": t([[10, 10, 50, 50], [0, 0, 5, 5]]), "scores": t([0.9, 0.9]),
                  "embeddings": t([[0.6, 0.8], [0.8, 0.6]])},
        "3.jpg": {"boxes": t([[0, 0, 20, 40]]), "scores": t([0.9]), "embeddings": t([[0.0, 1.0]])}},
        "queries": t([[1.0, 0.0], [0.0, 1.0]])}
    out = evaluate_search_results(results, "generic", gallery_json)
    # Query 0 ranks 2.jpg d1 (0.8, -), 2.jpg d0 (0.6, +), 3.jpg (0.0, +): AP = (1/2 + 2/3) / 2.
    # Query 1 ranks 3.jpg (1.0, +) first: AP 1.
    np.testing.assert_allclose(out["per_query"]["ap"], [(1 / 2 + 2 / 3) / 2, 1.0])
    assert out["top1"] == 50.0 and out["top5"] == 100.0
    galleries = [[("2.jpg", np.array([10, 10, 50, 50.0])), ("3.jpg", np.array([0, 0, 20, 40.0]))],
                 [("1.jpg", None), ("2.jpg", None), ("3.jpg", np.array([0, 0, 20, 40.0]))]]
    gallery, queries = reference_impl._as_numpy(results)
    ref = reference_impl.search(gallery, queries, galleries)
    np.testing.assert_allclose(out["per_query"]["ap"], ref["aps"], atol=1e-12)
    # Detection: 3 of 5 annotated objects matched (the unlabelled one in 1.jpg is missed; 3.jpg holds two
    # identical boxes and one detection).
    assert out["det_recall"] == pytest.approx(60.0)


def test_duplicate_base_names(tmp_path):
    images = [{"id": 1, "file_name": "a/1.jpg"}, {"id": 2, "file_name": "b/1.jpg"}]
    path = write_json(tmp_path / "dup.json", images, [ann(1, 1, [0, 0, 5, 5], 1)], [1])
    with pytest.raises(ValueError, match="share the base name '1.jpg'"):
        generic.search_protocol(path)
