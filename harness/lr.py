"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``), bit for bit.

``learning_rate(config, iter, current_step)`` is one call of Caffe's
``GetLearningRate`` with ``iter_ = iter``: it returns the float32 rate and
the ``current_step_`` Caffe holds afterwards (step recomputes it as
``iter / stepsize``; multistep advances it **at most once per call**; the
other policies leave it alone). ``lr_schedule(config, iters)`` evaluates the
successive calls for a whole sequence of iterations at once, with the same
bits, fast enough for ten million iterations in well under a second.

The arithmetic (float vs double per policy, glibc ``powf``/``pow``/``expf``)
is documented in ``harness.kernels.lr_policy``. ``dtype=np.float64`` gives
the float64 profile's yardstick (the same formulas in double).

Refusals: an unknown or unset ``lr_policy`` and this build's
``CHECK_GT(stepsize, 0)`` / ``CHECK_GE(gamma, 0)`` raise ``CaffeRefusal``
with Caffe's message and ``when="first-update"`` (``SolverConfig``'s
``lr_policy_refusal``). ``poly`` with ``max_iter = 0`` or ``iter >
max_iter`` is not refused by Caffe: it gives inf/NaN rates, and so do we.
"""

from __future__ import annotations

import numpy as np

from .config import LR_POLICIES, SolverConfig, lr_policy_refusal
from .kernels import lr_policy as _k

__all__ = ["LR_POLICIES", "policy_code", "check_lr_policy", "learning_rate", "lr_schedule", "current_steps"]

_DTYPES = (np.float32, np.float64)


def policy_code(lr_policy: str) -> int:
    """The kernel code of a Caffe ``lr_policy`` string (``KeyError`` lists the known ones)."""
    try:
        return _k.POLICIES.index(lr_policy)
    except ValueError:
        raise KeyError(f"unknown lr_policy {lr_policy!r} (known: {', '.join(_k.POLICIES)})") from None


def check_lr_policy(config: SolverConfig) -> None:
    """Raise the ``CaffeRefusal`` Caffe's ``GetLearningRate`` would die with, if any."""
    refusal = lr_policy_refusal(config)
    if refusal is not None:
        raise refusal


def _dtype(dtype):
    dt = np.dtype(dtype).type
    if dt not in _DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}")
    return dt


def _scalars(config: SolverConfig, dt):
    return (
        policy_code(config.lr_policy),
        dt(config.base_lr),
        dt(config.gamma),
        dt(config.power),
        int(config.stepsize),
        int(config.max_iter),
    )


def _stepvalues(config: SolverConfig) -> np.ndarray:
    return np.ascontiguousarray(config.stepvalue, dtype=np.int64).reshape(-1)


def learning_rate(config: SolverConfig, iter: int, current_step: int = 0, *, dtype=np.float32):
    """One ``GetLearningRate`` call at ``iter_ = iter``: ``(rate, new_current_step)``.

    ``rate`` is an ``np.float32`` (``np.float64`` with ``dtype=np.float64``).
    ``current_step`` is Caffe's ``current_step_`` before the call (restored
    from a ``.solverstate``, else 0). Raises ``CaffeRefusal`` for the
    settings Caffe dies on (see the module docstring).
    """
    dt = _dtype(dtype)
    check_lr_policy(config)
    policy, base_lr, gamma, power, stepsize, max_iter = _scalars(config, dt)
    it = int(iter)
    cs = int(current_step)
    if policy == _k.STEP:
        cs = int(_k.c_int_div(it, stepsize))
    elif policy == _k.MULTISTEP:
        sv = config.stepvalue
        if 0 <= cs < len(sv) and it >= sv[cs]:
            cs += 1
    fn = _k.rate_float32 if dt is np.float32 else _k.rate_float64
    with np.errstate(all="ignore"):
        rate = dt(fn(policy, base_lr, gamma, power, stepsize, max_iter, it, cs))
    return rate, cs


def _iters(iters):
    """``(iters array, start, use_range, n)``: an int ``n`` is the range ``0..n-1``."""
    if isinstance(iters, (int, np.integer)):
        n = int(iters)
        if n < 0:
            raise ValueError(f"iters must be >= 0, got {n}")
        return _EMPTY, 0, True, n
    arr = np.ascontiguousarray(iters, dtype=np.int64).reshape(-1)
    return arr, 0, False, arr.size


_EMPTY = np.zeros(0, dtype=np.int64)


def current_steps(config: SolverConfig, iters, *, current_step: int = 0) -> np.ndarray:
    """``current_step_`` during each successive call in ``iters`` (int64 array).

    step: ``iter / stepsize``; multistep: advanced at most once per call
    from ``current_step``; other policies: ``current_step`` unchanged.
    """
    check_lr_policy(config)
    arr, start, use_range, n = _iters(iters)
    policy = policy_code(config.lr_policy)
    out = np.empty(n, dtype=np.int64)
    if policy == _k.MULTISTEP:
        _k.multistep_steps(_stepvalues(config), arr, start, use_range, int(current_step), out)
    elif policy == _k.STEP:
        it = np.arange(start, start + n, dtype=np.int64) if use_range else arr
        b = int(config.stepsize)
        out[:] = (np.abs(it) // abs(b)) * np.where((it < 0) != (b < 0), -1, 1)
    else:
        out[:] = int(current_step)
    return out


def lr_schedule(config: SolverConfig, iters, *, current_step: int = 0, dtype=np.float32) -> np.ndarray:
    """The rates of successive ``GetLearningRate`` calls, vectorized.

    ``iters`` is the sequence of ``iter_`` values of successive calls (an
    int ``n`` means ``0..n-1``, a fresh run, without building that array);
    ``current_step`` is ``current_step_`` before the first of them.
    Element ``k`` equals ``learning_rate(config, iters[k], cs_k)[0]`` where
    ``cs_k`` is threaded through the calls in order -- multistep's
    one-advance-per-call state is a sequential integer scan, the rates are
    computed element-wise (in parallel where each needs ``powf``/``expf``;
    exp anchors glibc ``pow`` once per 1024 consecutive iterations, see
    ``harness.kernels.lr_policy``). Returns float32 (float64 with
    ``dtype=np.float64``).
    """
    dt = _dtype(dtype)
    check_lr_policy(config)
    arr, start, use_range, n = _iters(iters)
    policy, base_lr, gamma, power, stepsize, max_iter = _scalars(config, dt)
    out = np.empty(n, dtype=dt)
    fill = _k.schedule_float32 if dt is np.float32 else _k.schedule_float64
    with np.errstate(all="ignore"):
        fill(policy, base_lr, gamma, power, stepsize, max_iter, _stepvalues(config), arr, start, use_range,
             int(current_step), out)
    return out
