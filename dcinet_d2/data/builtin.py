"""Registers the standard datasets on import, under ``$DCINET_DATASETS`` (default ``datasets``, relative to
the working directory, as Detectron2's ``DETECTRON2_DATASETS``). Nothing is read until a split is loaded.

==================================  ==========================================
names (``_train``, ``_gallery``,     root
``_query``)
==================================  ==========================================
``cuhk_sysu_*``                      ``<datasets>/cuhk_sysu``
``prw_*``                            ``<datasets>/prw``
``synth_cuhk_sysu_*``                ``<datasets>/synthetic_cuhk_sysu``
``synth_prw_*``                      ``<datasets>/synthetic_prw``
``mot_<folder>_*``                   ``<datasets>/mot/<folder>``: each folder there, MOTChallenge sequences
                                     (one, or several: mot.py), ids per sequence
==================================  ==========================================
"""
import os

from .cuhk_sysu import register_cuhk_sysu
from .mot import register_mot
from .prw import register_prw

__all__ = ["datasets_root", "register_all"]


def datasets_root():
    """The folder holding the datasets: ``$DCINET_DATASETS``, else ``datasets``."""
    return os.path.expanduser(os.getenv("DCINET_DATASETS", "datasets"))


def register_all(root):
    """Register the standard CUHK-SYSU, PRW and synthetic splits with their folders under ``root``."""
    register_cuhk_sysu("cuhk_sysu", os.path.join(root, "cuhk_sysu"))
    register_prw("prw", os.path.join(root, "prw"))
    register_cuhk_sysu("synth_cuhk_sysu", os.path.join(root, "synthetic_cuhk_sysu"))
    register_prw("synth_prw", os.path.join(root, "synthetic_prw"))
    mot = os.path.join(root, "mot")
    for folder in sorted(os.listdir(mot)) if os.path.isdir(mot) else []:
        if os.path.isdir(os.path.join(mot, folder)):
            register_mot(f"mot_{folder}", os.path.join(mot, folder))


register_all(datasets_root())
