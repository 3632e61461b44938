"""On-disk cache of arrays parsed from dataset files (the protocol files are slow to parse: scipy.io.loadmat
of CUHK-SYSU's TestG100.mat takes seconds; its arrays load from the cache in milliseconds).

One ``.npz`` per derived entry under ``$DCINET_CACHE`` (default ``~/.cache/dcinet-d2/protocols``), named by
its kind and the absolute paths of its source files. It records the key it was built for (cache format,
kind, the entry's own version, and (absolute path, size, mtime in ns) of every source file); an entry whose
key differs (a source was modified or touched) or that cannot be read in full (zip CRC, missing member,
pickled data) is never trusted: it is rebuilt with one warning. Entries are written atomically (temporary
file + ``os.replace``), so concurrent evaluations never see half an entry; an unwritable cache directory
means no cache, with one warning per directory. Arrays only: nothing is ever unpickled.
"""
import hashlib
import json
import logging
import os
import re
import tempfile

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "FORMAT_VERSION", "cache_dir", "file_version", "load_or_build"]

CACHE_ENV = "DCINET_CACHE"
# Bump when the layout of an entry (not of one kind's arrays: those have their own version) changes.
FORMAT_VERSION = 1
_KEY_MEMBER = "__key__"
_RESERVED = {"file", "allow_pickle", _KEY_MEMBER}
_warned_dirs = set()


def cache_dir():
    """The cache directory: ``$DCINET_CACHE`` if set and not empty, else ``~/.cache/dcinet-d2/protocols``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "dcinet-d2", "protocols")


def file_version(path, what="a dataset file"):
    """(absolute path, size in bytes, mtime in ns) of a file: the part of a cache key it contributes.

    FileNotFoundError naming the file and ``what`` was expected if it is not a file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: not found (expected {what})")
    st = os.stat(path)
    return os.path.abspath(path), int(st.st_size), int(st.st_mtime_ns)


def _entry_path(directory, kind, versions):
    sources = json.dumps([kind] + [v[0] for v in versions])
    digest = hashlib.sha256(sources.encode("utf-8")).hexdigest()[:20]
    return os.path.join(directory, f"{re.sub(r'[^A-Za-z0-9_.-]', '_', kind)}-{digest}.npz")


def _key(kind, version, versions, members):
    # through JSON: the stored key comes back with lists, not tuples
    return json.loads(json.dumps({"format": FORMAT_VERSION, "kind": kind, "version": version,
                                  "sources": [list(v) for v in versions], "members": sorted(members)}))


def _load(path, kind, version, versions):
    """The arrays of a valid entry; None (with one warning if the entry exists) otherwise."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = json.loads(str(npz[_KEY_MEMBER][()]))
            arrays = {name: npz[name] for name in npz.files if name != _KEY_MEMBER}  # reads all: CRC checked
        if not isinstance(stored, dict) or stored.get("members") != sorted(arrays):
            raise ValueError("its members differ from those it lists")
    except Exception as e:  # noqa: BLE001 - whatever is wrong with an entry, it is rebuilt, never trusted
        logger.warning("protocol cache %s: unreadable entry (%s: %s): rebuilt", path, type(e).__name__, e)
        return None
    if stored != _key(kind, version, versions, arrays):
        logger.warning("protocol cache %s: stale entry (its source files, kind or format changed): rebuilt", path)
        return None
    return arrays


def _store(path, key, arrays):
    """Write an entry atomically; False (one warning per directory) if the directory is not writable."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, allow_pickle=False, **{_KEY_MEMBER: np.array(json.dumps(key))}, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        if directory not in _warned_dirs:
            _warned_dirs.add(directory)
            logger.warning("protocol cache %s is not writable (%s): parsed protocol files are not cached "
                           "(set %s to a writable directory)", directory, e, CACHE_ENV)
        return False
    return True


def load_or_build(kind, versions, build, *, version=1):
    """The arrays ``build()`` derives from some files, from the disk cache when it holds a valid entry.

    Args:
        kind (str): what is derived (e.g. ``"cuhk_sysu.TestG100"``): part of the entry's name and key.
        versions (sequence of tuple): :func:`file_version` of every file ``build`` reads, taken before
            building (a file modified meanwhile then only makes the next run rebuild).
        build (callable): () -> dict[str, np.ndarray] (no object arrays; names are not ``file``,
            ``allow_pickle`` or ``__key__``).
        version (int): version of this kind's arrays: bump it when ``build`` changes what it returns.
    Returns:
        dict[str, np.ndarray]: read-only arrays, equal (bitwise) to those ``build()`` returns.
    """
    versions = [tuple(v) for v in versions]
    path = _entry_path(cache_dir(), kind, versions)
    arrays = _load(path, kind, version, versions)
    if arrays is None:
        arrays = {name: np.asarray(value) for name, value in build().items()}
        bad = sorted(n for n, a in arrays.items() if n in _RESERVED or a.dtype.hasobject)
        if bad:
            raise ValueError(f"protocol cache {kind}: members {bad} are reserved names or object arrays")
        _store(path, _key(kind, version, versions, arrays), arrays)
    for value in arrays.values():
        value.setflags(write=False)
    return arrays
