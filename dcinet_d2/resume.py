"""Exact resume of training: what a checkpoint must hold beyond Detectron2's model, optimizer, scheduler and
iteration, and atomic checkpoint files.

- The re-id memories (OLP dictionary, class centers and their "seen" flags, OIM tables) are buffers of the
  model, so they are in every checkpoint already.
- The random generators of the training process (torch, numpy, Python): proposal and RoI sampling and the
  priority pool's random fill draw from them. ``rng_state`` / ``set_rng_state`` keep them as tensors and
  lists, so a checkpoint still loads with ``torch.load(weights_only=True)``.
- The data stream: the paired sampler skips the batches already trained on, and every sample's
  augmentation is seeded by its place in the stream (dcinet_d2/data/sampler.py).
"""
import os
import random
import zipfile

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer

from .fileio import atomic_open

__all__ = ["rng_state", "set_rng_state", "AtomicCheckpointer", "restart_data_stream", "check_last_checkpoint"]


def rng_state():
    """The process's torch, numpy and Python random states, as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next}}


def set_rng_state(state):
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer whose checkpoint and ``last_checkpoint`` files are written atomically: a kill
    while saving leaves the previous checkpoint (and the pointer to it) whole."""

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", path)
        with atomic_open(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def load(self, path, checkpointables=None):
        try:
            return super().load(path, checkpointables)
        except ValueError as e:  # torch's optimizer: the groups of the checkpoint and of this config differ
            if "parameter group" not in str(e):
                raise
            raise ValueError(f"{path}: its optimizer state does not fit this config's optimizer ({e}): the run was "
                             "trained with other SOLVER.*_LR_FACTOR, BIAS_LR_FACTOR or WEIGHT_DECAY_* values; resume "
                             "with the config it was saved with, or train into a new OUTPUT_DIR") from None

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_open(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)


def restart_data_stream(simple_trainer, start_iter):
    """Make the training loader continue at batch ``start_iter`` of its paired-sampler stream (a fresh
    iterator: its workers receive the sampler with the new start). No-op for other loaders."""
    sampler = getattr(getattr(simple_trainer.data_loader, "dataset", None), "sampler", None)
    if not hasattr(sampler, "start_batch"):
        return False
    sampler.start_batch = int(start_iter)
    simple_trainer._data_loader_iter = iter(simple_trainer.data_loader)
    return True


def _torch_file(path):
    """Whether ``path`` looks like a whole torch.save file: a zip with its central directory (a truncated
    file has none), or a legacy pickle. Reads only the file's ends: cheap for any checkpoint size."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def check_last_checkpoint(save_dir):
    """What ``--resume`` would load from ``save_dir``: the checkpoint named by ``save_dir/last_checkpoint``
    (its path), or None when there is no ``last_checkpoint`` (training starts afresh, as Detectron2's).

    Raises:
        ValueError: naming the file, when ``last_checkpoint`` is not a file name in text (binary, empty),
            names a file that does not exist, or one that is not a whole torch.save file (truncated). Nothing
            is removed: the user decides (delete ``last_checkpoint`` to start afresh).
    """
    pointer = os.path.join(save_dir, "last_checkpoint")
    if not os.path.lexists(pointer):
        return None
    hint = "delete last_checkpoint to start afresh, or write the name of a whole checkpoint of that folder into it"
    try:
        with open(pointer, "rb") as f:
            name = f.read(4096).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{pointer}: not a checkpoint file name ({type(e).__name__}); {hint}") from None
    if not name or any(c in name for c in "\n\r\0"):
        raise ValueError(f"{pointer}: holds {name[:60]!r}, not a checkpoint file name; {hint}")
    path = os.path.join(save_dir, name)
    if not os.path.isfile(path):
        raise ValueError(f"{pointer}: names {name!r}, but {path} is not a file; {hint}")
    if not _torch_file(path):
        raise ValueError(f"{path} (named by {pointer}): not a whole checkpoint (truncated, or not written by "
                         f"torch.save); {hint}")
    return path
