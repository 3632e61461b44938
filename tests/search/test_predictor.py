"""PersonSearchPredictor: input checks, query-box embedding, batches, checked weights."""
import numpy as np
import pytest
import torch

from dcinet_d2.modeling.query import check_boxes
from dcinet_d2.search.predictor import PersonSearchPredictor, check_image

from .conftest import scene


@pytest.fixture(scope="module")
def predictor(tiny_model):
    from detectron2.config import get_cfg

    from dcinet_d2 import add_dcinet_config

    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.merge_from_file(tiny_model[0])
    cfg.MODEL.WEIGHTS = tiny_model[1]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return PersonSearchPredictor(cfg)


def test_image_checks():
    with pytest.raises(ValueError, match=r"float image in \[0, 1\]"):
        check_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        check_image(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="numpy uint8 array"):
        check_image([[1, 2, 3]])


@pytest.mark.parametrize("box,match", [([5, 5, 5, 9], "x1 < x2"), ([9, 5, 2, 9], "x1 < x2"),
                                       ([100, 0, 120, 10], "outside the 50x40 image"),
                                       ([-20, -9, -1, 5], "outside"), ([0, 0, float("nan"), 3], "not a finite")])
def test_box_checks(box, match):
    with pytest.raises(ValueError, match=match):
        check_boxes([box], 40, 50)


def test_box_partly_outside_is_clipped():
    np.testing.assert_array_equal(check_boxes([-5, 2, 60, 30], 40, 50), [[0, 2, 50, 30]])


def test_detections_and_query_embeddings_agree(predictor):
    """Embedding a detection's own box gives back its embedding: boxes travel correctly between original
    and resized pixels, and both paths run the same re-id head."""
    image = scene(0)
    people = predictor(image)
    assert len(people) > 0 and people.reid_embeddings.shape[1] == 64
    torch.testing.assert_close(people.reid_embeddings.norm(dim=1), torch.ones(len(people)))
    boxes = people.pred_boxes.tensor[:5]
    query = predictor.embed(image, boxes.numpy())
    assert query.shape == (len(boxes), 64)
    sims = (query * people.reid_embeddings[:5]).sum(1)
    assert sims.min() > 0.999


def test_batch_equals_single_images(predictor):
    images = [scene(1), scene(2)]  # same size: no extra padding in the batch
    batch = predictor.predict_batch(images)
    for image, out in zip(images, batch):
        single = predictor(image)
        torch.testing.assert_close(out.pred_boxes.tensor, single.pred_boxes.tensor, atol=1e-3, rtol=0)
        torch.testing.assert_close(out.reid_embeddings, single.reid_embeddings, atol=1e-4, rtol=0)


def test_rgb_format_flips_the_channels(predictor):
    image = scene(3)
    rgb = PersonSearchPredictor.__new__(PersonSearchPredictor)
    rgb.__dict__.update(predictor.__dict__, input_format="RGB")
    box = [[10, 10, 60, 100]]
    torch.testing.assert_close(rgb.embed(image[:, :, ::-1].copy(), box), predictor.embed(image, box))


def test_weights_are_checked(tiny_model, tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from dcinet_d2 import add_dcinet_config
    from dcinet_d2.testing import tiny_cfg

    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.merge_from_file(tiny_model[0])
    cfg.MODEL.WEIGHTS = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth: weights file not found"):
        PersonSearchPredictor(cfg)
    data = open(tiny_model[1], "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    cfg.MODEL.WEIGHTS = str(tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="cut.pth: not a readable checkpoint"):
        PersonSearchPredictor(cfg)
    other = tiny_cfg(roi_heads="INetROIHeads")  # another architecture: no DC-I-Net re-id head weights
    DetectionCheckpointer(build_model(other), save_dir=str(tmp_path)).save("inet")
    cfg.MODEL.WEIGHTS = str(tmp_path / "inet.pth")
    with pytest.raises(ValueError, match="another architecture"):
        PersonSearchPredictor(cfg)


def test_det_thresh_embeds_only_the_kept_detections_unchanged(predictor):
    """With the index's threshold passed down, the model returns exactly the detections scoring at or above
    it (one scoring exactly the threshold included), with the boxes, scores and embeddings of the
    every-detection run, and its re-id head runs on those boxes only."""
    image = scene(0)
    everything = predictor(image)
    t = float(everything.scores.median())  # a detection's own score: kept (the index keeps scores >= t)
    expected = everything[everything.scores >= t]
    assert 0 < len(expected) < len(everything)
    thresholded = PersonSearchPredictor(predictor.cfg, det_thresh=t)
    embedded = []
    thresholded.model.roi_heads.reid_head.register_forward_hook(lambda m, i, o: embedded.append(len(o)))
    kept = thresholded(image)
    assert embedded == [len(expected)]
    torch.testing.assert_close(kept.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=0)
    torch.testing.assert_close(kept.scores, expected.scores, rtol=0, atol=0)
    torch.testing.assert_close(kept.reid_embeddings, expected.reid_embeddings, rtol=0, atol=1e-6)


def test_workers_give_the_outputs_of_one_worker_in_order(predictor, gallery):
    """Indexing with 2 workers (each on 1 of 2 intra-op threads) returns, batch by batch in the items' order,
    the outputs of one worker on 1 thread, unreadable images skipped and named in both, torch's thread count
    restored."""
    from dcinet_d2.search.indexer import predicted_batches
    from dcinet_d2.search.sources import folder_items

    items = list(folder_items(str(gallery)))
    threads = torch.get_num_threads()
    try:
        runs = {}
        for workers, torch_threads in ((2, 2), (1, 1)):
            torch.set_num_threads(torch_threads)
            skipped = []
            runs[workers] = (list(predicted_batches(predictor, items, 2, workers, skipped)), skipped)
            assert torch.get_num_threads() == torch_threads
    finally:
        torch.set_num_threads(threads)
    (two, skipped_two), (one, skipped_one) = runs[2], runs[1]
    assert len(skipped_two) == 3 and skipped_two == skipped_one
    assert [[i.key for i in b] for b, _, _ in two] == [[i.key for i in b] for b, _, _ in one] \
        == [[i.key for i in items[s:s + 2]] for s in range(0, len(items), 2)]
    outputs = [(item.key, out) for _, loaded, outs in two for (item, _), out in zip(loaded, outs)]
    expected = [(item.key, out) for _, loaded, outs in one for (item, _), out in zip(loaded, outs)]
    assert [k for k, _ in outputs] == [k for k, _ in expected] and len(outputs) == 8
    assert sum(len(o) for _, o in outputs) > 0
    for (_, a), (_, b) in zip(outputs, expected):
        assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
        assert torch.equal(a.reid_embeddings, b.reid_embeddings)
