"""What every command line of dcinet-d2 shares (train_net.py, dcinet-eval, dcinet-search, the scripts):
building the config, and reporting a failure as one ``error: ...`` line.

    cfg = load_config(args.config_file, args.opts)
    try:
        ...
    except Exception as e:  # noqa: BLE001
        return report_error(e)      # "error: <first line>" on stderr, exit code 2; DCINET_DEBUG=1 re-raises
"""
import os
import sys

from .errors import error_line

__all__ = ["load_config", "report_error", "error_line", "DEBUG_ENV"]

# Set (to anything non-empty) to get the traceback instead of the one-line error.
DEBUG_ENV = "DCINET_DEBUG"


def load_config(config_file, opts=()):
    """Detectron2's default config with dcinet-d2's keys, merged with ``config_file`` then the ``KEY VALUE``
    list ``opts``; not frozen. ValueError naming the file for a missing file or an unknown key or value."""
    from detectron2.config import get_cfg

    from .config import add_dcinet_config

    if not os.path.isfile(config_file):
        raise ValueError(f"{config_file}: config file not found")
    cfg = get_cfg()
    add_dcinet_config(cfg)
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts))
    except Exception as e:  # noqa: BLE001 - yacs raises KeyError / ValueError / AssertionError for bad keys
        raise ValueError(f"{config_file}: not a dcinet-d2 config ({type(e).__name__}: {str(e).strip()})") from None
    return cfg


def report_error(e: BaseException, code: int = 2, *, last_line: bool = False, note: str = "") -> int:
    """Print ``e`` as one ``error: ...`` line on stderr (its first line, or with ``last_line`` its last
    non-empty one, then ``note``) and return ``code``; with $DCINET_DEBUG set, re-raise it instead. Call it
    inside the ``except`` block."""
    if os.environ.get(DEBUG_ENV):
        raise e
    if last_line:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        message = lines[-1] if lines else type(e).__name__
    else:
        message = error_line(e)
    print(f"error: {message}{note}", file=sys.stderr)
    return code
