"""The set-up step's guards: a Detectron2 source that does not match the patch fails loudly."""
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATCH = os.path.join(ROOT, "scripts", "setup", "patch_detectron2.py")


def _run(*args):
    return subprocess.run([sys.executable, PATCH, *args], capture_output=True, text=True)


def test_patch_rejects_a_tree_that_is_not_detectron2(tmp_path):
    res = _run(str(tmp_path))
    assert res.returncode == 1
    assert res.stderr.startswith("error: ") and "not a detectron2 source tree" in res.stderr
    assert "Traceback" not in res.stderr


def test_patch_names_the_file_whose_text_differs(tmp_path):
    """A copy of the installed (already patched) detectron2 no longer holds the original text."""
    import detectron2

    src = tmp_path / "src"
    shutil.copytree(os.path.dirname(detectron2.__file__), src / "detectron2")
    (src / "setup.py").write_text("setup(ext_modules=get_extensions())\n")
    (src / "detectron2" / "model_zoo" / "configs").mkdir(exist_ok=True)
    res = _run(str(src))
    assert res.returncode == 1
    assert "setup.py" in res.stderr and "expected 1 occurrence" in res.stderr


def test_patch_usage_error():
    res = _run()
    assert res.returncode == 2 and "usage" in res.stderr
