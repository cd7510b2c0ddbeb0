"""caffe-harness: a conformance harness for Caffe's solvers.

The public API is what ``__all__`` lists; ``tests/test_api.py`` checks it.
Importing ``harness`` compiles no numba kernel and loads no kernel module:
the names below that need the kernels (``Reference``, ``replay``,
``learning_rate``, ``lr_schedule``) are imported on first use.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .config import BlobSpec, SolverConfig
from .errors import CaffeRefusal, HarnessError, InputError, OracleError, OracleUnavailable
from .trace import Iteration, Trace

#: public names served lazily: name -> module (relative to this package)
_LAZY = {
    "load_solver": ".io.solver",
    "load_capture": ".io.capture",
    "read_golden": ".io.golden",
    "write_golden": ".io.golden",
    "verify_golden": ".io.golden",
    "read_caffemodel": ".io.blobs",
    "read_solverstate": ".io.blobs",
    "write_caffemodel": ".io.blobs",
    "write_solverstate": ".io.blobs",
    "Reference": ".reference",
    "learning_rate": ".lr",
    "lr_schedule": ".lr",
    "Tolerance": ".compare",
    "replay": ".replayer",
    "replay_trace": ".replayer",
    "parse_log": ".logs",
    "read_runs": ".logs",
    "find_caffe": ".oracle",
    "capture": ".oracle",
    "capture_like": ".oracle",
}

__all__ = [
    "__version__",
    "BlobSpec",
    "SolverConfig",
    "Iteration",
    "Trace",
    "HarnessError",
    "InputError",
    "CaffeRefusal",
    "OracleError",
    "OracleUnavailable",
    *_LAZY,
]


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
