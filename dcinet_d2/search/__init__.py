"""Searching galleries with a trained model: the predictor, the persistent gallery index, ``dcinet-search``."""
from .index import GalleryIndex, Hit
from .predictor import PersonSearchPredictor

__all__ = ["PersonSearchPredictor", "GalleryIndex", "Hit"]
