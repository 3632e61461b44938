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


def _clone_with_marker(root, dest):
    """A second clone of this project (its tracked and untracked files) whose dcinet_d2 says where it is."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True,
                           text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        if os.path.isfile(os.path.join(root, rel)):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(os.path.join(root, rel), os.path.join(dest, rel))
    with open(os.path.join(dest, "dcinet_d2", "__init__.py"), "a") as f:
        f.write("\nimport os as _os\nif _os.environ.get('DCINET_WHOAMI'):\n"
                "    print('DCINET_D2_FROM', _os.path.realpath(__file__))\n")


def test_each_clone_runs_its_own_code_with_one_shared_environment(tmp_path):
    """Two clones, one cached environment: the second clone's set-up must not make the first one run the
    second's code, and every entry point of the second (python, dcinet-eval, scripts/train_net.py, a
    subprocess started by its tests) imports the second clone's dcinet_d2."""
    clone = tmp_path / "clone b"  # a space in the path on purpose
    _clone_with_marker(ROOT, str(clone))
    res = subprocess.run(["bash", str(clone / "scripts" / "setup_env.sh")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    env = dict(os.environ, DCINET_WHOAMI="1")
    own = os.path.realpath(clone / "dcinet_d2" / "__init__.py")
    entry_points = ([str(clone / ".venv" / "bin" / "python"), "-c", "import dcinet_d2"],
                    [str(clone / ".venv" / "bin" / "dcinet-eval"), "--help"],
                    [str(clone / ".venv" / "bin" / "python"), str(clone / "scripts" / "train_net.py"), "--help"])
    # This clone, started after the other's set-up, still runs this clone's code.
    ours = [os.path.join(ROOT, ".venv", "bin", "python"), "-c",
            "import dcinet_d2, os; print(os.path.realpath(dcinet_d2.__file__))"]
    # All four at once (each is mostly imports, one core apiece), then each checked.
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
             for cmd in (*entry_points, ours)]
    outputs = [proc.communicate() for proc in procs]
    for cmd, proc, (out, err) in zip(entry_points, procs, outputs):
        assert proc.returncode == 0, (cmd, err)
        assert f"DCINET_D2_FROM {own}" in out, (cmd, out)
    (out, err), proc = outputs[3], procs[3]
    assert proc.returncode == 0, err
    assert out.strip() == os.path.realpath(os.path.join(ROOT, "dcinet_d2", "__init__.py"))
    assert "DCINET_D2_FROM" not in out
