"""scripts/benchmark_gpu.py runs every path on the CPU at tiny sizes and says what it skipped."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_benchmark_smoke_run_on_the_cpu(tmp_path):
    from dcinet_d2.data.synthetic import generate
    from dcinet_d2.testing import save_tiny_model

    save_tiny_model(str(tmp_path / "demo"))
    # The indexing rows read 8 gallery images: a small synthetic set of this test's own, not the user's datasets/
    # (which the script would otherwise fill with the full default set, 300 images, when absent).
    generate(tmp_path / "datasets" / "synthetic_cuhk_sysu", "cuhk_sysu", identities=8, images=60, size=(96, 128))
    out = tmp_path / "table.md"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, DCINET_DATASETS=str(tmp_path / "datasets"))
    res = subprocess.run([sys.executable, "scripts/benchmark_gpu.py", "--device", "cpu", "--tiny", "--seqnet",
                          str(tmp_path / "no_seqnet"), "--demo", str(tmp_path / "demo"), "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    table = out.read_text()
    assert table in res.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 6, table  # training, Faster R-CNN, DC-I-Net, SeqNet skipped, indexing at batch 1 and 4
    assert "DC-I-Net R50 training step" in rows[0] and float(rows[0].split("|")[2].split()[0]) > 0
    assert "skipped: no SeqNet source at" in table
    assert sum("images/s" in r for r in rows) == 4
    assert "batch 4, 8 synthetic gallery images" in table
