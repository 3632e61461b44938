"""The paper's recipe configs under Detectron2's launch with 2 processes (gloo, CPU), at tiny sizes: the
one-GPU recipe (2 images, lr 0.001) becomes 2 images per process by the linear rule, and trains."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.REID.NUM_IDENTITIES", "0",
        "DATASETS.TRAIN", "('synth_cuhk_sysu_train',)", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "128", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "8", "MODEL.REID.BOXES_PER_IMAGE", "4",
        "SOLVER.MAX_ITER", "4", "SOLVER.STEPS", "(2,)", "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0"]


@pytest.mark.slow
def test_recipe_scales_to_two_processes(tmp_path):
    from dcinet_d2.data.synthetic import generate

    env = dict(os.environ, DCINET_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    generate(tmp_path / "datasets" / "synthetic_cuhk_sysu", "cuhk_sysu", identities=12, images=60, size=(96, 128))
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "scripts/train_net.py", "--config-file", "configs/cuhk_sysu/dcinet_r50.yaml",
                          "--num-gpus", "2", "OUTPUT_DIR", str(out), *TINY], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    log = (out / "log.txt").read_text()
    # 1 GPU's 2 images at lr 0.001 and 4 iterations -> 2 processes: 4 images, lr 0.002, 2 iterations
    assert "Auto-scaling the config to batch_size=4, learning_rate=0.002, max_iter=2" in log
    rows = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines() if line.strip()]
    assert [r["iteration"] for r in rows if "total_loss" in r][-1] == 1
    assert (out / "model_final.pth").is_file()
