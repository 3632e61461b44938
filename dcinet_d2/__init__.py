"""dcinet-d2: importing this package registers its ROI heads, backbones and datasets with Detectron2."""
from .config import add_dcinet_config

__all__ = ["add_dcinet_config"]
