"""The on-disk cache of parsed files: hits are bitwise equal to a build, stale and corrupt entries are rebuilt
with one warning, an unwritable directory means no cache, nothing is unpickled."""
import glob
import logging
import os

import numpy as np
import pytest

import eval_trees

from dcinet_d2.evaluation import protocol_cache


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    directory = tmp_path / "cache"
    monkeypatch.setenv("DCINET_CACHE", str(directory))
    return directory


@pytest.fixture()
def source(tmp_path):
    path = tmp_path / "source.txt"
    path.write_text("3 1 4 1 5")
    return str(path)


class Builder:
    """Parses ``source`` (whitespace-separated ints) and counts its calls."""

    def __init__(self, path):
        self.path, self.calls = path, 0

    def __call__(self):
        self.calls += 1
        values = np.array(open(self.path).read().split(), dtype=np.int64)
        return {"values": values, "halves": values / 2.0, "names": np.array([f"v{v}" for v in values]),
                "even": values % 2 == 0, "count": np.array(len(values))}

    def load(self, kind="test.numbers", version=1):
        return protocol_cache.load_or_build(kind, [protocol_cache.file_version(self.path)], self, version=version)


def cache_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == protocol_cache.__name__]


def test_hit_is_bitwise_equal_to_the_build(cache, source, caplog):
    builder = Builder(source)
    with caplog.at_level(logging.WARNING):
        built = builder.load()
        loaded = builder.load()
    assert builder.calls == 1
    eval_trees.assert_bitwise_equal(built, builder())
    eval_trees.assert_bitwise_equal(loaded, built)
    assert loaded["values"].tolist() == [3, 1, 4, 1, 5] and loaded["names"].tolist()[2] == "v4"
    assert not any(a.flags.writeable for a in loaded.values())
    assert not cache_warnings(caplog)
    entries = os.listdir(cache)
    assert len(entries) == 1 and entries[0].startswith("test.numbers-") and entries[0].endswith(".npz")


def test_kinds_and_sources_have_their_own_entries(cache, source, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("2 7")
    Builder(source).load()
    Builder(source).load(kind="test.other")
    assert Builder(str(other)).load()["values"].tolist() == [2, 7]
    assert len(os.listdir(cache)) == 3


@pytest.mark.parametrize("change", ["touch", "rewrite"])
def test_a_modified_source_invalidates(cache, source, caplog, change):
    builder = Builder(source)
    builder.load()
    st = os.stat(source)
    if change == "touch":
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
    else:
        with open(source, "w") as f:
            f.write("2 7 1 8 2 8")
        os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns + 2000))  # coarse clocks: make sure it differs
    with caplog.at_level(logging.WARNING):
        out = builder.load()
        again = builder.load()
    assert builder.calls == 2
    assert out["values"].tolist() == ([3, 1, 4, 1, 5] if change == "touch" else [2, 7, 1, 8, 2, 8])
    eval_trees.assert_bitwise_equal(again, out)
    (warning,) = cache_warnings(caplog)
    assert "stale entry" in warning


def test_a_new_version_of_the_arrays_invalidates(cache, source, caplog):
    builder = Builder(source)
    builder.load(version=1)
    with caplog.at_level(logging.WARNING):
        builder.load(version=2)
        builder.load(version=2)
    assert builder.calls == 2 and len(cache_warnings(caplog)) == 1


def _garbage(path):
    with open(path, "wb") as f:
        f.write(b"not a zip file at all")


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _flip_a_bit(path):
    data = bytearray(open(path, "rb").read())
    at = data.find(np.array([3, 1, 4, 1, 5], dtype=np.int64).tobytes())  # inside the "values" member
    data[at + 8] ^= 1
    open(path, "wb").write(bytes(data))


def _pickled_member(path):
    np.savez(path, __key__=np.array("{}"), values=np.array([object()], dtype=object), allow_pickle=True)


def _key_removed(path):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "__key__"}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("corrupt", [_garbage, _truncate, _flip_a_bit, _pickled_member, _key_removed])
def test_a_corrupt_entry_is_rebuilt_with_one_warning(cache, source, caplog, corrupt):
    builder = Builder(source)
    built = builder.load()
    (entry,) = glob.glob(str(cache / "*.npz"))
    corrupt(entry)
    with caplog.at_level(logging.WARNING):
        rebuilt = builder.load()
        again = builder.load()
    assert builder.calls == 2
    eval_trees.assert_bitwise_equal(rebuilt, built)
    eval_trees.assert_bitwise_equal(again, built)
    (warning,) = cache_warnings(caplog)
    assert "unreadable entry" in warning and entry in warning


def test_an_unwritable_cache_dir_means_no_cache(tmp_path, monkeypatch, source, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("DCINET_CACHE", str(blocker / "cache"))  # below a file: cannot be created
    builder = Builder(source)
    with caplog.at_level(logging.WARNING):
        first = builder.load()
        second = builder.load()
    assert builder.calls == 2
    eval_trees.assert_bitwise_equal(first, second)
    assert first["values"].tolist() == [3, 1, 4, 1, 5]
    (warning,) = cache_warnings(caplog)
    assert "not writable" in warning and "DCINET_CACHE" in warning


def test_no_temporary_file_is_left(cache, source):
    Builder(source).load()
    assert [p for p in os.listdir(cache) if not p.endswith(".npz")] == []


def test_object_arrays_and_reserved_names_are_refused(cache, source):
    version = [protocol_cache.file_version(source)]
    with pytest.raises(ValueError, match="object arrays"):
        protocol_cache.load_or_build("test.bad", version, lambda: {"x": np.array([None, 1], dtype=object)})
    with pytest.raises(ValueError, match="reserved"):
        protocol_cache.load_or_build("test.bad", version, lambda: {"file": np.zeros(2)})


def test_cache_dir_and_file_version(tmp_path, monkeypatch, source):
    monkeypatch.setenv("DCINET_CACHE", str(tmp_path / "here"))
    assert protocol_cache.cache_dir() == str(tmp_path / "here")
    monkeypatch.delenv("DCINET_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert protocol_cache.cache_dir() == str(tmp_path / "home" / ".cache" / "dcinet-d2" / "protocols")
    path, size, mtime_ns = protocol_cache.file_version(source)
    assert (path, size, mtime_ns) == (os.path.abspath(source), 9, os.stat(source).st_mtime_ns)
    with pytest.raises(FileNotFoundError, match=r"missing\.mat: not found \(expected the pool\)"):
        protocol_cache.file_version(str(tmp_path / "missing.mat"), "the pool")
