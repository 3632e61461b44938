"""dcinet-d2: I-Net and DC-I-Net for image search on Detectron2.

Importing this package registers with Detectron2 what it adds: the PersonSearchRCNN meta-architecture,
the INetROIHeads / DCINetROIHeads ROI heads, the Res5BoxHead box head, the VGG16 backbone and the
standard datasets (CUHK-SYSU, PRW, the synthetic ones).
"""
import warnings

# Detectron2 0.6 scripts a few helpers at import time; torch >= 2.9 warns about every such call. The warning
# says nothing about this package's use, and it would precede every command-line message.
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

from . import data, modeling, pretrained  # noqa: E402, F401  (registration; dcinet:// weights)
from .config import add_dcinet_config  # noqa: E402

__all__ = ["add_dcinet_config"]
