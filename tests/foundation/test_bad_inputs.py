"""The bad-input corpus of dcinet-eval, the synthetic generator's command line, train_net.py's OUTPUT_DIR and
--resume, and a full disk under the atomic writers. Every input is made here (no committed binaries).

Each case checks the exit code, one ``error: ...`` line naming the file or value and what was expected, no
traceback, and that nothing already written changed (the dataset loaders' corpus: tests/data/test_malformed_files.py).
"""
import errno
import importlib.util
import logging
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dcinet_d2 import fileio
from dcinet_d2.data import synthetic as S
from dcinet_d2.evaluation import cuhk_sysu as cuhk_protocol
from dcinet_d2.evaluation.cli import main as eval_main
from dcinet_d2.evaluation.offline import evaluate_search_results
from dcinet_d2.evaluation.protocol import GalleryDetections
from dcinet_d2.evaluation.search_metrics import evaluate_search
from dcinet_d2.evaluation.results import save_results
from dcinet_d2.resume import check_last_checkpoint
from dcinet_d2.search.index import GalleryIndex

ROOT = Path(__file__).resolve().parents[2]
CONFIG = str(ROOT / "configs" / "cpu" / "dcinet_r18_synth.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


eval_trees = _load("dcinet_eval_trees", ROOT / "tests" / "evaluation" / "eval_trees.py")


def _one_error(err, *expected):
    """stderr is one ``error: ...`` line holding every ``expected`` text."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for text in expected:
        assert str(text) in lines[0], (text, lines[0])
    return lines[0]


def _snapshot(folder):
    return {p: p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


@pytest.fixture()
def read_only(monkeypatch):
    """Make a folder read-only. Root writes through permission bits, so for root the folder also refuses what
    a read-only file system refuses (opening a file for writing in it, making a folder in it)."""
    folders = []

    def make(folder):
        folder = os.path.abspath(folder)
        os.chmod(folder, 0o555)
        folders.append(folder)
        if os.geteuid() == 0 and len(folders) == 1:
            real_open, real_mkdir = os.open, os.mkdir

            def inside(path):
                path = os.path.abspath(os.fsdecode(path))
                return any(path == f or path.startswith(f + os.sep) for f in folders)

            def refuse(path):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))

            def fake_open(path, flags, *args, **kwargs):
                if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
                    refuse(path)
                return real_open(path, flags, *args, **kwargs)

            def fake_mkdir(path, *args, **kwargs):
                if inside(path):
                    refuse(path)
                return real_mkdir(path, *args, **kwargs)

            monkeypatch.setattr(os, "open", fake_open)
            monkeypatch.setattr(os, "mkdir", fake_mkdir)
        return folder

    yield make
    for folder in folders:
        os.chmod(folder, 0o755)


# ----------------------------------------------------------------------------- dcinet-eval
@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuhk")
    images, queries = eval_trees.cuhk_tree(root, n_images=40, n_test=30, n_ids=12, n_queries=8,
                                           gallery_sizes=(10,), seed=5)
    results = eval_trees.random_results(images, queries, seed=3)
    good = root / "results.pth"
    save_results(str(good), results)
    return {"root": root, "results": results, "good": good}


def _copy(results):
    return {"gallery": {k: {f: t.clone() for f, t in v.items()} for k, v in results["gallery"].items()},
            "queries": results["queries"].clone()}


def _xywh(r):
    for entry in r["gallery"].values():
        entry["boxes"][:, 2:] -= entry["boxes"][:, :2]


def _first(r, key):
    return next(iter(r["gallery"].values()))[key]


# (kind, how the results file is made from the good results dict (None: given path), expected texts)
RESULTS_CASES = {
    "plain pickle": (lambda r, p: pickle.dump({"gallery": {}, "queries": r["queries"].numpy()}, open(p, "wb")),
                     ["not a results file readable with torch.load", "plain pickle"]),
    "truncated": (lambda r, p: p.write_bytes(_torch_bytes(r)[:700]), ["not a results file readable", "zip"]),
    "empty file": (lambda r, p: p.write_bytes(b""), ["empty file (0 bytes), expected a results file"]),
    "a folder": (lambda r, p: p.mkdir(), ["is a folder, expected a results file"]),
    "missing file": (lambda r, p: None, ["results file not found"]),
    "missing key": (lambda r, p: torch.save({"gallery": r["gallery"]}, p),
                    ["expected a dict with 'gallery' and 'queries'"]),
    "query dimension": (lambda r, p: torch.save({**r, "queries": torch.ones(8, 5) / 5 ** 0.5}, p),
                        ["embeddings of dimension 16, but the queries have dimension 5"]),
    "NaN scores": (lambda r, p: (_first(r, "scores").__setitem__(0, float("nan")), torch.save(r, p)),
                   ["['scores'] holds NaN"]),
    "NaN embeddings": (lambda r, p: (_first(r, "embeddings").__setitem__((0, 3), float("nan")), torch.save(r, p)),
                       ["['embeddings'] holds NaN"]),
    "NaN queries": (lambda r, p: (r["queries"].__setitem__((2, 0), float("nan")), torch.save(r, p)),
                    ["queries holds NaN"]),
    "XYWH boxes": (lambda r, p: (_xywh(r), torch.save(r, p)), ["x2 < x1 or y2 < y1", "XYWH"]),
}


def _torch_bytes(r):
    import io

    buffer = io.BytesIO()
    torch.save(r, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("kind", sorted(RESULTS_CASES))
def test_eval_bad_results_file_is_one_line(tree, tmp_path, capsys, kind):
    make, expected = RESULTS_CASES[kind]
    path = tmp_path / "bad.pth"
    make(_copy(tree["results"]), path)
    before = _snapshot(tmp_path)
    assert eval_main(["--format", "cuhk_sysu", "--root", str(tree["root"]), "--results", str(path),
                      "--gallery-size", "10"]) == 2
    captured = capsys.readouterr()
    _one_error(captured.err, path, *expected)
    assert captured.out == "" and _snapshot(tmp_path) == before  # nothing printed as a result, nothing changed


@pytest.mark.parametrize("kind", ["root missing", "root is a file", "protocol truncated", "pool not a .mat",
                                  "generic JSON not JSON", "generic root a folder"])
def test_eval_unreadable_dataset_is_one_line(tree, tmp_path, capsys, kind):
    root = tmp_path / "cuhk"
    shutil.copytree(tree["root"], root)
    fmt, expected = "cuhk_sysu", None
    if kind == "root missing":
        root, expected = tmp_path / "nowhere", [tmp_path / "nowhere", "not found (expected the cuhk_sysu dataset"]
    elif kind == "root is a file":
        root, expected = tree["good"], [tree["good"], "is not a folder"]
    elif kind == "protocol truncated":
        protocol = root / "annotation" / "test" / "train_test" / "TestG10.mat"
        protocol.write_bytes(protocol.read_bytes()[:300])
        expected = [protocol, "not a readable MATLAB .mat file", "'TestG10'"]
    elif kind == "pool not a .mat":
        pool = root / "annotation" / "pool.mat"
        pool.write_text("s1.jpg\ns2.jpg\n")
        expected = [pool, "not a readable MATLAB .mat file", "'pool'"]
    elif kind == "generic JSON not JSON":
        fmt, root = "generic", tmp_path / "gallery.json"
        root.write_text('{"images": [}')
        expected = [root, "not a JSON file"]
    else:
        fmt, expected = "generic", [root, "is a folder (expected the generic gallery JSON file)"]
    args = ["--format", fmt, "--root", str(root), "--results", str(tree["good"])]
    assert eval_main(args + (["--gallery-size", "10"] if fmt == "cuhk_sysu" else [])) == 2
    _one_error(capsys.readouterr().err, *expected)


def test_eval_pickle_in_a_process_prints_one_line(tree, tmp_path):
    """torch warns about foreign pickles before it refuses them: the user still sees one line."""
    path = tmp_path / "results.pkl"
    with open(path, "wb") as f:
        pickle.dump({"gallery": {}, "queries": np.ones((2, 2))}, f)
    script = Path(sys.executable).with_name("dcinet-eval")  # the console script, as a user runs it
    command = [str(script)] if script.is_file() else \
        [sys.executable, "-c", "import sys; from dcinet_d2.evaluation.cli import main; sys.exit(main())"]
    proc = subprocess.run(command + ["--format", "cuhk_sysu", "--root", str(tree["root"]), "--results", str(path),
                                     "--gallery-size", "10"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 2
    _one_error(proc.stderr, path, "plain pickle")


def test_eval_normalises_embeddings_with_a_warning(tree, tmp_path, caplog):
    """Embeddings of other lengths rank differently under the dot product; they are normalised (warning)."""
    rng = np.random.default_rng(0)
    scaled = _copy(tree["results"])
    for entry in scaled["gallery"].values():
        entry["embeddings"] *= torch.from_numpy(rng.uniform(0.2, 5.0, (len(entry["embeddings"]), 1))).float()
    scaled["queries"] *= 3.0
    path = tmp_path / "scaled.pth"
    torch.save(scaled, path)
    with caplog.at_level(logging.WARNING):
        got = evaluate_search_results(str(path), "cuhk_sysu", str(tree["root"]), gallery_size=10)
    want = evaluate_search_results(tree["results"], "cuhk_sysu", str(tree["root"]), gallery_size=10)
    assert got["mAP"] == pytest.approx(want["mAP"], abs=1e-6) and got["top1"] == want["top1"]
    warned = [r.getMessage() for r in caplog.records if "not L2-normalised" in r.getMessage()]
    assert len(warned) == 2 and all(str(path) in m for m in warned) and "gallery embeddings" in warned[0]
    # the case bites: the raw dot products rank otherwise
    root, names = str(tree["root"]), cuhk_protocol.gallery_images(str(tree["root"]))
    assert set(names) <= set(scaled["gallery"])  # every gallery image has results
    cat = lambda key: np.concatenate([scaled["gallery"][n][key].numpy() for n in names])  # noqa: E731
    counts = [len(scaled["gallery"][n]["scores"]) for n in names]
    raw = GalleryDetections(boxes=cat("boxes"), scores=cat("scores"), embeddings=cat("embeddings"),
                            image_index=np.repeat(np.arange(len(names)), counts), num_images=len(names))
    raw_map = evaluate_search(raw, scaled["queries"].numpy(), cuhk_protocol.search_protocol(root, 10, names),
                              det_thresh=0.5).summary()["mAP"]
    assert abs(raw_map - want["mAP"]) > 1.0


# ----------------------------------------------------------------------------- the synthetic generator
def _synthetic(*args):
    return subprocess.run([sys.executable, "-m", "dcinet_d2.data.synthetic", "--format", "prw", "--images", "24",
                           "--identities", "6", "--size", "96x128", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=300)


def test_synthetic_out_is_a_file(tmp_path, capsys):
    """As a program (exit code 2, one line on stderr), then in this process for a path under the file (a
    second program start costs about 10 s)."""
    (tmp_path / "a_file").write_text("keep me")
    res = _synthetic("--out", tmp_path / "a_file")
    assert res.returncode == 2
    _one_error(res.stderr, tmp_path / "a_file", "exists and is not a folder")
    out = tmp_path / "a_file" / "sub"
    with pytest.raises(SystemExit) as e:
        S.main(["--out", str(out), "--format", "prw", "--images", "24", "--identities", "6", "--size", "96x128"])
    assert e.value.code == 2
    _one_error(capsys.readouterr().err, out, "exists and is not a folder")
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_synthetic_read_only_folder(tmp_path, capsys, read_only):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "notes.txt").write_text("mine")
    folder = read_only(tmp_path / "ro")
    for out in (tmp_path / "ro", tmp_path / "ro" / "new"):
        with pytest.raises(SystemExit) as e:
            S.main(["--out", str(out), "--format", "prw", "--images", "24", "--identities", "6", "--size", "96x128"])
        assert e.value.code == 2
        _one_error(capsys.readouterr().err, out, "cannot be written (Permission denied)", folder)
    assert sorted(os.listdir(folder)) == ["notes.txt"] and (tmp_path / "ro" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, expected", [
    (["--images", "-3"], "argument --images: '-3': expected a positive integer"),
    (["--identities", "-1"], "argument --identities: '-1': expected a positive integer"),
    (["--seed", "-1"], "argument --seed: '-1': expected a non-negative integer"),
])
def test_synthetic_negative_numbers(tmp_path, capsys, args, expected):
    with pytest.raises(SystemExit) as e:
        S.main(["--out", str(tmp_path / "x"), "--format", "prw", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and expected in err[-1] and sum("error" in line for line in err) == 1
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- train_net.py
@pytest.fixture(scope="module")
def train_net():
    return _load("dcinet_train_net_script", ROOT / "scripts" / "train_net.py")


def _checkpoint_dir(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torch.save({"model": {"w": torch.ones(3)}, "iteration": 9}, out / "model_0000009.pth")
    good = (out / "model_0000009.pth").read_bytes()
    (out / "model_0000019.pth").write_bytes(good[: len(good) // 2])  # cut off by a full disk, say
    return out


@pytest.mark.parametrize("kind, pointer, expected", [
    ("binary", b"\xff\xfe\x00garbage\x89PNG", ["last_checkpoint: not a checkpoint file name"]),
    ("empty", b"", ["last_checkpoint: holds '', not a checkpoint file name"]),
    ("missing file", b"model_0000029.pth", ["names 'model_0000029.pth'", "is not a file"]),
    ("truncated checkpoint", b"model_0000019.pth", ["model_0000019.pth (named by", "not a whole checkpoint"]),
])
def test_resume_with_a_corrupt_last_checkpoint(train_net, tmp_path, capsys, kind, pointer, expected):
    out = _checkpoint_dir(tmp_path)
    (out / "last_checkpoint").write_bytes(pointer)
    before = _snapshot(out)
    assert train_net.cli(["--config-file", CONFIG, "--resume", "OUTPUT_DIR", str(out)]) == 2
    _one_error(capsys.readouterr().err, out, "delete last_checkpoint to start afresh", *expected)
    assert _snapshot(out) == before


def test_resume_with_a_corrupt_last_checkpoint_in_a_process(tmp_path):
    out = _checkpoint_dir(tmp_path)
    (out / "last_checkpoint").write_bytes(b"\x00\x01\x02 not a name")
    before = _snapshot(out)
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_net.py"), "--config-file", CONFIG, "--resume",
                          "OUTPUT_DIR", str(out)], capture_output=True, text=True, cwd=tmp_path, env=ENV, timeout=300)
    assert res.returncode == 2
    _one_error(res.stderr, out / "last_checkpoint", "not a checkpoint file name")
    assert _snapshot(out) == before


def test_resume_with_other_lr_factors_names_the_checkpoint_and_the_keys(tmp_path):
    """A run saved with one optimizer group, resumed by a config whose LR factors split it into two."""
    from dcinet_d2.resume import AtomicCheckpointer

    model = torch.nn.Linear(3, 2)
    saved = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    AtomicCheckpointer(model, str(tmp_path), optimizer=saved).save("model_0000009")
    resumed = torch.optim.SGD([{"params": [model.weight]}, {"params": [model.bias], "lr": 0.01}], lr=0.1)
    with pytest.raises(ValueError) as info:
        AtomicCheckpointer(model, str(tmp_path), optimizer=resumed).load(str(tmp_path / "model_0000009.pth"))
    message = str(info.value)
    assert "\n" not in message and "model_0000009.pth: its optimizer state does not fit" in message
    assert "SOLVER.*_LR_FACTOR" in message and "new OUTPUT_DIR" in message


def test_whole_last_checkpoint_is_accepted(tmp_path):
    out = _checkpoint_dir(tmp_path)
    assert check_last_checkpoint(str(out)) is None  # none yet: training starts afresh
    (out / "last_checkpoint").write_text("model_0000009.pth")
    assert check_last_checkpoint(str(out)) == str(out / "model_0000009.pth")


def test_read_only_output_dir(train_net, tmp_path, capsys, read_only):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "log.txt").write_text("an earlier run")
    folder = read_only(tmp_path / "ro")
    for out in (tmp_path / "ro", tmp_path / "ro" / "run2"):
        assert train_net.cli(["--config-file", CONFIG, "OUTPUT_DIR", str(out)]) == 2
        _one_error(capsys.readouterr().err, f"OUTPUT_DIR {out}", "cannot be written (Permission denied)")
    assert os.listdir(folder) == ["log.txt"] and (tmp_path / "ro" / "log.txt").read_text() == "an earlier run"
    assert fileio.folder_write_problem(str(tmp_path)) is None


# ----------------------------------------------------------------------------- a full disk
class _DiskFull:
    """A file that takes ``room`` bytes, then fails as a full disk does (ENOSPC)."""

    def __init__(self, f, room):
        self._f, self._room = f, room

    def write(self, data):
        if len(data) > self._room:
            self._f.write(data[: self._room])
            self._room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _full_disk(monkeypatch, room):
    """Files opened by the atomic writers (dcinet_d2.fileio) hold ``room`` bytes at most."""
    monkeypatch.setattr(fileio, "open", lambda *a, **k: _DiskFull(open(*a, **k), room), raising=False)


@pytest.mark.parametrize("room", [0, 100, 5000])
def test_full_disk_keeps_the_previous_results_file(tree, tmp_path, monkeypatch, room):
    path = tmp_path / "search_results.pth"
    save_results(str(path), tree["results"])
    before = path.read_bytes()
    changed = _copy(tree["results"])
    changed["queries"] = -changed["queries"]
    _full_disk(monkeypatch, room)
    with pytest.raises(OSError) as e:
        save_results(str(path), changed)
    assert e.value.errno == errno.ENOSPC and str(path) in str(e.value)  # the message names the file
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["search_results.pth"]


def test_full_disk_keeps_the_previous_index(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)

    def add(index, name):
        emb = rng.standard_normal((3, 8)).astype(np.float32)
        index.add(name, -1, rng.uniform(0, 50, (3, 4)).cumsum(1), rng.uniform(0.5, 1, 3),
                  emb / np.linalg.norm(emb, axis=1, keepdims=True))

    out = tmp_path / "idx"
    index = GalleryIndex(8, 0.5, str(tmp_path), {"config_sha256": "c", "weights_sha256": "w", "weights": "m.pth"})
    for i in range(3):
        add(index, f"a{i}.jpg")
    index.save(str(out))
    add(index, "b.jpg")
    index.save(str(out))  # two parts now
    before = _snapshot(out)
    _full_disk(monkeypatch, 64)
    with pytest.raises(OSError) as e:
        index.save(str(out), compact=True, search_file=True)
    assert e.value.errno == errno.ENOSPC
    assert _snapshot(out) == before  # no part lost, no temporary file left
    monkeypatch.undo()
    loaded = GalleryIndex.load(str(out))
    assert loaded.num_images == 4 and loaded.num_boxes == 12
