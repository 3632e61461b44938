"""Plots of search results: mAP and top-1 against the CUHK-SYSU gallery size, CMC curves (matplotlib, Agg).

Figures are drawn on the Agg canvas directly, so importing this module does not change matplotlib's backend.
"""
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["plot_gallery_size_curve", "plot_cmc", "new_figure", "save_figure"]


def new_figure(size=(5.0, 3.6), ncols=1):
    """(Figure, [Axes] * ncols side by side) on the Agg canvas, 120 dpi, ``size`` in inches."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig, [fig.add_subplot(1, ncols, k) for k in range(1, ncols + 1)]


def save_figure(fig, path):
    """Write ``fig`` to ``path`` (its folder created), return ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    logger.info("wrote %s", path)
    return path


def plot_gallery_size_curve(metrics_by_size, path, title="CUHK-SYSU: search vs gallery size"):
    """mAP and top-1 against the gallery size.

    Args:
        metrics_by_size (dict[int, dict]): gallery size (50 .. 4000, -1 = full set) -> a dict with ``mAP``
            and ``top1`` in percent (e.g. :func:`~dcinet_d2.evaluation.offline.evaluate_search_results`).
        path (str): image file to write (the extension picks the format, e.g. .png, .pdf).
    Returns:
        str: ``path``.
    """
    if not metrics_by_size:
        raise ValueError(f"{path}: no gallery size to plot")
    sizes = sorted(metrics_by_size, key=lambda n: np.inf if n == -1 else n)
    labels = ["full set" if n == -1 else str(n) for n in sizes]
    fig, (ax,) = new_figure()
    x = np.arange(len(sizes))  # evenly spaced: the sizes grow geometrically and the full set has no size
    for key, label, marker in (("mAP", "mAP", "o"), ("top1", "top-1", "s")):
        ax.plot(x, [metrics_by_size[n][key] for n in sizes], marker=marker, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(labels)
    ax.set_xlabel("gallery size")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def plot_cmc(curves, path, title="CMC", max_rank=None):
    """CMC curves: percent of queries with a true positive in the top k, against k.

    Args:
        curves (dict[str, np.ndarray[R]]): label -> curve (element k-1 is top-k, percent).
        path (str): image file to write.
        max_rank (int or None): plot ranks 1..max_rank (default: the longest curve).
    Returns:
        str: ``path``.
    """
    if not curves:
        raise ValueError(f"{path}: no CMC curve to plot")
    fig, (ax,) = new_figure()
    for label, curve in curves.items():
        curve = np.asarray(curve, dtype=np.float64).reshape(-1)
        if max_rank is not None:
            curve = curve[:max_rank]
        ax.plot(np.arange(1, len(curve) + 1), curve, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("rank k")
    ax.set_ylabel("top-k (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    return save_figure(fig, path)
