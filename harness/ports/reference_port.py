"""``--port reference``: the harness's own numba reference, driven as a port.

It must pass every trace: on real Caffe captures that is the reference's
acceptance test seen from the outside, and on a golden corpus written by the
reference it checks the port machinery itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..config import SolverConfig, config_refusals, update_refusals

__all__ = ["ReferencePort"]


class ReferencePort:
    """``harness.reference.Reference`` behind the ``Port`` protocol.

    The arithmetic profile follows the BLAS build that recorded the trace
    (``harness.reference.PROFILE_FOR_BLAS``); settings Caffe refuses raise
    ``CaffeRefusal`` as Caffe would.
    """

    name = "reference"

    def supports(self, config: SolverConfig) -> bool | str:
        """Everything Caffe runs."""
        return True

    def init(self, config: SolverConfig, params: Mapping[str, np.ndarray], history: Sequence[np.ndarray] | None,
             iter: int, current_step: int, *, blas: str = "openblas") -> None:
        """Build a ``Reference`` in the profile of ``blas``; refuse what Caffe refuses."""
        from ..reference import Reference, profile_for_blas

        refusals = config_refusals(config) + update_refusals(config, start_iter=iter)
        if refusals:
            raise refusals[0]
        self._ref = Reference(config, params, profile=profile_for_blas(blas), history=history,
                              iter=iter, current_step=current_step)

    def step(self, passes: Sequence[Mapping[str, np.ndarray]]) -> dict:
        """One ``Reference.step``, as the protocol's mapping."""
        r = self._ref.step(list(passes))
        return {"params": r.params, "diff": r.diff, "history": r.history, "lr": r.lr, "current_step": r.current_step}
