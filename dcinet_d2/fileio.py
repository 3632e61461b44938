"""Atomic file writes: a reader (or a process killed mid-write) never sees a half-written file; and a check
that a folder can be written before a long job starts writing there."""
import contextlib
import json
import os
import tempfile
import uuid


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside ``path``; on a clean exit it replaces ``path`` in one rename.

    On an exception the temporary file is removed and ``path`` is left as it was (a full disk, ENOSPC, included).
    A failed write raises its ``OSError``, also where torch's zip writer masked it with a RuntimeError ("unexpected
    pos"), and with ``path`` as its file name if it names none: the message says what was being written. The
    temporary name is fresh and in the same folder (``os.replace`` is atomic only within one file system);
    ``open(..., "x")`` keeps the usual permissions, where ``mkstemp`` would make the file private.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        cause = _os_error(e)
        if cause is None:
            raise
        if cause.filename is None:
            cause.filename = path
        if cause is e:
            raise
        raise cause.with_traceback(cause.__traceback__) from None  # what the masking error hid


def _os_error(error):
    """The OSError (with an errno) behind an exception: itself, or the one a RuntimeError was raised while
    handling (torch.save's zip writer fails "unexpected pos" in its clean-up after a write failed with ENOSPC);
    None if there is none."""
    if isinstance(error, RuntimeError) and isinstance(error.__context__, OSError):
        error = error.__context__
    return error if isinstance(error, OSError) and error.errno is not None else None


def write_json(path, data):
    """Write ``data`` as indented JSON to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def folder_write_problem(path):
    """Why files cannot be created in the folder ``path`` (str, one line), or None if they can.

    A folder that does not exist yet is judged by its nearest existing parent (it would be created there).
    Probes by creating a temporary file, which is removed: creates nothing that stays, needs no write
    permission bits (root writes anywhere but on a read-only file system).
    """
    target = folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    where = "" if folder == target else f"its parent {folder} "
    if not os.path.isdir(folder):
        return f"{where}exists and is not a folder"
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"{where}cannot be written ({e.strerror or type(e).__name__})"
    return None
