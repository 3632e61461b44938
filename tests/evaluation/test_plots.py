"""Plots are written where asked, as valid images."""
import matplotlib
import numpy as np
import pytest

from dcinet_d2.evaluation.plots import plot_cmc, plot_gallery_size_curve


def test_gallery_size_curve_and_cmc(tmp_path):
    backend = matplotlib.get_backend()
    metrics = {n: {"mAP": 90 - n / 100, "top1": 92 - n / 100} for n in (50, 100, 500, 1000, 2000, 4000)}
    metrics[-1] = {"mAP": 40.0, "top1": 45.0}
    path = plot_gallery_size_curve(metrics, str(tmp_path / "plots" / "gallery.png"))
    cmc = plot_cmc({"DC-I-Net": np.linspace(80, 99, 100), "OIM": np.linspace(70, 95, 100)},
                   str(tmp_path / "cmc.pdf"), max_rank=50)
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "plots" / "gallery.png").stat().st_size > 5000
    assert open(cmc, "rb").read(5) == b"%PDF-"
    assert matplotlib.get_backend() == backend  # drawing on the Agg canvas leaves the global backend alone


def test_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="no gallery size"):
        plot_gallery_size_curve({}, str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="no CMC curve"):
        plot_cmc({}, str(tmp_path / "x.png"))
