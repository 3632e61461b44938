"""PersonSearchRCNN: Detectron2's GeneralizedRCNN that can also embed given boxes at inference.

A test input that carries ``boxes`` (Tensor or array [k, 4], XYXY in original image pixels: a query box,
the annotated gallery boxes of the "GT" mode, or the whole image) is not detected: its output Instances
hold exactly those boxes, score 1 and their ``reid_embeddings``. A given box that is not finite, inverted,
of zero area or wholly outside the image is refused (ValueError naming it), as the predictor's ``embed``
refuses it. Inputs without ``boxes`` are detected as
usual and come back with ``reid_embeddings`` of their detections. So queries and gallery images can share
one Detectron2 test loader, and evaluation works unchanged under distributed inference.
"""
import torch
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Boxes, Instances

from .query import check_boxes, embed_boxes


@META_ARCH_REGISTRY.register()
class PersonSearchRCNN(GeneralizedRCNN):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Before any part loads: DC-I-Net's re-id stage copies pretrained weights found elsewhere in the
        # model's checkpoint (the box head's res5, the backbone's conv5), which its own hook could not see.
        self._register_load_state_dict_pre_hook(self._init_reid_stage)

    def _init_reid_stage(self, state_dict, prefix, *args):
        init = getattr(self.roi_heads, "init_reid_stage_from_pretrained", None)
        if init is not None:
            init(state_dict, prefix)

    def inference(self, batched_inputs, detected_instances=None, do_postprocess=True):
        given = [i for i, x in enumerate(batched_inputs) if "boxes" in x]
        if detected_instances is not None or not given:
            return super().inference(batched_inputs, detected_instances, do_postprocess)
        for i in given:
            x = batched_inputs[i]
            check_boxes(x["boxes"], x["height"], x["width"], what=f"input {i} ({x.get('file_name', 'image')}): box")
        results = [None] * len(batched_inputs)
        detect = [i for i in range(len(batched_inputs)) if i not in set(given)]
        if detect:
            for i, r in zip(detect, super().inference([batched_inputs[i] for i in detect],
                                                      do_postprocess=do_postprocess)):
                results[i] = r
        embeddings = embed_boxes(self, [batched_inputs[i] for i in given])
        for i, emb in zip(given, embeddings):
            results[i] = {"instances": self._given_boxes_instances(batched_inputs[i], emb)}
        return results

    @staticmethod
    def _given_boxes_instances(inp, embeddings):
        boxes = torch.as_tensor(inp["boxes"], dtype=torch.float32, device=embeddings.device).reshape(-1, 4)
        inst = Instances((inp["height"], inp["width"]), pred_boxes=Boxes(boxes))
        inst.scores = torch.ones(len(boxes), device=boxes.device)
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        inst.reid_embeddings = embeddings
        return inst
