"""Slow, obviously-correct twins of the reference kernels.

Each twin follows Caffe's source call by call (one whole-array BLAS/math call
after another, like ``sgd_solver.cpp`` and friends), element by element with
numpy float32 scalars, so it can be read next to Caffe's code. Nothing here
is fused or clever:

* ``fma`` is exact rational arithmetic (``fractions.Fraction``) rounded once
  to nearest-even (``round_fraction``); float64 emulation would round twice;
* ``powf``/``pow``/``expf`` are glibc's, called through ctypes (the function
  Caffe calls -- there is no more "obvious" definition of its bits);
* BLAS semantics are spelled out: ``sscal`` with alpha 1 is a no-op, with
  alpha 0 it multiplies or zero-fills per ``Blas.zero_fill``, ``saxpy`` with
  alpha 0 is a no-op, fused or not per ``Blas.fused``.

Not part of the package: tests import it as ``naive``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "round_fraction",
    "fma32",
    "fma64",
    "powf",
    "pow64",
    "expf",
    "Blas",
    "OPENBLAS",
    "REFBLAS",
    "ATLAS",
    "sscal",
    "saxpy",
    "axpby",
    "powx",
    "sign",
    "apply_update",
    "sdot_openblas_haswell",
    "sdot_sequential",
    "sdot_atlas",
    "rate",
]

f32 = np.float32

_LIBM = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")


def _cfn(name, ctype, nargs):
    f = getattr(_LIBM, name)
    f.restype = ctype
    f.argtypes = [ctype] * nargs
    return f


_powf = _cfn("powf", ctypes.c_float, 2)
_pow = _cfn("pow", ctypes.c_double, 2)
_expf = _cfn("expf", ctypes.c_float, 1)


def powf(x, y) -> np.float32:
    """glibc ``powf``."""
    return f32(_powf(float(x), float(y)))


def pow64(x, y) -> np.float64:
    """glibc ``pow`` (double)."""
    return np.float64(_pow(float(x), float(y)))


def expf(x) -> np.float32:
    """glibc ``expf``."""
    return f32(_expf(float(x)))


# ---------------------------------------------------------------------------
# exact rounding
# ---------------------------------------------------------------------------
def round_fraction(q: Fraction, *, mant: int = 24, emin: int = -126, emax: int = 127) -> float:
    """Round a non-zero rational to the nearest binary float (ties to even).

    ``mant`` significand bits, normal exponents ``emin..emax`` (float32 by
    default; ``mant=53, emin=-1022, emax=1023`` for double). Subnormals
    have the fixed quantum ``2**(emin - mant + 1)``; results at or beyond
    ``2**(emax+1)`` become infinities. Returns a Python float holding the
    exact rounded value.
    """
    sign = -1.0 if q < 0 else 1.0
    q = abs(q)
    # exponent e with 2**e <= q < 2**(e+1)
    e = q.numerator.bit_length() - q.denominator.bit_length()
    if Fraction(2) ** e > q:
        e -= 1
    quantum_exp = max(e, emin) - (mant - 1)
    scaled = q / (Fraction(2) ** quantum_exp)
    m = math.floor(scaled)
    rest = scaled - m
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and m % 2 == 1):
        m += 1
    if m and Fraction(m) * Fraction(2) ** quantum_exp >= Fraction(2) ** (emax + 1):
        return sign * math.inf
    return sign * math.ldexp(float(m), quantum_exp)


def _fma(a, b, c, ftype, **fmt):
    a, b, c = (float(v) for v in (a, b, c))
    if not all(math.isfinite(v) for v in (a, b, c)):
        with np.errstate(all="ignore"):
            return ftype(np.float64(a) * np.float64(b) + np.float64(c))  # IEEE rules for inf/NaN
    q = Fraction(a) * Fraction(b) + Fraction(c)
    if q == 0:
        # exact zero: -0 only if both a*b and c are -0 (or sum of like-signed zeros)
        return ftype(np.float64(a) * np.float64(b) + np.float64(c))
    return ftype(round_fraction(q, **fmt))


def fma32(a, b, c) -> np.float32:
    """``fmaf``: ``a*b + c`` with one rounding to float32, exactly."""
    return _fma(a, b, c, f32)


def fma64(a, b, c) -> np.float64:
    """``fma``: ``a*b + c`` with one rounding to double, exactly."""
    return _fma(a, b, c, np.float64, mant=53, emin=-1022, emax=1023)


# ---------------------------------------------------------------------------
# BLAS as Caffe calls it
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Blas:
    """One BLAS's behaviour: FMA in saxpy, what sscal(0) does, its sdot order."""

    fused: bool
    zero_fill: int  # 0 multiply, 1 zero-fill on alpha == 0, 2 also on NaN alpha
    sdot: str

    def dot(self, x):
        return {"openblas": sdot_openblas_haswell, "sequential": sdot_sequential, "atlas": sdot_atlas}[self.sdot](x)


OPENBLAS = Blas(True, 2, "openblas")
REFBLAS = Blas(False, 0, "sequential")
ATLAS = Blas(False, 0, "atlas")


def sscal(alpha, y: np.ndarray, blas: Blas) -> None:
    """``cblas_sscal(n, alpha, y, 1)`` in place."""
    alpha = f32(alpha)
    if alpha == 1:
        return
    zero = blas.zero_fill and (alpha == 0 or (blas.zero_fill == 2 and alpha != alpha))
    for i in range(y.size):
        y[i] = f32(0) if zero else f32(alpha * y[i])


def saxpy(alpha, x: np.ndarray, y: np.ndarray, blas: Blas) -> None:
    """``cblas_saxpy(n, alpha, x, 1, y, 1)`` in place: ``y += alpha*x``."""
    alpha = f32(alpha)
    if alpha == 0:
        return
    for i in range(y.size):
        y[i] = fma32(alpha, x[i], y[i]) if blas.fused else f32(y[i] + f32(alpha * x[i]))


def axpby(alpha, x, beta, y, blas: Blas) -> None:
    """Caffe's non-MKL ``caffe_cpu_axpby``: ``sscal(beta, y)`` then ``saxpy(alpha, x, y)``."""
    sscal(beta, y, blas)
    saxpy(alpha, x, y, blas)


def powx(a: np.ndarray, b) -> np.ndarray:
    """``caffe_powx`` (``vsPowx`` of mkl_alternate.hpp): glibc ``powf`` per element."""
    return np.array([powf(v, b) for v in a], dtype=np.float32)


def sign(a: np.ndarray) -> np.ndarray:
    """``caffe_cpu_sign``: ``(0 < x) - (x < 0)``, so NaN gives 0."""
    return np.array([f32(int(f32(0) < v) - int(v < f32(0))) for v in a], dtype=np.float32)


def _ew(op, *arrays) -> np.ndarray:
    return np.array([f32(op(*vals)) for vals in zip(*arrays)], dtype=np.float32)


# ---------------------------------------------------------------------------
# one blob's Normalize/Regularize/ComputeUpdateValue/Update, call by call
# ---------------------------------------------------------------------------
def apply_update(solver: str, w, g, hist, *, blas: Blas, clip_scale=1, iter_size=1, weight_decay=0.0,
                 decay_mult=1.0, regularization="L2", rate=0.01, lr_mult=1.0, momentum=0.0, momentum2=0.999,
                 rms_decay=0.99, delta=1e-8, iter=0):
    """One blob's share of ``ApplyUpdate`` after the clipping factor is known.

    ``w``, ``g`` and ``hist`` (a list of one or two history arrays) are
    float32 arrays updated in place; ``clip_scale`` is the factor
    ``ClipGradients`` found (1: none). Follows ``sgd_solver.cpp`` and the
    solver files literally, with whole-array calls in Caffe's order.
    """
    n = w.size
    if clip_scale != 1:
        sscal(clip_scale, g, blas)
    if iter_size != 1:
        sscal(f32(f32(1) / f32(iter_size)), g, blas)
    local_decay = f32(f32(weight_decay) * f32(decay_mult))
    if local_decay:
        if regularization == "L2":
            saxpy(local_decay, w, g, blas)
        else:
            saxpy(local_decay, sign(w), g, blas)
    local_rate = f32(f32(rate) * f32(lr_mult))
    mu = f32(momentum)
    h = hist[0]
    if solver == "SGD":
        axpby(local_rate, g, mu, h, blas)
        g[:] = h
    elif solver == "Nesterov":
        u = h.copy()
        axpby(local_rate, g, mu, h, blas)
        axpby(f32(f32(1) + mu), h, -mu, u, blas)
        g[:] = u
    elif solver in ("AdaGrad", "RMSProp"):
        u = powx(g, f32(2))
        if solver == "AdaGrad":
            h[:] = _ew(lambda a, b: a + b, u, h)
        else:
            rho = f32(rms_decay)
            axpby(f32(f32(1) - rho), u, rho, h, blas)
        u = powx(h, f32(0.5))
        u = _ew(lambda a: a + f32(delta), u)
        u = _ew(lambda a, b: a / b, g, u)
        axpby(local_rate, u, f32(0), g, blas)
    elif solver == "AdaDelta":
        h2 = hist[1]
        u = powx(g, f32(2))
        axpby(f32(f32(1) - mu), u, mu, h, blas)
        t = np.full(n, f32(delta), dtype=np.float32)
        u = _ew(lambda a, b: a + b, t, h2)
        t = _ew(lambda a, b: a + b, t, h)
        u = _ew(lambda a, b: a / b, u, t)
        u = powx(u, f32(0.5))
        g[:] = _ew(lambda a, b: a * b, g, u)
        u = powx(g, f32(2))
        axpby(f32(f32(1) - mu), u, mu, h2, blas)
        sscal(local_rate, g, blas)  # caffe_cpu_scale: copy then scal
    elif solver == "Adam":
        m, v = hist
        b1, b2 = mu, f32(momentum2)
        t_ = iter + 1
        correction = f32(np.sqrt(1.0 - pow64(np.float64(b2), t_)) / (1.0 - pow64(np.float64(b1), t_)))
        axpby(f32(f32(1) - b1), g, b1, m, blas)
        t = _ew(lambda a: a * a, g)
        axpby(f32(f32(1) - b2), t, b2, v, blas)
        t = powx(v, f32(0.5))
        t = _ew(lambda a: a + f32(delta), t)
        t = _ew(lambda a, b: a / b, m, t)
        g[:] = t
        sscal(f32(local_rate * correction), g, blas)
    else:
        raise ValueError(solver)
    saxpy(f32(-1), g, w, blas)


# ---------------------------------------------------------------------------
# sdot summation orders
# ---------------------------------------------------------------------------
def sdot_sequential(x) -> np.float32:
    """Reference BLAS: ``s = s + x[i]*x[i]`` left to right in float."""
    s = f32(0)
    for v in x:
        s = f32(s + f32(v * v))
    return s


def sdot_atlas(x) -> np.float32:
    """ATLAS ``dot4p80_x1y1``: four round-robin accumulators, then the tail."""
    n = len(x)
    m = n - n % 4
    d = [f32(0)] * 4
    for i in range(m):
        d[i % 4] = f32(d[i % 4] + f32(x[i] * x[i]))
    s = f32(f32(d[0] + d[1]) + f32(d[2] + d[3]))
    for i in range(m, n):
        s = f32(s + f32(x[i] * x[i]))
    return s


def sdot_openblas_haswell(x) -> np.float32:
    """OpenBLAS 0.3.13 Haswell ``sdot``: 4x8 FMA lanes, fold, tail in double."""
    n = len(x)
    n1 = n - n % 32
    acc = [[f32(0)] * 8 for _ in range(4)]
    for i in range(0, n1, 32):
        for j in range(4):
            for lane in range(8):
                v = x[i + 8 * j + lane]
                acc[j][lane] = fma32(v, v, acc[j][lane])
    vec = f32(0)
    if n1:
        folded = [[f32(acc[j][lane] + acc[j][lane + 4]) for lane in range(4)] for j in range(4)]
        d = [f32(f32(folded[0][k] + folded[1][k]) + f32(folded[2][k] + folded[3][k])) for k in range(4)]
        vec = f32(f32(d[0] + d[1]) + f32(d[2] + d[3]))
    dot = 0.0
    for k in range(n1, n):
        dot += float(f32(x[k] * x[k]))
    dot += float(vec)
    return f32(dot)


# ---------------------------------------------------------------------------
# lr policies, written out as Caffe's GetLearningRate reads
# ---------------------------------------------------------------------------
def rate(policy: str, *, base_lr, gamma=0.0, power=0.0, stepsize=0, max_iter=0, it=0, current_step=0) -> np.float32:
    """Caffe's float ``rate`` at ``iter_ = it`` (multistep: ``current_step`` already advanced)."""
    base_lr, gamma, power = f32(base_lr), f32(gamma), f32(power)
    if policy == "fixed":
        return base_lr
    if policy == "step":
        cs = int(it / stepsize)  # C truncation
        return f32(float(base_lr) * float(pow64(float(gamma), cs)))
    if policy == "multistep":
        return f32(float(base_lr) * float(pow64(float(gamma), current_step)))
    if policy == "exp":
        return f32(float(base_lr) * float(pow64(float(gamma), it)))
    if policy == "inv":
        return f32(base_lr * powf(f32(f32(1) + f32(gamma * f32(it))), -power))
    if policy == "poly":
        return f32(base_lr * powf(f32(f32(1) - f32(f32(it) / f32(max_iter))), power))
    if policy == "sigmoid":
        e = expf(f32(-gamma * f32(f32(it) - f32(stepsize))))
        return f32(base_lr * f32(f32(1) / f32(f32(1) + e)))
    raise ValueError(policy)
