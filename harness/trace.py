"""The one trace type: a solver run as inputs plus expected outputs.

Captures (real Caffe runs, CAPTURE_FORMAT.md) and golden traces
(docs/TRACE_FORMAT.md) both load into a ``Trace``; the reference, ports and
reports only ever see ``Trace``.

Conventions
-----------
* Blob names are ``<layer>/<index>`` in net order (``config.blobs``).
* ``history`` is a list of arrays in Caffe's ``SolverState.history`` order:
  one per learnable blob, or for AdaDelta/Adam all first slots then all
  second slots.
* ``Iteration.iter`` is the 0-based index ``k`` of the update; it used
  ``lr(k)`` and its results are what Caffe snapshots as ``_iter_{k+1}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import SolverConfig

__all__ = ["Iteration", "Trace"]

Params = dict[str, np.ndarray]


@dataclass
class Iteration:
    """One update: its gradients (inputs) and what Caffe produced (expected).

    ``grads`` has ``iter_size`` dicts, one per forward-backward pass, holding
    the raw diff of each learnable blob before accumulation. Expected fields
    are ``None`` where the source did not record them.
    """

    iter: int
    grads: list[Params]
    #: the rate Caffe used: a float32 value, or the log's printed text (6
    #: significant digits) when it only comes from a glog line
    lr: float | str | None = None
    params: Params | None = None
    diff: Params | None = None
    history: list[np.ndarray] | None = None
    current_step: int | None = None


@dataclass
class Trace:
    """A run: solver, starting point, per-iteration gradients and expectations.

    ``init_history`` is ``None`` for a fresh run (zeros); a resumed run sets
    it with ``init_iter``/``init_current_step`` from the ``.solverstate``.
    ``refusal`` holds Caffe's fatal message when Caffe refused the settings
    (then ``iterations`` may hold only the inputs); ``refusal_when`` is
    ``"start"`` or ``"first-update"``.
    ``provenance`` records where the expectations came from: at least
    ``origin`` (``"caffe"`` or ``"reference"``) and ``blas``.
    """

    name: str
    config: SolverConfig
    init_params: Params
    iterations: list[Iteration]
    init_history: list[np.ndarray] | None = None
    init_iter: int = 0
    init_current_step: int = 0
    provenance: dict[str, Any] = field(default_factory=dict)
    refusal: str | None = None
    refusal_when: str | None = None
    source: str = ""

    @property
    def blas(self) -> str:
        return str(self.provenance.get("blas", "openblas"))
