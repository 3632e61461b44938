#!/usr/bin/env python
"""Convert torchvision's ImageNet VGG16 weights into a Detectron2 checkpoint for the VGG16 configs.

    python -c "import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')"   # fetches the .pth
    python scripts/convert_vgg16_torchvision.py ~/.cache/torch/hub/checkpoints/vgg16-397923af.pth \
        pretrained/vgg16_torchvision_d2.pkl

conv1_1..conv5_3 become ``backbone.conv*``; fc6/fc7 become ``roi_heads.box_head.fc1/fc2`` (unless
--no-fc). The output's extension picks the format: ``.pkl`` (Detectron2 model-zoo pickle of numpy arrays)
or ``.pth`` (torch.save). Either loads with exact names through MODEL.WEIGHTS. The torchvision model
expects RGB input normalised with ImageNet mean/std: the VGG16 configs set INPUT.FORMAT "RGB" and
MODEL.PIXEL_MEAN/PIXEL_STD to match.
"""
import argparse
import logging
import os
import pickle
import sys

import torch

from dcinet_d2.modeling.vgg import convert_torchvision_vgg16

logger = logging.getLogger(__name__)
_AUTHOR = "torchvision vgg16 (converted by dcinet-d2 scripts/convert_vgg16_torchvision.py)"


def load_torchvision_state_dict(path):
    """A torchvision VGG16 state dict from ``path`` (a plain state dict, or one under "state_dict")."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such torchvision VGG16 weights file")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and "state_dict" in data:
        data = data["state_dict"]
    if not isinstance(data, dict) or "features.0.weight" not in data:
        raise ValueError(f"{path}: expected a torchvision VGG16 state dict with 'features.0.weight'")
    # Weights saved from a DataParallel wrapper carry a "module." prefix.
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in data.items()}


def save_detectron2_checkpoint(weights, path):
    """Write {"model": weights, "__author__": ...} to ``path`` (.pkl: numpy arrays; .pth: tensors)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith(".pkl"):
        checkpoint = {"model": {k: v.detach().cpu().numpy() for k, v in weights.items()}, "__author__": _AUTHOR}
        with open(path, "wb") as f:
            pickle.dump(checkpoint, f)
    elif path.endswith(".pth"):
        torch.save({"model": {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                    "__author__": _AUTHOR}, path)
    else:
        raise ValueError(f"{path}: the output must end in .pkl or .pth")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", help="torchvision VGG16 state dict (.pth), e.g. vgg16-397923af.pth")
    parser.add_argument("output", help="Detectron2 checkpoint to write (.pkl or .pth)")
    parser.add_argument("--no-fc", action="store_true", help="backbone only: leave out fc6/fc7")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    weights = convert_torchvision_vgg16(load_torchvision_state_dict(args.input), include_fc=not args.no_fc)
    save_detectron2_checkpoint(weights, args.output)
    logger.info("wrote %d tensors to %s", len(weights), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
