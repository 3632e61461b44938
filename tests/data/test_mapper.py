"""PersonSearchDatasetMapper: person ids stay with their boxes through resize, flip and filtering."""
import copy

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from dcinet_d2.config import add_dcinet_config
from dcinet_d2.data.mapper import PersonSearchDatasetMapper

H, W = 100, 200


def _anno(box, pid=None, **extra):
    a = {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, **extra}
    if pid is not None:
        a["person_id"] = pid
    return a


@pytest.fixture
def image_dict(tmp_path):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8))
    return {
        "file_name": str(path), "height": H, "width": W, "image_id": "img.png", "camera_id": 3,
        "annotations": [
            _anno([10, 20, 50, 80], 7),
            _anno([210, 10, 230, 50], 3),  # outside the image: empty after clipping, filtered
            _anno([190, 60, 230, 100], -1),  # half outside
            _anno([100, 0, 140, 100], 12),
            _anno([60, 60, 70, 70]),  # no person_id: unlabelled
            _anno([0, 0, 20, 20], 5, iscrowd=1),  # crowd: dropped like Detectron2 does
        ],
    }


def _mapper(is_train, flip_prob, **kw):
    augs = [T.ResizeShortestEdge(50, max_size=1000), T.RandomFlip(prob=flip_prob, horizontal=True)]
    return PersonSearchDatasetMapper(is_train, augmentations=augs, image_format="BGR", **kw)


def test_resize_and_flip_keep_ids_with_boxes(image_dict):
    out = _mapper(True, 1.0)(image_dict)
    assert tuple(out["image"].shape) == (3, 50, 100)
    inst = out["instances"]
    # Scale 0.5, then x -> 100 - x: [10,20,50,80] -> [5,10,25,40] -> [75,10,95,40];
    # [190,60,230,100] -> [95,30,115,50] -> [-15,30,5,50] -> clipped [0,30,5,50];
    # [100,0,140,100] -> [50,0,70,50] -> [30,0,50,50]; [60,60,70,70] -> [30,30,35,35] -> [65,30,70,35].
    expected = [[75, 10, 95, 40], [0, 30, 5, 50], [30, 0, 50, 50], [65, 30, 70, 35]]
    assert torch.allclose(inst.gt_boxes.tensor, torch.tensor(expected, dtype=torch.float32))
    assert inst.gt_pids.dtype == torch.int64
    assert inst.gt_pids.tolist() == [7, -1, 12, -1]
    assert inst.gt_classes.tolist() == [0, 0, 0, 0]
    assert "annotations" not in out and out["camera_id"] == 3
    assert len(image_dict["annotations"]) == 6  # the input dict is not modified


def test_resize_without_flip(image_dict):
    inst = _mapper(True, 0.0)(image_dict)["instances"]
    expected = [[5, 10, 25, 40], [95, 30, 100, 50], [50, 0, 70, 50], [30, 30, 35, 35]]
    assert torch.allclose(inst.gt_boxes.tensor, torch.tensor(expected, dtype=torch.float32))
    assert inst.gt_pids.tolist() == [7, -1, 12, -1]


def test_random_flip_moves_each_id_with_its_box(image_dict):
    mapper = _mapper(True, 0.5)
    flipped = {7: [75, 10, 95, 40], 12: [30, 0, 50, 50]}
    plain = {7: [5, 10, 25, 40], 12: [50, 0, 70, 50]}
    seen = set()
    for _ in range(30):
        inst = mapper(image_dict)["instances"]
        boxes = dict(zip(inst.gt_pids.tolist(), inst.gt_boxes.tensor.tolist()))
        state = "flip" if boxes[7] == flipped[7] else "plain"
        assert {p: boxes[p] for p in (7, 12)} == (flipped if state == "flip" else plain)
        seen.add(state)
    assert seen == {"flip", "plain"}


def test_filtering_keeps_alignment_when_first_boxes_vanish(image_dict):
    d = copy.deepcopy(image_dict)
    d["annotations"] = [_anno([250, 0, 260, 10], 1), _anno([5, 5, 5, 40], 2), _anno([20, 20, 40, 60], 9)]
    inst = _mapper(True, 0.0)(d)["instances"]
    assert inst.gt_pids.tolist() == [9]
    assert inst.gt_boxes.tensor.tolist() == [[10.0, 10.0, 20.0, 30.0]]


def test_inference_keeps_annotations_and_extra_keys(image_dict):
    d = dict(image_dict, query_index=4, boxes=[[10, 20, 50, 80]])
    out = _mapper(False, 0.0)(d)
    assert out["annotations"] == image_dict["annotations"]  # original pixels, untouched
    assert out["instances"].gt_pids.tolist() == [7, -1, 12, -1]
    assert out["instances"].gt_boxes.tensor[0].tolist() == [5.0, 10.0, 25.0, 40.0]
    assert out["query_index"] == 4 and out["camera_id"] == 3
    assert out["boxes"].dtype == torch.float32 and out["boxes"].tolist() == [[10.0, 20.0, 50.0, 80.0]]
    assert (out["height"], out["width"]) == (H, W)

    out = _mapper(False, 0.0, keep_annotations=False)(image_dict)
    assert "annotations" not in out and "instances" not in out


def test_from_config(image_dict):
    cfg = get_cfg()
    add_dcinet_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (200,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TEST = 50
    cfg.INPUT.RANDOM_FLIP = "none"
    train = PersonSearchDatasetMapper(cfg, is_train=True)
    inst = train(image_dict)["instances"]
    assert tuple(train(image_dict)["image"].shape) == (3, 200, 400)
    assert inst.gt_boxes.tensor[0].tolist() == [20.0, 40.0, 100.0, 160.0]
    assert inst.gt_pids.tolist() == [7, -1, 12, -1]
    test = PersonSearchDatasetMapper(cfg, is_train=False)
    out = test(image_dict)
    assert tuple(out["image"].shape) == (3, 50, 100) and "annotations" in out
    assert "annotations" not in PersonSearchDatasetMapper(cfg, is_train=False, keep_annotations=False)(image_dict)


@pytest.mark.parametrize("keep", ["header only", "half"])
def test_truncated_image_is_named(image_dict, tmp_path, keep):
    """An image cut short on disk: PIL says "Truncated File Read" or "image file is truncated" and names no
    file; the mapper's error names it (train_net.py prints that one line)."""
    whole = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8))[1].tobytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(whole[:40] if keep == "header only" else whole[: len(whole) // 2])
    cfg = get_cfg()
    add_dcinet_config(cfg)
    mapper = PersonSearchDatasetMapper(cfg, is_train=True)
    with pytest.raises(OSError, match="cut.jpg: not a readable image"):
        mapper(dict(image_dict, file_name=str(path)))
