"""Exact resume: a training run killed with SIGKILL and restarted with --resume ends with the same model,
re-id memories and optimizer state as an uninterrupted run with the same seed.

8 iterations, a checkpoint every 2: the run is killed once model_0000003 is written (warm-up over, 4 iterations
done) and resumes at iteration 4, so what comes after the checkpoint still crosses the learning-rate step (6)
and draws new batches from the restored data stream and random generators; any state the checkpoint lost
moves some parameter or memory far past the tolerance."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.STEPS", "(6,)",
             "SOLVER.WARMUP_ITERS", "2", "DATASETS.TEST", "()", "SEED", "7"]


def _train(out, env, *extra):
    return [sys.executable, "scripts/train_net.py", "--config-file", "configs/cpu/dcinet_r18_synth.yaml", *extra,
            "OUTPUT_DIR", str(out), *OVERRIDES]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    from dcinet_d2.data.synthetic import generate

    env = dict(os.environ, DCINET_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    generate(tmp_path / "datasets" / "synthetic_cuhk_sysu", "cuhk_sysu", images=120)
    whole = tmp_path / "whole"
    res = subprocess.run(_train(whole, env), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train(killed, env), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    pointer = killed / "last_checkpoint"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and pointer.read_text().strip() == "model_0000003.pth":
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model_final.pth").exists()
    res = subprocess.run(_train(killed, env, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Starting training from iteration 4" in res.stdout + res.stderr

    a = torch.load(whole / "model_final.pth", weights_only=True)
    b = torch.load(killed / "model_final.pth", weights_only=True)
    assert a["iteration"] == b["iteration"] == 7
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:  # parameters, BN statistics, OLP dictionary, class centers and "seen" flags
        torch.testing.assert_close(b["model"][key], a["model"][key], atol=1e-4, rtol=1e-4, msg=key)
    assert torch.equal(a["model"]["roi_heads.reid_loss.c2hep_centers.initialized"],
                       b["model"]["roi_heads.reid_loss.c2hep_centers.initialized"])
    assert torch.equal(a["model"]["roi_heads.reid_loss.olp_dictionary.labels"],
                       b["model"]["roi_heads.reid_loss.olp_dictionary.labels"])
    opt_a, opt_b = (c["trainer"]["_trainer"]["optimizer"] for c in (a, b))  # momentum and learning rates
    assert [g["lr"] for g in opt_b["param_groups"]] == [g["lr"] for g in opt_a["param_groups"]]
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for i in opt_a["state"]:
        torch.testing.assert_close(opt_b["state"][i]["momentum_buffer"], opt_a["state"][i]["momentum_buffer"],
                                   atol=1e-4, rtol=1e-4, msg=f"momentum of parameter {i}")
