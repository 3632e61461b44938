"""One training run shared by the end-to-end tests (the slowest step of the suite, so it runs once): the README
demo's config (configs/cpu/dcinet_mnv2_synth.yaml, ImageNet MobileNetV2) on synthetic data of a generator seed
the configs were not tuned on (7), as a user runs it: the data generator, then scripts/train_net.py."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = "configs/cpu/dcinet_mnv2_synth.yaml"
ITERS = int(os.environ.get("DCINET_E2E_ITERS_MNV2", "300"))


def _run_python(args, env):
    """Runs `python ARGS` in the repository; fails the test with the end of stderr when it exits non-zero."""
    res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


@pytest.fixture(scope="session")
def run_python():
    """The tests' way to run `python ARGS` in the repository: ``run_python(args, env)`` returns the finished
    process (stdout, stderr as text) and fails the test with the end of stderr when it exits non-zero."""
    return _run_python


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """{env, data, out, rows, config}: the synthetic dataset folder, the training's output folder and its metrics.json
    rows, after ITERS iterations (the step at 3/4 of them)."""
    base = tmp_path_factory.mktemp("e2e_demo")
    env = dict(os.environ, DCINET_DATASETS=str(base / "datasets"))
    env.setdefault("OMP_NUM_THREADS", "2")  # the caller's setting wins (1 on a loaded machine)
    data, out = base / "datasets" / "synthetic_cuhk_sysu", base / "out"
    _run_python(["-m", "dcinet_d2.data.synthetic", "--out", str(data), "--format", "cuhk_sysu", "--seed", "7"], env)
    _run_python(["scripts/train_net.py", "--config-file", CONFIG, "OUTPUT_DIR", str(out),
                "SOLVER.MAX_ITER", str(ITERS), "SOLVER.STEPS", f"({ITERS * 3 // 4},)"], env)
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {"env": env, "data": data, "out": out, "rows": rows, "config": CONFIG}
