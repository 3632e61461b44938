"""Datasets of dcinet-d2: loaders of CUHK-SYSU, PRW, the generic gallery format and MOTChallenge sequences
(importing this package registers the standard names, see builtin.py), and writers of the exact real layouts."""
from . import builtin  # noqa: F401  (registers the standard datasets)
from .cuhk_sysu import load_cuhk_sysu, register_cuhk_sysu
from .generic import convert_coco_with_identity, load_search_dataset, register_search_dataset
from .mot import load_mot, read_mot, register_mot
from .prw import load_prw, register_prw
from .writers import write_cuhk_sysu, write_prw

__all__ = [
    "load_cuhk_sysu",
    "register_cuhk_sysu",
    "load_prw",
    "register_prw",
    "load_search_dataset",
    "register_search_dataset",
    "convert_coco_with_identity",
    "read_mot",
    "load_mot",
    "register_mot",
    "write_cuhk_sysu",
    "write_prw",
]
