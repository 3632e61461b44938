"""The data tests import their helpers (toy_datasets) from this folder by name, as tests/evaluation does."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
