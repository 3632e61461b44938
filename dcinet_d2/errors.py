"""One line of an error, as library functions quote a cause and command lines report a failure."""

__all__ = ["error_line"]


def error_line(e: BaseException) -> str:
    """The first line of ``str(e)``, or the exception's type name when it says nothing."""
    text = str(e)
    return text.splitlines()[0] if text.strip() else type(e).__name__
