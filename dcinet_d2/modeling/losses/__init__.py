"""Re-id losses as plain functions: the paper's OLP, HEP, C2HEP (+ the priority pool) and the baselines."""
from .c2hep import c2hep_loss
from .contrastive import contrastive_loss
from .hep import hep_loss, pool_cross_entropy
from .oim import oim_loss
from .olp import olp_loss
from .pool import select_priority_pool
from .triplet import batch_hard_triplet_loss

__all__ = [
    "olp_loss",
    "hep_loss",
    "pool_cross_entropy",
    "c2hep_loss",
    "select_priority_pool",
    "oim_loss",
    "batch_hard_triplet_loss",
    "contrastive_loss",
]
