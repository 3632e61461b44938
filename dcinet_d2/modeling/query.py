"""Embedding given boxes (queries, ground-truth gallery boxes) with a trained I-Net / DC-I-Net model."""
from typing import Dict, List

import torch
from detectron2.structures import Boxes, Instances


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
