"""I-Net and DC-I-Net as Detectron2 ROIHeads (docs/METHOD.md).

Both extend StandardROIHeads (any box head: fc6/fc7 for VGG16, ``Res5BoxHead`` for ResNet C4, a small
head for CPU configs) with a re-id branch whose embeddings ([N, D], L2-normalised) are returned at
inference as ``Instances.reid_embeddings``. ``forward_with_given_boxes`` embeds any given boxes, which is
how query boxes and ground-truth gallery boxes are embedded (see ``dcinet_d2.modeling.query``).
"""
import logging
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.poolers import ROIPooler
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances, pairwise_iou

from .reid_head import EmbeddingProjection, build_reid_head
from .reid_loss import ReIDLoss

logger = logging.getLogger(__name__)


def _pids_of(proposals: Instances) -> torch.Tensor:
    """The identities of sampled proposals ([R] long, -1 unlabelled); -1 when targets carry no gt_pids."""
    if proposals.has("gt_pids"):
        return proposals.gt_pids
    return torch.full((len(proposals),), -1, dtype=torch.long, device=proposals.gt_classes.device)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` backward."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _set_embeddings(instances: List[Instances], embeddings: torch.Tensor) -> List[Instances]:
    """Split ``embeddings`` [sum N_i, D] (before L2 normalisation) over ``instances`` as their L2-normalised
    ``reid_embeddings`` [N_i, D]."""
    for inst, emb in zip(instances, F.normalize(embeddings, dim=1).split([len(x) for x in instances])):
        inst.reid_embeddings = emb
    return instances


class ReIDROIHeads(StandardROIHeads):
    """Common part of I-Net and DC-I-Net: the re-id loss and embedding of given boxes.

    Subclasses define ``embed_boxes(features, boxes) -> Tensor[sum R_i, D]`` (embeddings before L2
    normalisation) and the training samples.
    """

    @configurable
    def __init__(self, *, reid_loss: ReIDLoss, **kwargs):
        super().__init__(**kwargs)
        if self.mask_on or self.keypoint_on:
            raise ValueError("MODEL.MASK_ON / MODEL.KEYPOINT_ON: masks and keypoints are not supported by "
                             "the I-Net / DC-I-Net ROI heads")
        self.reid_loss = reid_loss

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["reid_loss"] = ReIDLoss(cfg, cfg.MODEL.REID.NUM_IDENTITIES)
        return ret

    def embed_boxes(self, features: Dict[str, torch.Tensor], boxes: List[Boxes]) -> torch.Tensor:
        raise NotImplementedError

    def forward_with_given_boxes(self, features, instances: List[Instances]) -> List[Instances]:
        """Set ``reid_embeddings`` (Tensor[N_i, D]) on each of ``instances`` from its ``pred_boxes``
        (in the coordinates of the network input)."""
        return _set_embeddings(instances, self.embed_boxes(features, [x.pred_boxes for x in instances]))

    def embed_detections(self, features, proposals, box_features, instances, kept) -> List[Instances]:
        """Set ``reid_embeddings`` on the detections ``instances`` (per image; ``kept``: per image, the index of
        the proposal each detection came from). Default: embed the refined boxes."""
        del proposals, box_features, kept
        return self.forward_with_given_boxes(features, instances)

    def detection_input(self, box_features: torch.Tensor) -> torch.Tensor:
        """The box head's features [R, C] as the box predictor reads them (a hook for I-Net's gradient scale)."""
        return box_features

    def _reid_losses(self, embeddings: torch.Tensor, pids: List[torch.Tensor]) -> Dict[str, torch.Tensor]:
        """embeddings [sum R_i, D] (before L2 normalisation) of the re-id samples of each image; pids: per
        image, [R_i] long."""
        image_ids = cat([torch.full_like(p, i) for i, p in enumerate(pids)])
        return self.reid_loss(embeddings, cat(pids), image_ids)

    def forward(self, images, features, proposals, targets=None):
        del images
        if self.training:
            assert targets, "ROI heads need targets in training"
            proposals = self.label_and_sample_proposals(proposals, targets)
        box_features = self.box_head(self.box_pooler([features[f] for f in self.box_in_features],
                                                     [x.proposal_boxes for x in proposals]))
        predictions = self.box_predictor(self.detection_input(box_features))
        if not self.training:
            pred_instances, kept = self.box_predictor.inference(predictions, proposals)
            return self.embed_detections(features, proposals, box_features, pred_instances, kept), {}
        losses = self.box_predictor.losses(predictions, proposals)
        losses.update(self.reid_training_losses(features, proposals, targets, box_features, predictions))
        return proposals, losses


@ROI_HEADS_REGISTRY.register()
class INetROIHeads(ReIDROIHeads):
    """I-Net: detection and re-id share the box head's RoI features; re-id is trained on the sampled
    foreground proposals (coarse boxes), each labelled with its matched person's identity."""

    @configurable
    def __init__(self, *, reid_embed: EmbeddingProjection, embed_from: str = "proposal",
                 detection_grad_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if embed_from not in ("proposal", "refined"):
            raise ValueError(f"MODEL.REID.INET_EMBED must be 'proposal' or 'refined', got {embed_from!r}")
        if not 0.0 <= detection_grad_scale <= 1.0:
            raise ValueError(f"MODEL.REID.INET_DETECTION_GRAD_SCALE must be in [0, 1], got {detection_grad_scale!r}")
        self.reid_embed = reid_embed
        self.embed_from = embed_from
        self.detection_grad_scale = float(detection_grad_scale)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["reid_embed"] = EmbeddingProjection(ret["box_head"].output_shape.channels, cfg.MODEL.REID.EMBED_DIM,
                                                cfg.MODEL.REID.EMBED_NORM)
        ret["embed_from"] = cfg.MODEL.REID.INET_EMBED
        ret["detection_grad_scale"] = cfg.MODEL.REID.INET_DETECTION_GRAD_SCALE
        return ret

    def detection_input(self, box_features):
        """In training, detection's gradient on the shared box head scaled by MODEL.REID.INET_DETECTION_GRAD_SCALE
        (the forward pass, and so the predictions and losses, unchanged)."""
        if not self.training or self.detection_grad_scale == 1.0:
            return box_features
        return _ScaleGradient.apply(box_features, self.detection_grad_scale)

    def embed_detections(self, features, proposals, box_features, instances, kept):
        """I-Net retrieves from proposals (MODEL.REID.INET_EMBED "proposal"): a detection's embedding is the
        projection of its source proposal's box-head features [1280 or C], computed once for detection."""
        if self.embed_from == "refined":
            return super().embed_detections(features, proposals, box_features, instances, kept)
        offsets = torch.tensor([0] + [len(p) for p in proposals[:-1]], device=box_features.device).cumsum(0)
        rows = cat([k + o for k, o in zip(kept, offsets)])
        return _set_embeddings(instances, self.reid_embed(box_features[rows]))

    def embed_boxes(self, features, boxes):
        pooled = self.box_pooler([features[f] for f in self.box_in_features], boxes)
        return self.reid_embed(self.box_head(pooled))

    def reid_training_losses(self, features, proposals, targets, box_features, predictions):
        fg = cat([p.gt_classes < self.num_classes for p in proposals])
        pids = [_pids_of(p)[p.gt_classes < self.num_classes] for p in proposals]
        return self._reid_losses(self.reid_embed(box_features[fg]), pids)


@ROI_HEADS_REGISTRY.register()
class DCINetROIHeads(ReIDROIHeads):
    """DC-I-Net: the detector runs first; re-id embeds the detector's refined (regressed) boxes through its
    own, deeper head on MODEL.REID.IN_FEATURES. Refined boxes take the identity of the ground truth they
    overlap with IoU >= MODEL.REID.IOU_THRESHOLD (unlabelled: -1); the others are background, not trained."""

    @configurable
    def __init__(self, *, reid_in_features, reid_pooler, reid_head, iou_threshold, boxes_per_image,
                 add_gt_boxes, detach_backbone=False, **kwargs):
        super().__init__(**kwargs)
        self.reid_in_features = reid_in_features
        self.reid_pooler = reid_pooler
        self.reid_head = reid_head
        self.iou_threshold = iou_threshold
        self.boxes_per_image = boxes_per_image
        self.add_gt_boxes = add_gt_boxes
        self.detach_backbone = detach_backbone

    # (re-id head stage, where its pretrained weights sit in the model) pairs that start from the same
    # pretrained weights: a ResNet res5 and MobileNetV2's stride-32 blocks from the box head's, VGG16's
    # conv5 block from the backbone's.
    _SHARED_INIT = (("reid_res5", "roi_heads.box_head.res5"), ("reid_stage5", "roi_heads.box_head.stage5"),
                    ("reid_conv5", "backbone"))

    def init_reid_stage_from_pretrained(self, state_dict, root=""):
        """Called with the whole model's ``state_dict`` before it loads (PersonSearchRCNN's load hook): a
        checkpoint without re-id head weights (ImageNet) initialises the re-id head's pretrained stage from
        the same weights as the detector's (docs/METHOD.md: DC-I-Net's re-id head is a separate res5). ``root``:
        the model's key prefix."""
        prefix = f"{root}roi_heads."
        if any(k.startswith(prefix + "reid_head.") for k in state_dict):
            return
        for reid_name, source in self._SHARED_INIT:
            if not hasattr(self.reid_head, reid_name):
                continue
            src, dst = f"{root}{source}.", prefix + f"reid_head.{reid_name}."
            own = getattr(self.reid_head, reid_name).state_dict()
            copied = {dst + k[len(src):]: v for k, v in state_dict.items()
                      if k.startswith(src) and k[len(src):] in own}
            if copied and all(own[k[len(dst):]].shape == v.shape for k, v in copied.items()):
                state_dict.update(copied)
                logger.info("re-id head %s initialised from %s (%d tensors)", reid_name, source, len(copied))

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        r = cfg.MODEL.REID
        missing = [f for f in r.IN_FEATURES if f not in input_shape]
        if missing or not r.IN_FEATURES:
            raise ValueError(f"MODEL.REID.IN_FEATURES = {list(r.IN_FEATURES)}: the backbone outputs "
                             f"{sorted(input_shape)}")
        channels = {input_shape[f].channels for f in r.IN_FEATURES}
        if len(channels) != 1:
            raise ValueError(f"MODEL.REID.IN_FEATURES = {list(r.IN_FEATURES)}: features of different widths")
        ret.update(
            reid_in_features=list(r.IN_FEATURES),
            reid_pooler=ROIPooler(output_size=r.POOLER_RESOLUTION,
                                  scales=tuple(1.0 / input_shape[f].stride for f in r.IN_FEATURES),
                                  sampling_ratio=r.POOLER_SAMPLING_RATIO, pooler_type=r.POOLER_TYPE),
            reid_head=build_reid_head(cfg, input_shape[r.IN_FEATURES[0]]),
            iou_threshold=r.IOU_THRESHOLD,
            boxes_per_image=r.BOXES_PER_IMAGE,
            add_gt_boxes=r.ADD_GT_BOXES,
            detach_backbone=r.DETACH_BACKBONE,
        )
        return ret

    def embed_boxes(self, features, boxes):
        x = [features[f].detach() if self.detach_backbone else features[f] for f in self.reid_in_features]
        return self.reid_head(self.reid_pooler(x, boxes))

    def reid_training_losses(self, features, proposals, targets, box_features, predictions):
        with torch.no_grad():
            refined = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
            samples = [self.relabel_refined_boxes(b, t) for b, t in zip(refined, targets)]
        embeddings = self.embed_boxes(features, [Boxes(b) for b, _ in samples])
        return self._reid_losses(embeddings, [p for _, p in samples])

    def relabel_refined_boxes(self, refined: torch.Tensor, targets: Instances):
        """Identity-label one image's refined boxes against its ground truth.

        Args:
            refined (Tensor[R, 4]): XYXY boxes in network-input pixels. targets: gt_boxes, gt_pids.
        Returns:
            boxes (Tensor[M, 4]), pids (Tensor[M] long, -1 unlabelled): the ground-truth boxes first (if
            MODEL.REID.ADD_GT_BOXES), then at most BOXES_PER_IMAGE in all, randomly chosen, refined boxes
            with IoU >= IOU_THRESHOLD to a ground truth; background boxes are left out.
        """
        gt_pids = _pids_of(targets)
        if len(targets) == 0:
            return refined[:0], gt_pids[:0]
        iou, match = pairwise_iou(Boxes(refined), targets.gt_boxes).max(dim=1)
        keep = (iou >= self.iou_threshold).nonzero().squeeze(1)
        boxes, pids = refined[keep], gt_pids[match[keep]]
        if self.add_gt_boxes:
            boxes, pids = torch.cat([targets.gt_boxes.tensor, boxes]), torch.cat([gt_pids, pids])
            fixed = len(targets)
        else:
            fixed = 0
        if len(boxes) > self.boxes_per_image:
            extra = fixed + torch.randperm(len(boxes) - fixed, device=boxes.device)
            order = torch.cat([torch.arange(fixed, device=boxes.device), extra])[: self.boxes_per_image]
            boxes, pids = boxes[order], pids[order]
        return boxes, pids
