"""dcinet-d2 modeling: re-id losses, their memories (dictionaries) and ReIDLoss."""
from . import losses
from .dictionaries import ClassCenters, FeatureDictionary, OIMTable
from .reid_loss import ReIDLoss
from .meta_arch import PersonSearchRCNN
from .reid_head import Res5BoxHead, build_reid_head
from .roi_heads import DCINetROIHeads, INetROIHeads
from .query import embed_boxes
from .mobilenet import MobileNetV2BoxHead, build_mobilenetv2_backbone
