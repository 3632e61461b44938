"""The evaluation tests import their helpers (reference_impl, eval_trees) from this folder by name."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
