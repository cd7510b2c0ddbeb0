"""One error hierarchy for the whole harness.

Every message is one line that names the file (and line, blob or field where
known), the value found and what was expected, e.g.::

    train.log:812: expected 'lr = <float>', got 'lr = -nan'

The CLI prints ``str(error)`` on stderr and exits with ``error.exit_code``
(2 for bad input, 1 for a configuration Caffe refuses) without a traceback.
"""

from __future__ import annotations

import os

__all__ = [
    "HarnessError",
    "InputError",
    "CaffeRefusal",
    "OracleUnavailable",
    "OracleError",
]


class HarnessError(Exception):
    """Base class: a one-line, user-facing message. Exit code 2."""

    exit_code = 2


def _where(path: str | os.PathLike | None, line: int | None = None, col: int | None = None) -> str:
    if path is None:
        return ""
    where = os.fspath(path)
    if line is not None:
        where += f":{line}"
        if col is not None:
            where += f":{col}"
    return where + ": "


class InputError(HarnessError):
    """Bad input: a missing, truncated, corrupt or mistyped file.

    ``InputError(path, "problem", line=3, col=7)`` renders as
    ``path:3:7: problem``.
    """

    def __init__(self, path=None, problem: str = "", *, line: int | None = None, col: int | None = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        self.line = line
        self.col = col
        super().__init__(_where(path, line, col) + problem)


class CaffeRefusal(HarnessError):
    """A solver setting real Caffe refuses.

    ``message`` is Caffe's own text (what follows ``F... file.cpp:N]`` in its
    log, trailing blanks removed: glog leaves one after a bare CHECK), ``when`` is ``"start"`` (Caffe dies while building the solver) or
    ``"first-update"`` (Caffe dies in the first ``ApplyUpdate``), and
    ``caffe_file`` the Caffe source location that reports it.
    """

    exit_code = 1

    def __init__(self, message: str, *, when: str, caffe_file: str = "", path=None):
        self.message = message = message.rstrip()
        self.when = when
        self.caffe_file = caffe_file
        self.path = None if path is None else os.fspath(path)
        at = "at start" if when == "start" else "at the first update"
        super().__init__(f"{_where(path)}Caffe refuses this solver ({at}): {message}")


class OracleUnavailable(HarnessError):
    """Real Caffe is not installed or cannot be installed here."""


class OracleError(HarnessError):
    """Real Caffe ran but did something unexpected (crash, missing output)."""
