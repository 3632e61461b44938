"""Person-search evaluation: the vectorised protocol core, each dataset's protocol, offline evaluation of a
results file (``dcinet-eval``), the Detectron2 evaluator, plots and the optional CBGM re-scoring."""
from .cbgm import ContextMatching, cbgm_rescore
from .evaluator import PersonSearchEvaluator, build_person_search_evaluator
from .offline import evaluate_search_results, summarize
from .plots import plot_cmc, plot_gallery_size_curve
from .detection_metrics import evaluate_detection
from .matching import average_precision
from .protocol import DetectionMetrics, GalleryDetections, SearchMetrics, SearchProtocol
from .results import gallery_detections, load_results, save_results, validate_results
from .search_metrics import evaluate_search

__all__ = [
    "ContextMatching",
    "cbgm_rescore",
    "PersonSearchEvaluator",
    "build_person_search_evaluator",
    "evaluate_search_results",
    "summarize",
    "plot_cmc",
    "plot_gallery_size_curve",
    "DetectionMetrics",
    "GalleryDetections",
    "SearchMetrics",
    "SearchProtocol",
    "average_precision",
    "evaluate_detection",
    "evaluate_search",
    "gallery_detections",
    "load_results",
    "save_results",
    "validate_results",
]
