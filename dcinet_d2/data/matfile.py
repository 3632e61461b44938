"""Reading MATLAB .mat files (CUHK-SYSU and PRW annotations) with one error for every unreadable file."""
import scipy.io as sio

__all__ = ["load_mat"]


def load_mat(path, expected, variable_names=None):
    """``scipy.io.loadmat(path, variable_names=...)``; ValueError naming the file and ``expected`` (what it
    should hold, e.g. "the variable 'pool'") if it is not a readable .mat file (not one at all, truncated,
    empty)."""
    try:
        return sio.loadmat(path, variable_names=variable_names)
    except Exception as e:  # noqa: BLE001 - scipy raises MatReadError, OSError, IndexError, ... for bad files
        raise ValueError(f"{path}: not a readable MATLAB .mat file ({type(e).__name__}: {e}); expected one "
                         f"with {expected}") from None
