"""caffe-harness: a conformance harness for Caffe's solvers.

The public API is what ``__all__`` lists; ``tests/test_api.py`` checks it.
Importing ``harness`` compiles no numba kernel: kernels compile (or load from
the on-disk cache) on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import BlobSpec, SolverConfig
from .errors import CaffeRefusal, HarnessError, InputError, OracleError, OracleUnavailable
from .trace import Iteration, Trace

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
]
