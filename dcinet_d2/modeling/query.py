"""Embedding given boxes (queries, ground-truth gallery boxes) with a trained I-Net / DC-I-Net model, and the
check every given box passes first (the predictor's ``embed`` and the model's ``boxes`` inputs alike)."""
from typing import Dict, List

import numpy as np
import torch
from detectron2.structures import Boxes, Instances


__all__ = ["check_boxes", "embed_boxes"]


def check_boxes(boxes, height, width, what="box") -> np.ndarray:
    """Given boxes as float32 [k, 4], clipped to the image; ValueError for a box that is not finite,
    inverted, of zero area, or has no part inside the ``width`` x ``height`` image."""
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: expected boxes [k, 4] as x1, y1, x2, y2, got shape {boxes.shape}")
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        ordered = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        inside = (boxes[:, 0] < width) & (boxes[:, 1] < height) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    bad = np.flatnonzero(~(finite & ordered & inside))
    if len(bad):
        b = boxes[bad[0]]
        text = ",".join(f"{v:g}" for v in b)
        if not finite[bad[0]]:
            raise ValueError(f"{what} {text}: not a finite number")
        if not ordered[bad[0]]:
            raise ValueError(f"{what} {text}: expected x1 < x2 and y1 < y2 (XYXY in pixels)")
        raise ValueError(f"{what} {text}: lies outside the {width}x{height} image")
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    return clipped.astype(np.float32)


@torch.no_grad()
def embed_boxes(model, batched_inputs: List[Dict]) -> List[torch.Tensor]:
    """Re-id embeddings of given boxes, one forward pass of the backbone per image.

    Args:
        model: a GeneralizedRCNN whose roi_heads is an INetROIHeads / DCINetROIHeads (in eval mode).
        batched_inputs: Detectron2 test inputs (``image`` Tensor[C, H', W'] after resizing, ``height``,
            ``width`` of the original image) plus ``boxes`` (Tensor[k, 4], XYXY in original image pixels).
    Returns:
        list of Tensor[k, D], L2-normalised, one per input, in the order of its boxes.
    """
    images = model.preprocess_image(batched_inputs)
    features = model.backbone(images.tensor)
    instances = []
    for inp, size in zip(batched_inputs, images.image_sizes):
        boxes = torch.as_tensor(inp["boxes"], dtype=torch.float32, device=model.device).reshape(-1, 4)
        scale = torch.tensor([size[1] / inp["width"], size[0] / inp["height"]] * 2, device=boxes.device)
        inst = Instances(size, pred_boxes=Boxes(boxes * scale))
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        instances.append(inst)
    out = model.roi_heads.forward_with_given_boxes(features, instances)
    return [x.reid_embeddings for x in out]
