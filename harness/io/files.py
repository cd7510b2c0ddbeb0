"""Opening inputs and writing outputs the way every reader and writer must.

* ``open_input(path)``: ``open(path, "rb")`` with the usual failures as
  one-line ``InputError``s naming the file.
* ``atomic_write(path, write)``: ``write(tmp)`` into a temp file in the same
  folder, then ``os.replace``: what the user had is never half-overwritten.
"""

from __future__ import annotations

import os
import tempfile

from ..errors import InputError

__all__ = ["open_input", "atomic_write", "write_text_atomic"]


def open_input(path, *, expected: str = "a file"):
    """Open ``path`` for binary reading; failures become ``InputError(path, ...)``."""
    path = os.fspath(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, f"is a directory, expected {expected}") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)``, then move the result over ``path`` atomically."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, write)
