"""Loading a trained checkpoint into a model, checked: used by training's ``--eval-only`` and by search.

    sha256 = load_weights(model, "output/model_final.pth")

The file is read once: the bytes that are loaded are the bytes hashed (the gallery index names its model by
that hash, dcinet_d2/search/fingerprint.py).
"""
import hashlib
import io
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .errors import error_line

__all__ = ["load_weights"]


class _CheckedCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that names the file it cannot read, hashes what it reads, and keeps the keys it
    could not fill (``incompatible``); through the hooks fvcore documents for subclasses."""

    sha256 = None
    incompatible = None

    def _load_file(self, filename):
        try:
            if filename.endswith(".pkl"):  # Detectron2 / Caffe2 model-zoo formats: Detectron2 reads them
                with open(filename, "rb") as f:
                    self.sha256 = hashlib.sha256(f.read()).hexdigest()
                return super()._load_file(filename)
            with open(filename, "rb") as f:
                data = f.read()
            self.sha256 = hashlib.sha256(data).hexdigest()
            loaded = torch.load(io.BytesIO(data), map_location=torch.device("cpu"))
        except Exception as e:  # noqa: BLE001 - torch and pickle raise many types for a corrupt file
            raise ValueError(f"{filename}: not a readable checkpoint ({error_line(e)})") from None
        return loaded if isinstance(loaded, dict) and "model" in loaded else {"model": loaded}

    def _load_model(self, checkpoint):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights(model, path) -> str:
    """Load a trained checkpoint into ``model`` (Detectron2's checkpointer), refusing weights that leave any
    re-id parameter at its random initial value (a checkpoint of another architecture or config would
    otherwise give real-looking but meaningless embeddings). Returns the sha256 of the file (hex)."""
    if not path:
        raise ValueError("no weights given (MODEL.WEIGHTS / --weights): a trained checkpoint is needed")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: weights file not found")
    checkpointer = _CheckedCheckpointer(model)
    checkpointer.load(path, checkpointables=[])
    # The training memories (reid_loss: dictionary, centers) play no part at inference.
    missing = [k for k in checkpointer.incompatible.missing_keys
               if k.startswith("roi_heads") and ".reid_loss." not in k]
    if missing:
        raise ValueError(f"{path}: holds no weights for {len(missing)} parameters of this model's heads (e.g. "
                         f"{missing[0]}): a checkpoint of another architecture or config?")
    return checkpointer.sha256
