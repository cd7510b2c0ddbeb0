"""Caffe's CPU update in plain numpy float32, with switches for known misports.

``CaffeUpdate(flags)`` is an in-process port (``harness.ports.base.Port``)
that performs Caffe 1.0's ``ApplyUpdate`` -- learning rate, accumulation of
the ``iter_size`` passes, ClipGradients, Normalize, Regularize,
ComputeUpdateValue for the six solver types, ``Net::Update`` -- step by step
in numpy, with the rounding of the BLAS build the trace was recorded with
(``blas``: OpenBLAS fuses ``saxpy`` into an FMA and sums ``sdot`` in its
Haswell order; reference BLAS and ATLAS round twice). With no flags it is a
second, independent implementation of the reference (slow, obvious, exact);
each flag switches one step to the way a known misport computes it. The
flags and what they mean are catalogued in ``harness.ports.variants``;
SEMANTICS.md section 4 is the spec of the unflagged path.

Numbers: every array and scalar is float32 unless a comment says double;
``fma`` rounds once, ``powf``/``expf`` are glibc's (never ``np.power``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..config import SolverConfig, config_refusals, update_refusals
from . import _f32
from ._f32 import f32, fma, powf

__all__ = ["FLAGS", "BLAS_BUILDS", "CaffeUpdate", "caffe_rate", "lambdalr_factor"]

#: Every switch ``CaffeUpdate`` understands (the ids of ``harness.ports.variants.VARIANTS``).
FLAGS = frozenset(
    {
        "lr-outside-history",
        "momentum-init-first-grad",
        "nesterov-pytorch",
        "adam-eps-after-bias-correction",
        "adam-no-bias-correction",
        "rmsprop-eps-inside-sqrt",
        "adadelta-ratio-of-sqrts",
        "powx-as-sqrtf",
        "decoupled-weight-decay",
        "decay-mult-zero-decayed",
        "lr-mult-ignored",
        "frozen-blobs-skipped",
        "l1-sign-zero-positive",
        "clip-after-normalize",
        "clip-includes-weight-decay",
        "clip-norm-float64",
        "itersize-mean",
        "itersize-unscaled-sum",
        "multistep-multi-advance",
        "rates-float64",
        "rates-numpy-float32",
        "rates-float-int-power",
        "rates-lambdalr",
        "lr-off-by-one",
        "no-fma",
        "fma-everywhere",
    }
)

_SCAL_MULTIPLY, _SCAL_ZERO_FILL, _SCAL_ZERO_FILL_NAN = 0, 1, 2

def _sdot_kernels():
    """The BLAS ``sdot(x, x)`` orders: the reference's numba kernels when they load, else numpy twins.

    Both are exact; the numba ones are ~1000x faster on large blobs (the
    OpenBLAS order is a sequential FMA chain per lane).
    """
    try:
        import numba

        if numba.config.DISABLE_JIT:  # the kernels would run as Python loops: the numpy twins are faster
            raise ImportError("numba JIT disabled")
        from ..kernels import update as k

        def wrap(f):
            return lambda x: f(np.ascontiguousarray(x, dtype=np.float32).reshape(-1))

        return wrap(k.sumsq_openblas_haswell), wrap(k.sumsq_sequential), wrap(k.sumsq_atlas)
    except Exception:  # noqa: BLE001 - no numba, or the kernels are mid-change: the twins are exact too
        return _f32.sdot_openblas, _f32.sdot_sequential, _f32.sdot_atlas


_SDOT_OPENBLAS, _SDOT_SEQUENTIAL, _SDOT_ATLAS = _sdot_kernels()

#: How each BLAS build Caffe ran with rounds: (saxpy fused, what sscal(0) does, sdot order).
#: ATLAS's sscal(0) multiplies (the captures keep -0 in the diff of AdaGrad/Adam).
BLAS_BUILDS = {
    "openblas": (True, _SCAL_ZERO_FILL_NAN, _SDOT_OPENBLAS),
    "reference": (False, _SCAL_MULTIPLY, _SDOT_SEQUENTIAL),
    "atlas": (False, _SCAL_MULTIPLY, _SDOT_ATLAS),
}


class _Blas:
    """The three BLAS calls Caffe's CPU update uses, as one build does them.

    ``alpha``/``beta`` may be per-element arrays (one value per blob,
    repeated over its elements): the update runs on all blobs at once as one
    flat vector, and each element follows the rule its blob's scalar would.
    """

    def __init__(self, fused: bool, zero_fill: int):
        self.fused = fused
        self.zero_fill = zero_fill

    def scal(self, alpha, y):
        """``sscal(alpha, y)``: a no-op for alpha 1; alpha 0 zero-fills on OpenBLAS/ATLAS."""
        alpha = np.asarray(alpha, np.float32)
        if alpha.ndim == 0:
            if alpha == 1:
                return y
            if self.zero_fill != _SCAL_MULTIPLY and (alpha == 0 or (self.zero_fill == _SCAL_ZERO_FILL_NAN and alpha != alpha)):
                return np.zeros_like(y)
            return alpha * y
        out = np.where(alpha == 1, y, alpha * y)
        if self.zero_fill != _SCAL_MULTIPLY:
            zero = alpha == 0
            if self.zero_fill == _SCAL_ZERO_FILL_NAN:
                zero |= alpha != alpha
            out[zero] = 0
        return out

    def axpy(self, alpha, x, y):
        """``saxpy(alpha, x, y) = y + alpha*x``, fused or rounded twice; a no-op for alpha 0."""
        alpha = np.asarray(alpha, np.float32)
        if alpha.ndim == 0 and alpha == 0:
            return y
        out = fma(alpha, x, y) if self.fused else y + alpha * x
        return out if alpha.ndim == 0 else np.where(alpha == 0, y, out)

    def axpby(self, alpha, x, beta, y):
        """``caffe_cpu_axpby``: ``sscal(beta, y)`` then ``saxpy(alpha, x, y)``."""
        return self.axpy(alpha, x, self.scal(beta, y))


def _powi_float(x: np.float32, n: int) -> np.float32:
    """libgcc's ``__powisf2``: ``x**n`` by squaring, every product rounded to float."""
    x = f32(x)
    m = abs(n)
    y = x if m % 2 else f32(1)
    while True:
        m >>= 1
        if not m:
            break
        x = f32(x * x)
        if m % 2:
            y = f32(y * x)
    return f32(1) / y if n < 0 else y


def caffe_rate(config: SolverConfig, iter: int, current_step: int, flags: Iterable[str] = ()) -> tuple[np.float32, int]:
    """``SGDSolver::GetLearningRate`` at Caffe's ``iter_``: ``(rate, new current_step)``.

    Types as Caffe 1.0 built with GCC >= 6 (SEMANTICS.md section 2): step,
    exp and multistep promote to double (``pow(float, int)``), inv, poly and
    sigmoid stay in float (``powf``, ``expf``). ``flags`` may hold
    ``rates-float64``, ``rates-numpy-float32``, ``rates-float-int-power``,
    ``multistep-multi-advance`` and ``lr-off-by-one``. The caller has
    refused unknown policies (``harness.config.lr_policy_refusal``).
    """
    flags = frozenset(flags)
    if "lr-off-by-one" in flags:
        iter = iter + 1
    p = config.lr_policy
    base = f32(config.base_lr)
    gamma = f32(config.gamma)
    power = f32(config.power)
    f64 = "rates-float64" in flags
    npf = "rates-numpy-float32" in flags

    def int_power(n: int) -> np.float32:
        if npf:
            return base * np.power(np.array([gamma]), np.array([f32(n)]))[0]
        if "rates-float-int-power" in flags:
            return f32(base * _powi_float(gamma, n))
        return f32(float(base) * _f32.pow64(float(gamma), float(n)))

    if p == "fixed":
        return base, current_step
    if p == "step":
        current_step = iter // config.stepsize
        return int_power(current_step), current_step
    if p == "exp":
        return int_power(iter), current_step
    if p == "multistep":
        sv = config.stepvalue
        if "multistep-multi-advance" in flags:
            while current_step < len(sv) and iter >= sv[current_step]:
                current_step += 1
        elif current_step < len(sv) and iter >= sv[current_step]:
            current_step += 1
        return int_power(current_step), current_step
    with np.errstate(all="ignore"):
        if p == "inv":
            if f64:
                return f32(float(base) * (1.0 + float(gamma) * iter) ** -float(power)), current_step
            x = f32(1) + f32(gamma * f32(iter))
            if npf:
                return f32(base * np.power(np.array([x]), np.array([-power]))[0]), current_step
            return f32(base * powf(x, -power)), current_step
        if p == "poly":
            if f64:
                frac = 1.0 - iter / float(config.max_iter) if config.max_iter else float("nan")
                try:
                    return f32(float(base) * math.pow(frac, float(power))), current_step
                except (ValueError, OverflowError):
                    return f32(float("nan")), current_step
            x = f32(1) - f32(f32(iter) / f32(config.max_iter))
            if npf:
                return f32(base * np.power(np.array([x]), np.array([power]))[0]), current_step
            return f32(base * powf(x, power)), current_step
        if p == "sigmoid":
            z = f32(-gamma * f32(f32(iter) - f32(config.stepsize)))
            if f64:
                return f32(float(base) / (1.0 + math.exp(float(-gamma) * (iter - config.stepsize)))), current_step
            e = np.exp(np.array([z]))[0] if npf else _f32.expf(z)
            return f32(base * f32(f32(1) / f32(f32(1) + e))), current_step
    raise ValueError(f"unknown lr_policy {p!r}")


def lambdalr_factor(config: SolverConfig, it: int) -> float:
    """``rate(it) / base_lr`` as a Python port writes it for ``LambdaLR``: all in double.

    ``gamma ** (it // stepsize)``, ``gamma ** it``, ``(1 + gamma*it) ** -power``,
    ``gamma ** bisect_right(stepvalue, it)``, ``(1 - it/max_iter) ** power``,
    ``1 / (1 + exp(-gamma*(it - stepsize)))``.
    """
    import bisect

    p = config.lr_policy
    gamma, power = float(config.gamma), float(config.power)
    try:
        if p == "fixed":
            return 1.0
        if p == "step":
            return gamma ** (it // config.stepsize)
        if p == "exp":
            return gamma ** it
        if p == "inv":
            return (1.0 + gamma * it) ** (-power)
        if p == "multistep":
            return gamma ** bisect.bisect_right(list(config.stepvalue), it)
        if p == "poly":
            return (1.0 - it / config.max_iter) ** power
        if p == "sigmoid":
            return 1.0 / (1.0 + math.exp(-gamma * (it - config.stepsize)))
    except (ZeroDivisionError, OverflowError, ValueError):
        return float("nan")
    raise ValueError(f"unknown lr_policy {p!r}")


def _sign(w: np.ndarray, zero_positive: bool) -> np.ndarray:
    """``caffe_sign``: -1, 0 or +1 (NaN gives 0); +1 at zero with ``zero_positive``."""
    s = (w > 0).astype(np.float32) - (w < 0).astype(np.float32)
    if zero_positive:
        s[w == 0] = 1
    return s


class CaffeUpdate:
    """Caffe 1.0's CPU solver update in numpy, optionally with misport ``flags``.

    A ``harness.ports.base.Port``: ``supports``, ``init(config, params,
    history, iter, current_step, *, blas)`` and ``step(passes)``. It refuses
    (raises ``CaffeRefusal``) what Caffe refuses, so it also passes the
    refused traces. ``blas`` picks the rounding of the build the trace was
    recorded with; ``no-fma`` / ``fma-everywhere`` override its ``saxpy``.
    """

    def __init__(self, flags: Iterable[str] = (), *, name: str | None = None):
        flags = frozenset(flags)
        unknown = flags - FLAGS
        if unknown:
            raise ValueError(f"unknown flag(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(FLAGS))}")
        self.flags = flags
        self.name = name or ("caffe" if not flags else "+".join(sorted(flags)))

    # -- Port protocol ------------------------------------------------------
    def supports(self, config: SolverConfig) -> bool | str:
        """Every solver type and policy Caffe has (and Caffe's refusals)."""
        return True

    def init(self, config: SolverConfig, params: Mapping[str, np.ndarray], history: Sequence[np.ndarray] | None,
             iter: int, current_step: int, *, blas: str = "openblas") -> None:
        """Start from ``params``/``history`` at Caffe's ``iter_``; raise ``CaffeRefusal`` as Caffe would."""
        refusals = config_refusals(config) + update_refusals(config, start_iter=iter)
        if refusals:
            raise refusals[0]
        if blas not in BLAS_BUILDS:
            raise ValueError(f"unknown blas {blas!r}; known: {', '.join(BLAS_BUILDS)}")
        fused, zero_fill, sdot = BLAS_BUILDS[blas]
        if "no-fma" in self.flags:
            fused = False
        if "fma-everywhere" in self.flags:
            fused = True
        self._ops = _Blas(fused, zero_fill)
        self.sdot = sdot
        self.config = config
        specs = config.blobs
        self.names = [b.name for b in specs]
        self.shapes = [tuple(b.shape) for b in specs]
        counts = [b.count for b in specs]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(int)

        def per_element(values):
            return np.repeat(np.array(values, np.float32), counts)

        self.lr_mult = per_element([b.lr_mult for b in specs])
        dm = [b.decay_mult for b in specs]
        if "decay-mult-zero-decayed" in self.flags:
            dm = [1.0 if m == 0 else m for m in dm]
        self.local_decay = f32(config.weight_decay) * per_element(dm)
        self.frozen = per_element([b.lr_mult == 0 for b in specs]) != 0
        self.w = self._flat(params)
        slots = config.history_slots
        if history is None:
            self.history = [np.zeros_like(self.w) for _ in range(slots)]
        else:
            nb = len(specs)
            self.history = [self._flat(list(history)[s * nb:(s + 1) * nb]) for s in range(slots)]
        self.iter = int(iter)
        self.current_step = int(current_step)
        self._w_next = None

    def _flat(self, arrays) -> np.ndarray:
        if isinstance(arrays, Mapping):
            arrays = [arrays[n] for n in self.names]
        return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)

    def _split(self, flat: np.ndarray) -> list[np.ndarray]:
        o = self.offsets
        return [flat[o[i]:o[i + 1]].reshape(self.shapes[i]).copy() for i in range(len(self.names))]

    def step(self, passes: Sequence[Mapping[str, np.ndarray]]) -> dict:
        """One ``ApplyUpdate``; returns ``params``, ``diff``, ``history``, ``lr``, ``current_step`` (copies)."""
        cfg, F, A = self.config, self.flags, self._ops
        rate, self.current_step = caffe_rate(cfg, self.iter, self.current_step, F)
        local_rate = None
        if "rates-lambdalr" in F:  # group lr = (base_lr*lr_mult) * factor, in double, rounded once
            factor = lambdalr_factor(cfg, self.iter + (1 if "lr-off-by-one" in F else 0))
            rate = f32(float(cfg.base_lr) * factor)
            mult = np.ones_like(self.lr_mult, dtype=np.float64) if "lr-mult-ignored" in F else self.lr_mult.astype(np.float64)
            local_rate = (float(cfg.base_lr) * mult * factor).astype(np.float32)
        clipping = cfg.clip_gradients >= 0
        with np.errstate(all="ignore"):
            g = np.zeros_like(self.w)
            for p in passes:  # Caffe's diffs accumulate in memory that starts at 0
                g = g + self._flat(p)
            if clipping and not ({"clip-after-normalize", "clip-includes-weight-decay"} & F):
                g = self._clip(g)
            g = self._normalize(g)
            if clipping and "clip-after-normalize" in F:
                g = self._clip(g)
            g = self._regularize(g)
            if clipping and "clip-includes-weight-decay" in F:
                g = self._clip(g)
            if local_rate is None:
                local_rate = np.full_like(self.w, rate) if "lr-mult-ignored" in F else rate * self.lr_mult
            old = [h.copy() for h in self.history]
            g = self._update(g, local_rate)
            if "decoupled-weight-decay" in F:
                x = _sign(self.w, "l1-sign-zero-positive" in F) if cfg.regularization_type == "L1" else self.w
                g = A.axpy(local_rate * self.local_decay, x, g)
            if "frozen-blobs-skipped" in F and self.frozen.any():
                g = np.where(self.frozen, np.float32(0), g)
                self.history = [np.where(self.frozen, h0, h) for h0, h in zip(old, self.history)]
            if self._w_next is not None:  # the variant updated the weights itself
                self.w, self._w_next = self._w_next, None
            else:
                self.w = self.w - g  # Net::Update: saxpy(-1, diff, data), exact either way
        self.iter += 1
        self.last_flat = {"params": self.w.copy(), "diff": g.copy(), "history": np.concatenate(self.history)}
        return {
            "params": dict(zip(self.names, self._split(self.w))),
            "diff": dict(zip(self.names, self._split(g))),
            "history": [a for h in self.history for a in self._split(h)],
            "lr": rate,
            "current_step": self.current_step,
        }

    # -- the stages -------------------------------------------------------------
    def _clip(self, g: np.ndarray) -> np.ndarray:
        clip = f32(self.config.clip_gradients)
        if "clip-norm-float64" in self.flags:
            g64 = g.astype(np.float64)
            l2 = f32(math.sqrt(float(np.dot(g64, g64))))
        else:
            sumsq = f32(0)
            o = self.offsets
            for i in range(len(self.names)):
                sumsq = f32(sumsq + self.sdot(g[o[i]:o[i + 1]]))
            l2 = np.sqrt(sumsq)
        if l2 > clip:
            return self._ops.scal(f32(clip / l2), g)
        return g

    def _normalize(self, g: np.ndarray) -> np.ndarray:
        n = self.config.iter_size
        if n == 1 or "itersize-unscaled-sum" in self.flags:
            return g
        if "itersize-mean" in self.flags:
            return g / f32(n)
        return self._ops.scal(f32(f32(1) / f32(n)), g)

    def _regularize(self, g: np.ndarray) -> np.ndarray:
        cfg, F = self.config, self.flags
        if "decoupled-weight-decay" in F:
            return g
        decay = self.local_decay
        if "frozen-blobs-skipped" in F:
            decay = np.where(self.frozen, np.float32(0), decay)
        if not decay.any():
            return g
        x = self.w if cfg.regularization_type == "L2" else _sign(self.w, "l1-sign-zero-positive" in F)
        return self._ops.axpy(decay, x, g)

    def _sqrt(self, x: np.ndarray) -> np.ndarray:
        """``caffe_powx(x, 0.5)``: glibc ``powf``, or ``sqrtf`` under ``powx-as-sqrtf``."""
        if "powx-as-sqrtf" in self.flags:
            return np.sqrt(x)
        return powf(x, f32(0.5))

    def _square(self, x: np.ndarray) -> np.ndarray:
        """``caffe_powx(x, 2)``: glibc ``powf``, or ``x*x`` under ``powx-as-sqrtf``."""
        if "powx-as-sqrtf" in self.flags:
            return x * x
        return powf(x, f32(2))

    def _update(self, g: np.ndarray, lr: np.ndarray) -> np.ndarray:
        """ComputeUpdateValue of ``config.type`` on the flat vector; updates ``self.history``."""
        cfg, F, A, H = self.config, self.flags, self._ops, self.history
        t = cfg.type
        mom = f32(cfg.momentum)
        delta = f32(cfg.delta)
        one = f32(1)
        if t in ("SGD", "Nesterov"):
            h_old = H[0]
            if "momentum-init-first-grad" in F and self.iter == 0:
                h_old = g.copy()
            if t == "Nesterov" and "nesterov-pytorch" in F:
                buf = A.axpby(one, g, mom, h_old)  # buf = mu*buf + g
                H[0] = buf
                step = A.axpy(mom, buf, g)  # g + mu*buf
                self._w_next = A.axpy(-lr, step, self.w)  # param.add_(step, alpha=-lr)
                return A.scal(lr, step)
            outside = "lr-outside-history" in F
            h = A.axpby(one if outside else lr, g, mom, h_old)
            H[0] = h
            step = h.copy() if t == "SGD" else A.axpby(f32(one + mom), h, -mom, h_old)
            if outside:  # w = saxpy(-lr, step, w), as torch's param.add_(buf, alpha=-lr)
                self._w_next = A.axpy(-lr, step, self.w)
                return A.scal(lr, step)
            return step
        if t == "AdaGrad":
            h = self._square(g) + H[0]
            H[0] = h
            u = g / (self._sqrt(h) + delta)
            return A.axpby(lr, u, f32(0), g)
        if t == "RMSProp":
            rho = f32(cfg.rms_decay)
            h = A.axpby(f32(one - rho), self._square(g), rho, H[0])
            H[0] = h
            if "rmsprop-eps-inside-sqrt" in F:
                u = g / self._sqrt(h + delta)
            else:
                u = g / (self._sqrt(h) + delta)
            return A.axpby(lr, u, f32(0), g)
        if t == "AdaDelta":
            h1 = A.axpby(f32(one - mom), self._square(g), mom, H[0])
            H[0] = h1
            if "adadelta-ratio-of-sqrts" in F:
                u = self._sqrt(delta + H[1]) / self._sqrt(delta + h1)
            else:
                u = self._sqrt((delta + H[1]) / (delta + h1))
            g = g * u
            H[1] = A.axpby(f32(one - mom), self._square(g), mom, H[1])
            return A.scal(lr, g)
        if t == "Adam":
            b1 = f32(cfg.momentum)
            b2 = f32(cfg.momentum2)
            m = A.axpby(f32(one - b1), g, b1, H[0])
            H[0] = m
            v = A.axpby(f32(one - b2), g * g, b2, H[1])  # caffe_mul, not powx
            H[1] = v
            tt = self.iter + 1
            s = self._sqrt(v)
            # double, as C++ evaluates pow(float, int) and the correction
            bc1 = np.float64(1) - np.float64(_f32.pow64(float(b1), tt))
            bc2 = np.float64(1) - np.float64(_f32.pow64(float(b2), tt))
            if "adam-eps-after-bias-correction" in F:
                s = m / (s / f32(np.sqrt(bc2)) + delta)
                return A.scal((lr.astype(np.float64) / bc1).astype(np.float32), s)
            s = m / (s + delta)
            corr = one if "adam-no-bias-correction" in F else f32(np.sqrt(bc2) / bc1)
            return A.scal(lr * corr, s)
        raise ValueError(f"unknown solver type {t!r}")
