"""Exact resume: a training run killed with SIGKILL and restarted with --resume ends with the same model,
re-id memories and optimizer state as an uninterrupted run with the same seed."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["SOLVER.MAX_ITER", "30", "SOLVER.CHECKPOINT_PERIOD", "10", "SOLVER.STEPS", "(20,)",
             "SOLVER.WARMUP_ITERS", "5", "DATASETS.TEST", "()", "SEED", "7"]


def _train(out, env, *extra):
    return [sys.executable, "scripts/train_net.py", "--config-file", "configs/cpu/dcinet_r18_synth.yaml", *extra,
            "OUTPUT_DIR", str(out), *OVERRIDES]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    env = dict(os.environ, DCINET_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "dcinet_d2.data.synthetic", "--out",
                    str(tmp_path / "datasets" / "synthetic_cuhk_sysu"), "--format", "cuhk_sysu", "--images", "120"],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    whole = tmp_path / "whole"
    res = subprocess.run(_train(whole, env), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train(killed, env), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pointer = killed / "last_checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and pointer.read_text().strip() == "model_0000019.pth":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists()
    res = subprocess.run(_train(killed, env, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting training from iteration 20" in res.stdout + res.stderr

    a = torch.load(whole / "model_final.pth", weights_only=True)
    b = torch.load(killed / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 29
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # parameters, BN statistics, OLP dictionary, class centers and "seen" flags
        torch.testing.assert_close(b["model"][key], a["model"][key], atol=1e-4, rtol=1e-4, msg=key)
    assert torch.equal(a["model"]["roi_heads.reid_loss.c2hep_centers.initialized"],
                       b["model"]["roi_heads.reid_loss.c2hep_centers.initialized"])
    assert torch.equal(a["model"]["roi_heads.reid_loss.olp_dictionary.labels"],
                       b["model"]["roi_heads.reid_loss.olp_dictionary.labels"])
