"""PersonSearchRCNN's lower-level path: a test input carrying ``boxes`` refuses the boxes the predictor's
``embed`` refuses (outside the image, zero area, inverted, not finite), naming the input and the box."""
import pytest
import torch
from detectron2.modeling import build_model

from dcinet_d2.testing import random_batch, tiny_cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    model.eval()
    return model


def _input(box, height=64, width=80):
    image = random_batch(num_images=1)[0]["image"]
    return {"image": image, "height": height, "width": width, "file_name": "scene.jpg",
            "boxes": torch.tensor([[10.0, 10.0, 40.0, 50.0], box])}


@pytest.mark.parametrize("box, message", [
    ([100.0, 10.0, 120.0, 50.0], "lies outside the 80x64 image"),
    ([10.0, -50.0, 40.0, -5.0], "lies outside the 80x64 image"),
    ([10.0, 10.0, 10.0, 50.0], "expected x1 < x2 and y1 < y2"),
    ([40.0, 10.0, 10.0, 50.0], "expected x1 < x2 and y1 < y2"),
    ([10.0, 10.0, 40.0, float("nan")], "not a finite number"),
    ([10.0, 10.0, float("inf"), 50.0], "not a finite number"),
])
def test_bad_given_boxes_are_refused(model, box, message):
    with torch.no_grad(), pytest.raises(ValueError, match=message) as error:
        model([_input(box)])
    assert "input 0 (scene.jpg): box" in str(error.value)


def test_good_given_boxes_are_embedded_as_given(model):
    """A box partly outside the image is embedded (the part inside counts), and the output keeps it as given."""
    inp = _input([60.0, 30.0, 100.0, 90.0])
    with torch.no_grad():
        out = model([inp])[0]["instances"]
    assert torch.equal(out.pred_boxes.tensor, inp["boxes"]) and out.reid_embeddings.shape == (2, 64)
