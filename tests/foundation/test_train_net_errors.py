"""train_net.py reports bad input in one line (exit 2), and a failed run in one line pointing at its log."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "cpu", "dcinet_r18_synth.yaml")


def _train_net(*args, cwd):
    res = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "train_net.py"), *map(str, args)],
                         capture_output=True, text=True, cwd=cwd, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    return res


@pytest.mark.parametrize("case", ["missing config", "unknown key", "output dir is a file", "no weights"])
def test_bad_input_is_one_line_exit_2(tmp_path, case):
    (tmp_path / "a_file").write_text("keep me")
    args = {"missing config": ["--config-file", tmp_path / "nope.yaml"],
            "unknown key": ["--config-file", CONFIG, "MODEL.NO_SUCH_KEY", "1"],
            "output dir is a file": ["--config-file", CONFIG, "OUTPUT_DIR", tmp_path / "a_file"],
            "no weights": ["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", tmp_path / "none.pth"]}[case]
    expected = {"missing config": "nope.yaml: config file not found", "unknown key": "NO_SUCH_KEY",
                "output dir is a file": "exists and is not a folder", "no weights": "needs a trained checkpoint"}
    res = _train_net(*args, cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert expected[case] in lines[0]
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_eval_only_refuses_weights_of_another_architecture(tmp_path):
    from dcinet_d2.testing import save_tiny_model

    _, weights = save_tiny_model(str(tmp_path / "tiny"))
    out = tmp_path / "out"
    res = _train_net("--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", weights, "OUTPUT_DIR", out,
                     "MODEL.REID.NUM_IDENTITIES", "36", cwd=tmp_path)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and last.startswith("error: ") and "another architecture" in last
    assert "log.txt" in last and "Traceback" in (out / "log.txt").read_text()
