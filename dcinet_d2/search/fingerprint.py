"""The identity of the model that made a gallery index's embeddings: all an index knows of its model.

    fingerprint = model_fingerprint(cfg, predictor.weights_sha256)   # the hash of the weights as loaded
    same_model(manifest["model"], fingerprint)                      # may these embeddings be compared?
"""
import hashlib
import os
from typing import Dict, Optional

__all__ = ["model_fingerprint", "same_model"]

# Keys that do not change what the model computes for a kept detection.
_FINGERPRINT_IGNORES = ("MODEL.WEIGHTS", "MODEL.DEVICE", "MODEL.ROI_HEADS.SCORE_THRESH_TEST")


def _sha256_file(path, chunk=1 << 20):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(cfg, weights_sha256: Optional[str] = None) -> Dict:
    """Identity of the model that makes the embeddings: hashes of its config (MODEL and INPUT nodes, minus
    weights path, device and score threshold) and of its weights file (``weights_sha256`` when the caller
    has it from loading them, dcinet_d2/checkpoint.py; the file is read otherwise)."""
    node = cfg.clone()
    node.defrost()
    for key in _FINGERPRINT_IGNORES:
        parent, leaf = key.rsplit(".", 1)
        setattr(_select(node, parent), leaf, None)
    text = node.MODEL.dump() + node.INPUT.dump()
    return {"config_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "weights_sha256": weights_sha256 or _sha256_file(cfg.MODEL.WEIGHTS),
            "weights": os.path.abspath(cfg.MODEL.WEIGHTS), "embedding_dim": int(cfg.MODEL.REID.EMBED_DIM)}


def _select(node, dotted):
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def same_model(a: Dict, b: Dict) -> bool:
    """Do fingerprints ``a`` and ``b`` name the same config, weights and embedding dimension?"""
    return all(a.get(k) == b.get(k) for k in ("config_sha256", "weights_sha256", "embedding_dim"))
