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
==================================  ==========================================
"""
import os

from .cuhk_sysu import register_cuhk_sysu
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


register_all(datasets_root())
