"""Snapshot check kernels: what Caffe's update leaves between two snapshots, bit for bit.

numba only (no protobuf, no printing; the one file read is the pin below).
``harness.audit`` streams the blobs of two consecutive snapshots ``k-1``,
``k`` through these kernels chunk by chunk; all arrays are float32 C-contiguous
1-D chunks of one blob, all scalars float32 rounded as Caffe rounds them.
Notation as in :mod:`harness.kernels.update`: ``fl(x)`` rounds to float32,
``fma`` rounds once, ``h`` is a history blob of snapshot ``k``, ``hp`` the
same blob of ``k-1``, ``d`` the diff of ``k`` (Caffe's update value); ``fused``
and ``zero_fill`` are the BLAS profile's flags.

``nesterov_expected``
    ``d = axpby(fl(1+momentum), h, -momentum, hp)``: FMA when fused.
``adam_expected``
    ``d = scal(rate_correction, fl(m / fl(powf(v, 0.5) + eps_hat)))``, no FMA.
``witness``
    whether some float32 gradient ``g`` takes ``hp`` to ``h`` (and gives
    ``d``) through the solver's ``ComputeUpdateValue``: a bisection over the
    float32 line (see its docstring).

The BLAS ops (``scal``, ``axpy``, ``axpby``) and ``fma``/``powf`` are those of
:mod:`harness.kernels.update`, imported rather than repeated, so the checks
cannot drift from the reference update. numba's on-disk cache does not see
that import: it keys a function on the content of its own file only (checked
on numba 0.68: a cached caller keeps the old code of a callee changed in
another file). So these kernels are cached only while ``update.py`` is the
file they were checked against, pinned by ``_UPDATE_SHA256``; any other
``update.py`` turns caching off here -- compiled afresh in each process,
never stale -- until the pin is updated, which, being an edit of this file,
invalidates its cache. ``tests/test_audit.py`` fails while the pin is stale.
"""

from __future__ import annotations

import hashlib
import math

import numba
import numpy as np

from . import update as _update
from .update import axpby, powf, scal

__all__ = [
    "CACHE",
    "W_SGD",
    "W_ADAGRAD",
    "W_RMSPROP",
    "W_ADADELTA",
    "W_ADAM",
    "WITNESS_UNCHECKED",
    "WITNESS_FAILED",
    "WITNESS_OK",
    "nesterov_expected",
    "adam_expected",
    "witness",
]

#: SHA-256 of the ``update.py`` these kernels were compiled and checked against
_UPDATE_SHA256 = "0098f4bd5307bf71750fd6199cea1958d62b6bb53774a73e0702abd17cdeb1c0"


def _sha256_of_source(module) -> str | None:
    try:
        with open(module.__file__, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except (OSError, TypeError):  # no source file (frozen, zipped): never trust a cache
        return None


#: whether these kernels use numba's on-disk cache (``update.py`` matches the pin)
CACHE: bool = _sha256_of_source(_update) == _UPDATE_SHA256

_njit = numba.njit(cache=CACHE, error_model="numpy", nogil=True)


def _jit(signature: str):
    """An entry kernel: ``_njit`` with its one explicit float32 signature."""
    return numba.njit([signature], cache=CACHE, error_model="numpy", nogil=True)


# ---------------------------------------------------------------------------
# update values recomputed from the histories
# ---------------------------------------------------------------------------


@_jit("void(float32[::1], float32[::1], float32, float32, boolean, int64, float32[::1])")
def nesterov_expected(h, hp, one_plus_mu, neg_mu, fused, zero_fill, out):
    """Nesterov's update value from the two histories, into ``out``.

    Caffe (``NesterovSolver::ComputeUpdateValue``): ``u = h_prev``, then
    ``caffe_cpu_axpby(fl(1+momentum), h, -momentum, u)``. Per element, all
    float: ``out = fma(one_plus_mu, h, fl(neg_mu*hp))`` when fused, else
    ``fl(fl(one_plus_mu*h) + fl(neg_mu*hp))`` (``scal``/``axpy`` short-cuts
    as the profile's BLAS).
    """
    for i in range(h.size):
        out[i] = axpby(one_plus_mu, h[i], neg_mu, hp[i], fused, zero_fill)


@_jit("void(float32[::1], float32[::1], float32, float32, int64, float32[::1])")
def adam_expected(m, v, rate_correction, eps_hat, zero_fill, out):
    """Adam's update value from its two histories ``m``, ``v``, into ``out``.

    Caffe (``AdamSolver::ComputeUpdateValue``): ``t = powx(v, 0.5)``;
    ``t += eps_hat``; ``t = m / t``; ``caffe_cpu_scale(rate_correction, t,
    g)``. Per element, all float, no FMA: ``out = scal(rate_correction,
    fl(m / fl(powf(v, 0.5) + eps_hat)))`` with ``rate_correction =
    fl(local_rate * correction)`` (``update.adam_correction``).
    """
    half = np.float32(0.5)
    for i in range(m.size):
        t = m[i] / (powf(v[i], half) + eps_hat)
        out[i] = scal(rate_correction, t, zero_fill)


# ---------------------------------------------------------------------------
# gradient witness
# ---------------------------------------------------------------------------
# A "key" orders float32 values as integers: key(+x) = bits(x), key(-x) =
# -bits(x) (so +0 and -0 share key 0); consecutive keys are adjacent floats.

#: ``witness`` codes: which ``ComputeUpdateValue`` took ``hp`` to ``h``
W_SGD, W_ADAGRAD, W_RMSPROP, W_ADADELTA, W_ADAM = range(5)
# observable A (monotone in g) and B (monotone in |g|)
_A_AXPBY, _A_ADAGRAD, _A_DELTA = range(3)
_B_NONE, _B_ADD_POW, _B_AXPBY_POW, _B_AXPBY_SQ, _B_AXPBY_POW_R = range(5)
_GMAX = np.float32(1.8446742e19)  # |g| beyond this makes powf(g, 2) overflow
#: ``witness`` results per element: not finite (not checked), no gradient fits, one does
WITNESS_UNCHECKED, WITNESS_FAILED, WITNESS_OK = 0, 1, 2


if numba.config.DISABLE_JIT:

    def _f2i(x):
        """The bits of a float32 as an int32."""
        return int(np.float32(x).view(np.int32))

    def _i2f(k):
        """The float32 whose bits are the int32 ``k``."""
        return np.array([k], dtype=np.int64).astype(np.int32).view(np.float32)[0]

else:
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _f2i(typingctx, x):
        if x != _types.float32:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], _ir.IntType(32))

        return _types.int32(x), codegen

    @_intrinsic
    def _i2f(typingctx, k):
        if not isinstance(k, _types.Integer):
            return None

        def codegen(context, builder, sig, args):
            v = context.cast(builder, args[0], sig.args[0], _types.int32)
            return builder.bitcast(v, _ir.FloatType())

        return _types.float32(k), codegen


@_njit
def _g_of(k):
    """The float32 of ``key`` k."""
    if k >= 0:
        return _i2f(k)
    return _i2f(-k - 2147483648)


@_njit
def _key_of(x):
    """The ordering key of float32 ``x``: +bits for x >= 0, -(bits & 0x7fffffff) for x < 0."""
    i = np.int64(_f2i(x))
    if i >= 0:
        return i
    return -(i + 2147483648)


@_njit
def _same(a, b):
    if a != a:
        return b != b
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


@_njit
def _fa(kind, g, p0, p1, p2, fused, zf):
    if kind == _A_AXPBY:  # axpby(p0, g, p1, p2): SGD/Nesterov h, Adam m
        return axpby(p0, g, p1, p2, fused, zf)
    if kind == _A_ADAGRAD:  # axpby(lr, fl(g / s), 0, g): AdaGrad/RMSProp diff
        return axpby(p0, g / p1, np.float32(0), g, fused, zf)
    # _A_DELTA: sscal(lr, fl(g * r)): AdaDelta diff
    return scal(p0, g * p1, zf)


@_njit
def _fb(kind, g, q0, q1, q2, r, fused, zf):
    two = np.float32(2)
    if kind == _B_ADD_POW:  # AdaGrad h
        return powf(g, two) + q2
    if kind == _B_AXPBY_POW:  # RMSProp h, AdaDelta h1
        return axpby(q0, powf(g, two), q1, q2, fused, zf)
    if kind == _B_AXPBY_SQ:  # Adam v
        return axpby(q0, g * g, q1, q2, fused, zf)
    # _B_AXPBY_POW_R: AdaDelta h2 of fl(g * r)
    gr = g * r
    return axpby(q0, powf(gr, two), q1, q2, fused, zf)


@_njit
def _fits(g, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2, t2, r, fused, zf):
    if not _same(_fa(ak, g, p0, p1, p2, fused, zf), ta):
        return False
    if b1k != _B_NONE and not _same(_fb(b1k, g, b1q0, b1q1, b1q2, r, fused, zf), t1):
        return False
    if b2k != _B_NONE and not _same(_fb(b2k, g, b2q0, b2q1, b2q2, r, fused, zf), t2):
        return False
    return True


@_njit
def _first_a(lo, hi, strict, sign, ak, p0, p1, p2, ta, fused, zf):
    """First key in [lo, hi+1) with sign*A(g) >= sign*ta (> when strict); A monotone."""
    a, b = lo, hi + 1
    while a < b:
        mid = (a + b) // 2
        v = _fa(ak, _g_of(mid), p0, p1, p2, fused, zf)
        if sign < 0:
            c = v < ta if strict else v <= ta
        else:
            c = v > ta if strict else v >= ta
        if c:
            b = mid
        else:
            a = mid + 1
    return a


@_njit
def _first_b(m_lo, m_hi, neg, bk, q0, q1, q2, tb, r, fused, zf):
    """First m in [m_lo, m_hi+1) with B(g) >= tb, g = +/-float(key m); B monotone in |g|."""
    a, b = m_lo, m_hi + 1
    while a < b:
        mid = (a + b) // 2
        g = _g_of(-mid if neg else mid)
        if _fb(bk, g, q0, q1, q2, r, fused, zf) >= tb:
            b = mid
        else:
            a = mid + 1
    return a


@_njit
def _search_part(m_lo, m_hi, neg, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2, t2, r,
                 fused, zf):
    """Find a witness among g = +/-float(m), m in [m_lo, m_hi] (A already holds by value there)."""
    if m_lo > m_hi:
        return False
    start = m_lo
    if b1k != _B_NONE:
        start = max(start, _first_b(m_lo, m_hi, neg, b1k, b1q0, b1q1, b1q2, t1, r, fused, zf))
    if b2k != _B_NONE:
        start = max(start, _first_b(m_lo, m_hi, neg, b2k, b2q0, b2q1, b2q2, t2, r, fused, zf))
    probes = (start, m_lo, m_hi)
    for base in probes:
        for dm in range(-4, 5):
            m = base + dm
            if m < m_lo or m > m_hi:
                continue
            g = _g_of(-m if neg else m)
            if _fits(g, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2, t2, r, fused, zf):
                return True
            if m == 0 and _fits(-g, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2, t2, r,
                                fused, zf):
                return True
    return False


@_njit
def _witness_one(g_est, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2, t2, r, fused, zf):
    """Is there a float32 g with A(g) == ta and B1(g) == t1 and B2(g) == t2, bit for bit?"""
    # fast path: the estimate and its neighbours
    if g_est == g_est and abs(g_est) <= _GMAX:
        k0 = _key_of(np.float32(g_est))
        for dk in (0, -1, 1, -2, 2, -3, 3):
            g = _g_of(k0 + dk)
            if _fits(g, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2, t2, r, fused, zf):
                return True
            if k0 + dk == 0 and _fits(-g, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2, t2,
                                      r, fused, zf):
                return True
    # slow path: the interval where A equals ta by value, then B by bisection on |g|
    klo = _key_of(-_GMAX)
    khi = _key_of(_GMAX)
    va = _fa(ak, _g_of(klo), p0, p1, p2, fused, zf)
    vb = _fa(ak, _g_of(khi), p0, p1, p2, fused, zf)
    if va != va or vb != vb:
        return False
    if va == vb:
        if va != ta:
            return False
        lo, hi = klo, khi
    else:
        sign = 1 if va < vb else -1
        lo = _first_a(klo, khi, False, sign, ak, p0, p1, p2, ta, fused, zf)
        hi = _first_a(klo, khi, True, sign, ak, p0, p1, p2, ta, fused, zf) - 1
        if lo > hi:
            return False
    # non-negative part: keys [max(lo, 0), hi]; negative part: m = -key in [max(1, -hi), -lo]
    if _search_part(max(lo, 0), hi, False, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1, b2q2,
                    t2, r, fused, zf):
        return True
    return _search_part(max(1, -hi), -lo, True, ak, p0, p1, p2, ta, b1k, b1q0, b1q1, b1q2, t1, b2k, b2q0, b2q1,
                        b2q2, t2, r, fused, zf)


@_jit(
    "void(int64, float32[::1], float32[::1], float32[::1], float32[::1], float32[::1], float32, float32, float32, "
    "float32, float32, boolean, int64, int8[::1])"
)
def witness(code, d, h, hp, h2, h2p, lr, c0, c1, c2, c3, fused, zf, out):
    """Per element into ``out``: is there a float32 gradient ``g`` that reproduces snapshot ``k`` from ``k-1``?

    ``WITNESS_OK`` if one is found, ``WITNESS_FAILED`` if none exists,
    ``WITNESS_UNCHECKED`` where an input is not finite. ``g`` is searched on
    the float32 line: first the neighbours of an estimate, then the interval
    where the observable monotone in ``g`` (the history, or the diff) has
    the snapshot's value, bisected on ``|g|`` for the ones monotone in
    ``|g|``. Each candidate is checked with the solver's own float32
    arithmetic (``axpby``/``scal``/``powf``, FMA per profile), bit for bit.

    ``code`` and the constants:

    - W_SGD (SGD, Nesterov): ``h = axpby(lr, g, c0=mu, hp)``.
    - W_ADAGRAD: ``h = fl(powf(g,2) + hp)``, ``d = axpby(lr, fl(g/fl(powf(h,.5)+c0=delta)), 0, g)``.
    - W_RMSPROP: ``h = axpby(c1=fl(1-rho), powf(g,2), c2=rho, hp)``, ``d`` as AdaGrad.
    - W_ADADELTA: ``h = axpby(c1=fl(1-mu), powf(g,2), c2=mu, hp)``,
      ``r = powf(fl(fl(c0+h2p)/fl(c0+h)), .5)``, ``h2 = axpby(c1, powf(fl(g*r),2), c2, h2p)``,
      ``d = sscal(lr, fl(g*r))``.
    - W_ADAM: ``m=h = axpby(c0=fl(1-b1), g, c1=b1, hp)``, ``v=h2 = axpby(c2=fl(1-b2), fl(g*g), c3=b2, h2p)``.
    """
    zero = np.float32(0)
    half = np.float32(0.5)
    inf = np.float32(np.inf)
    for i in range(h.size):
        hi, hpi = h[i], hp[i]
        if not (abs(hi) < inf and abs(hpi) < inf):
            out[i] = WITNESS_UNCHECKED
            continue
        ok = False
        if code == W_SGD:
            est = (np.float64(hi) - np.float64(c0 * hpi)) / np.float64(lr) if lr != 0 else 0.0
            ok = _witness_one(est, _A_AXPBY, lr, c0, hpi, hi, _B_NONE, zero, zero, zero, zero,
                              _B_NONE, zero, zero, zero, zero, zero, fused, zf)
        elif code == W_ADAGRAD or code == W_RMSPROP:
            di = d[i]
            if not abs(di) < inf:
                out[i] = WITNESS_UNCHECKED
                continue
            s = powf(hi, half) + c0
            if not s > 0:
                out[i] = WITNESS_UNCHECKED
                continue
            if lr != 0 and di != 0:
                est = np.float64(di) / np.float64(lr) * np.float64(s)
            elif code == W_ADAGRAD:
                est = math.sqrt(max(np.float64(hi) - np.float64(hpi), 0.0))
            else:
                est = math.sqrt(max((np.float64(hi) - np.float64(c2 * hpi)) / max(np.float64(c1), 1e-300), 0.0))
            if code == W_ADAGRAD:
                ok = _witness_one(est, _A_ADAGRAD, lr, s, zero, di, _B_ADD_POW, zero, zero, hpi, hi,
                                  _B_NONE, zero, zero, zero, zero, zero, fused, zf)
            else:
                ok = _witness_one(est, _A_ADAGRAD, lr, s, zero, di, _B_AXPBY_POW, c1, c2, hpi, hi,
                                  _B_NONE, zero, zero, zero, zero, zero, fused, zf)
        elif code == W_ADADELTA:
            di, h2i, h2pi = d[i], h2[i], h2p[i]
            if not (abs(di) < inf and abs(h2i) < inf and abs(h2pi) < inf):
                out[i] = WITNESS_UNCHECKED
                continue
            r = powf((c0 + h2pi) / (c0 + hi), half)
            if not (r > 0 and r < inf):
                out[i] = WITNESS_UNCHECKED
                continue
            if lr != 0 and di != 0:
                est = np.float64(di) / np.float64(lr) / np.float64(r)
            else:
                est = math.sqrt(max((np.float64(hi) - np.float64(c2 * hpi)) / max(np.float64(c1), 1e-300), 0.0))
            ok = _witness_one(est, _A_DELTA, lr, r, zero, di, _B_AXPBY_POW, c1, c2, hpi, hi,
                              _B_AXPBY_POW_R, c1, c2, h2pi, h2i, r, fused, zf)
        else:  # W_ADAM
            h2i, h2pi = h2[i], h2p[i]
            if not (abs(h2i) < inf and abs(h2pi) < inf):
                out[i] = WITNESS_UNCHECKED
                continue
            if c0 != 0:
                est = (np.float64(hi) - np.float64(c1 * hpi)) / np.float64(c0)
            else:
                est = math.sqrt(max((np.float64(h2i) - np.float64(c3 * h2pi)) / max(np.float64(c2), 1e-300), 0.0))
            ok = _witness_one(est, _A_AXPBY, c0, c1, hpi, hi, _B_AXPBY_SQ, c2, c3, h2pi, h2i,
                              _B_NONE, zero, zero, zero, zero, zero, fused, zf)
        out[i] = WITNESS_OK if ok else WITNESS_FAILED


