"""DatasetMapper that carries person identities: ``Instances.gt_pids`` aligned with ``gt_boxes``."""
import copy
import logging

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..errors import error_line

logger = logging.getLogger(__name__)

__all__ = ["PersonSearchDatasetMapper", "read_image"]


def read_image(file_name, image_format):
    """Detectron2's ``read_image``, with a file that cannot be decoded (truncated on disk, not an image)
    reported as an OSError naming it: PIL's own message ("Truncated File Read") names no file."""
    try:
        return utils.read_image(file_name, format=image_format)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # PIL: unidentified, truncated, broken files
        raise OSError(f"{file_name}: not a readable image ({error_line(e)})") from None

class PersonSearchDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper plus person identities.

    Training: like DatasetMapper, and ``instances.gt_pids`` (LongTensor[n]: the annotations'
    ``person_id``, -1 unlabelled or missing) stays aligned with ``instances.gt_boxes`` through the
    augmentations and the removal of empty boxes.

    Inference: the image is resized as usual; when ``keep_annotations`` and the dict has annotations,
    ``annotations`` are kept untouched (original image pixels, as the evaluator and
    :func:`dcinet_d2.modeling.query.embed_boxes` use them) and ``instances`` holds the transformed
    ``gt_boxes`` / ``gt_pids`` (input-image pixels). An optional ``boxes`` entry (boxes to embed: queries,
    ground-truth mode) becomes a FloatTensor[k, 4] (XYXY, original pixels). Other keys (``camera_id``,
    ``query_index``, ...) pass through.
    """

    @configurable
    def __init__(self, is_train: bool, *, keep_annotations: bool = True, **kwargs):
        """
        Args:
            is_train: training or inference mode.
            keep_annotations: inference only: keep the annotations (see the class docstring).
            kwargs: the arguments of :class:`detectron2.data.DatasetMapper`.
        """
        super().__init__(is_train, **kwargs)
        self.keep_annotations = keep_annotations

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, keep_annotations: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["keep_annotations"] = keep_annotations
        return ret

    def _transform_annotations(self, dataset_dict, transforms, image_shape):
        """Set ``dataset_dict["instances"]`` (gt_boxes, gt_classes, gt_pids) from ``annotations``."""
        annos = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        for anno in annos:
            if not self.use_instance_mask:
                anno.pop("segmentation", None)
            if not self.use_keypoint:
                anno.pop("keypoints", None)
        pids = torch.tensor([int(a.get("person_id", -1)) for a in annos], dtype=torch.int64)
        annos = [
            utils.transform_instance_annotations(
                a, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for a in annos
        ]
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        # Set before filtering: indexing Instances filters every field with the same mask.
        instances.gt_pids = pids
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    def __call__(self, dataset_dict):
        """
        Args:
            dataset_dict (dict): one image in the dataset-dict format of docs/ARCHITECTURE.md.
        Returns:
            dict: the model's input: ``image`` (uint8 Tensor[C, H', W']), ``instances`` (when annotations
            are used), and every other key of the input.
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = read_image(dataset_dict["file_name"], self.image_format)
        utils.check_image_size(dataset_dict, image)
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)
        if "boxes" in dataset_dict:
            dataset_dict["boxes"] = torch.as_tensor(np.asarray(dataset_dict["boxes"], np.float32)).reshape(-1, 4)
        if "annotations" not in dataset_dict:
            return dataset_dict
        if self.is_train:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        elif self.keep_annotations:
            original = copy.deepcopy(dataset_dict["annotations"])
            self._transform_annotations(dataset_dict, transforms, image_shape)
            dataset_dict["annotations"] = original
        else:
            dataset_dict.pop("annotations")
        return dataset_dict
