"""PersonSearchPredictor: Detectron2's DefaultPredictor for I-Net / DC-I-Net, plus query-box embedding.

    predictor = PersonSearchPredictor(cfg)          # cfg.MODEL.WEIGHTS: a trained checkpoint
    people = predictor(bgr_image)                   # Instances: pred_boxes, scores, reid_embeddings
    query = predictor.embed(bgr_image, [[x1, y1, x2, y2]])   # Tensor[1, D], L2-normalised
    similarity = people.reid_embeddings @ query[0]

Images follow DefaultPredictor's conventions: uint8 [H, W, 3] in BGR order (as ``cv2.imread`` gives; it is
flipped when ``cfg.INPUT.FORMAT`` is RGB), resized as at test time. Boxes are XYXY in original pixels.
"""
from typing import List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.structures import Instances

from ..checkpoint import load_weights
from ..modeling.inference import optimize_for_inference
from ..modeling.query import check_boxes

__all__ = ["PersonSearchPredictor", "check_image"]


def check_image(image, what="image") -> np.ndarray:
    """``image`` if it is a uint8 [H, W, 3] array; ValueError saying what was expected otherwise."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{what}: expected a numpy uint8 array [H, W, 3] in BGR order, got {type(image).__name__}")
    if image.dtype != np.uint8:
        hint = " (a float image in [0, 1]? multiply by 255 and convert to uint8)" if image.dtype.kind == "f" else ""
        raise ValueError(f"{what}: expected a uint8 array [H, W, 3] in BGR order, got dtype {image.dtype}{hint}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{what}: expected a uint8 array [H, W, 3] in BGR order, got shape {image.shape}")
    return image


class PersonSearchPredictor(DefaultPredictor):
    """DefaultPredictor of a PersonSearchRCNN model, returning Instances with ``reid_embeddings``."""

    def __init__(self, cfg, det_thresh: Optional[float] = None):
        """``det_thresh``: return (and so embed) exactly the detections scoring ``det_thresh`` or more, the
        rows a gallery index with that threshold keeps, in place of MODEL.ROI_HEADS.SCORE_THRESH_TEST. The
        re-id head then runs on those boxes only; the kept boxes and their embeddings are those of the
        config's lower threshold (a score threshold before NMS drops no box that scores above it)."""
        # DefaultPredictor.__init__ loads weights without checking them; do the same steps, checked.
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if det_thresh is not None:
            # Detectron2 keeps scores > its threshold, an index scores >= det_thresh (both in float32): the
            # float32 just below det_thresh makes the first the second.
            below = np.nextafter(np.float32(det_thresh), np.float32(-np.inf))
            self.model.roi_heads.box_predictor.test_score_thresh = float(below)
        # sha256 of the weights file as loaded: the model's identity in a gallery index (fingerprint.py).
        self.weights_sha256 = load_weights(self.model, cfg.MODEL.WEIGHTS)
        optimize_for_inference(self.model)  # same outputs, faster (norms folded, channels-last)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {self.input_format!r}: expected RGB or BGR")

    def _input(self, image, what="image", boxes=None):
        image = check_image(image, what)
        height, width = image.shape[:2]
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        resized = self.aug.get_transform(image).apply_image(image)
        inp = {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32")),
               "height": height, "width": width}
        if boxes is not None:
            inp["boxes"] = torch.from_numpy(check_boxes(boxes, height, width))
        return inp

    @torch.no_grad()
    def __call__(self, original_image) -> Instances:
        """Detections of one BGR uint8 image: Instances (on the CPU) with ``pred_boxes`` (XYXY, original
        pixels), ``scores``, ``pred_classes`` and ``reid_embeddings`` [N, D] (L2-normalised)."""
        return self.predict_batch([original_image])[0]

    @torch.no_grad()
    def predict_batch(self, images: Sequence[np.ndarray]) -> List[Instances]:
        """:meth:`__call__` of several images in one forward pass (a gallery's batch)."""
        inputs = [self._input(im, f"image {i}") for i, im in enumerate(images)]
        return [out["instances"].to("cpu") for out in self.model(inputs)]

    @torch.no_grad()
    def embed(self, image, boxes) -> torch.Tensor:
        """L2-normalised embeddings [k, D] (CPU) of the given boxes ([k, 4] or [4], XYXY in original pixels,
        clipped to the image) of one BGR uint8 image. ValueError for a box outside the image, inverted, of
        zero area or not finite."""
        out = self.model([self._input(image, "query image", boxes)])[0]["instances"]
        return out.reid_embeddings.to("cpu")

