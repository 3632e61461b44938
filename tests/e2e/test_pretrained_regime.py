"""End to end, the paper's regime on the CPU (configs/cpu/dcinet_mnv2_synth.yaml: ImageNet MobileNetV2), on
synthetic data of a seed the configs were not tuned on: the memory losses learn (end well below their uniform
values) and the model searches far above chance."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITERS = int(os.environ.get("DCINET_E2E_ITERS_MNV2", "300"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e_mnv2")
    env = dict(os.environ, DCINET_DATASETS=str(base / "datasets"), OMP_NUM_THREADS="2")
    data = base / "datasets" / "synthetic_cuhk_sysu"
    for args in (["-m", "dcinet_d2.data.synthetic", "--out", str(data), "--format", "cuhk_sysu", "--seed", "7"],
                 ["scripts/train_net.py", "--config-file", "configs/cpu/dcinet_mnv2_synth.yaml", "OUTPUT_DIR",
                  str(base / "out"), "SOLVER.MAX_ITER", str(ITERS), "SOLVER.STEPS", f"({ITERS * 3 // 4},)",
                  "TEST.PERSON_SEARCH.COCO_AP", "False"]):
        res = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr[-3000:]
    with open(base / "out" / "metrics.json") as f:
        return [json.loads(line) for line in f if line.strip()]


def _last_mean(rows, key, n=3):
    values = [r[key] for r in rows if key in r][-n:]
    return sum(values) / len(values)


@pytest.mark.slow
def test_memory_losses_end_well_below_their_uniform_values(run):
    # Measured (300 iterations, data seed 7): OLP 1.97 against 5.54, C2HEP 0.23 against 2.77 (means of the last
    # 3 logged values); the from-scratch ResNet-18 config's stayed at or above them.
    for name, ratio in (("olp", 0.7), ("c2hep", 0.5)):
        loss, uniform = _last_mean(run, f"reid/{name}"), _last_mean(run, f"reid/{name}_uniform")
        assert loss < ratio * uniform, (name, loss, uniform)


@pytest.mark.slow
def test_pretrained_model_detects_and_searches(run):
    final = [r for r in run if "search/mAP" in r][-1]
    print({k: v for k, v in final.items() if k.startswith("search/")})
    assert final["search/det_ap"] > 90.0
    # Measured (300 iterations, data seed 7): mAP 52.4, top-1 62.5, det AP 98.2, embed_mean_cos 0.04. Chance
    # (shuffled embeddings) is about 5 mAP; the re-id branch untrained (loss weights 0) gave 25 (BENCHMARKS).
    assert final["search/mAP"] > 35.0 and final["search/embed_mean_cos"] < 0.5
