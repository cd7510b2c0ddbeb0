"""Per-blob update kernels: Caffe's ``ApplyUpdate`` arithmetic, bit for bit.

numba only (no I/O, no protobuf, no printing), and self-contained: numba's
on-disk cache only notices changes to the file a function lives in, so the
libm helpers below are repeated (not imported) in ``lr_policy.py``. The
snapshot checks of ``kernels/audit.py`` do import ``fma``, ``powf`` and the
BLAS ops ``scal``, ``axpy``, ``axpby`` from here, and pin this file's
SHA-256 for that reason: after editing this file, update the pin there
(``tests/test_audit.py`` prints the new value; until then those checks
compile afresh in every process instead of using a stale cache).

One jit convention (``_jit``): ``cache=True``, explicit signatures for
float32 and float64 C-contiguous 1-D arrays, ``error_model="numpy"`` (a float
division by zero gives inf/NaN as in C, never ``ZeroDivisionError``), and
**no fastmath** (no reassociation, no contraction: FMA happens only where an
``fma(...)`` call says so). Every kernel is a flat loop over contiguous
arrays, element-independent, so a ``prange`` version is bit-identical.

Notation in the docstrings: ``fl(x)`` rounds to the array's precision
(float32 for Caffe's ``Dtype=float``), ``fma(a, b, c) = fl(a*b + c)`` with
one rounding, ``g`` the blob's diff, ``w`` its data, ``h`` its history.
Scalars arrive already rounded as Caffe rounds them (``local_rate =
fl(rate*lr_mult)``, ``fl(1-momentum)``, ...); the caller computes them in the
array's precision.

BLAS behaviour is selected per call by two flags that together form an
*arithmetic profile* (``harness.reference.PROFILES``):

``fused``
    ``saxpy`` is ``y = fma(alpha, x, y)`` (OpenBLAS x86-64 kernels) instead
    of ``y = fl(y + fl(alpha*x))`` (reference BLAS, ATLAS).
``zero_fill``
    what ``sscal(alpha, y)`` does when alpha is 0: ``SCAL_MULTIPLY`` (0)
    multiplies (reference BLAS: ``0*NaN = NaN``, ``0*(-1) = -0``),
    ``SCAL_ZERO_FILL`` (1) writes +0 when ``alpha == 0`` (ATLAS),
    ``SCAL_ZERO_FILL_NAN`` (2) writes +0 when ``alpha == 0`` or alpha is NaN
    (OpenBLAS 0.3.13 ``scal_sse.S``: its ``comiss`` test treats unordered as
    equal).

In every profile ``sscal(1, y)`` leaves y alone and ``saxpy`` with
``alpha == 0`` returns at once (both BLAS interfaces short-cut these), which
decides the sign of zeros and whether NaN/Inf in ``x`` reach ``y``.
Caffe's ``caffe_cpu_axpby(alpha, x, beta, y)`` (non-MKL) is
``sscal(beta, y); saxpy(alpha, x, y)``, i.e. ``fma(alpha, x, fl(beta*y))``
when fused.

Common prologue of every solver kernel, per element, in Caffe's order
(``SGDSolver::ClipGradients``, ``Normalize``, ``Regularize``):

1. ``g = sscal(clip_scale, g)``: the clipping factor ``fl(clip/l2norm)``
   (1 when not clipping);
2. ``g = sscal(norm, g)`` with ``norm = fl(1/iter_size)`` (1 when
   ``iter_size`` is 1);
3. ``reg`` 1 (L2): ``g = saxpy(local_decay, w, g)``; ``reg`` 2 (L1):
   ``g = saxpy(local_decay, sign(w), g)`` with ``sign`` in {-1, 0, +1} and
   ``sign(NaN) = 0`` (``local_decay*sign`` is exact, so fused and separate
   rounding agree); ``reg`` 0 skips (Caffe skips when ``local_decay == 0``).

Every kernel ends with ``Net::Update``: ``w = saxpy(-1, g, w) = fl(w - g)``
(exact either way), and leaves the update value in ``g`` (Caffe's
``snapshot_diff``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re

import numba
import numpy as np

__all__ = [
    "SCAL_MULTIPLY",
    "SCAL_ZERO_FILL",
    "SCAL_ZERO_FILL_NAN",
    "REG_NONE",
    "REG_L2",
    "REG_L1",
    "fma",
    "powf",
    "expf",
    "scal",
    "axpy",
    "axpby",
    "sgd_update",
    "nesterov_update",
    "adagrad_update",
    "rmsprop_update",
    "adadelta_update",
    "adam_update",
    "adam_correction",
    "sumsq_openblas_haswell",
    "sumsq_sequential",
    "sumsq_atlas",
    "sumsq_float64",
]

SCAL_MULTIPLY = 0
SCAL_ZERO_FILL = 1
SCAL_ZERO_FILL_NAN = 2
REG_NONE = 0
REG_L2 = 1
REG_L1 = 2

_DISABLE_JIT = bool(numba.config.DISABLE_JIT)

# ---------------------------------------------------------------------------
# libm access (repeated verbatim in lr_policy.py: keep the two in step)
#
# fma: LLVM's llvm.fma intrinsic (one rounding; a vfmadd on FMA hardware,
# else a call to libm fmaf). powf: glibc's powf called through its alias
# ``powf32`` (``pow`` through ``powf64``): LLVM's library-call simplifier
# only knows the names ``powf``/``pow``/``llvm.pow``, so a literal exponent
# is never rewritten (``x**0.5`` -> sqrtf, ``x**2`` -> x*x differ from glibc
# powf on 0.06%/0.07% of inputs); expf likewise through ``expf32``. With
# NUMBA_DISABLE_JIT=1 the same names are plain Python functions calling libm
# through ctypes (exact, slow).
# ---------------------------------------------------------------------------
_LIBM = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")


def _libm_function(names, ctype, nargs):
    for name in names:
        f = getattr(_LIBM, name, None)
        if f is not None:
            f.restype = ctype
            f.argtypes = [ctype] * nargs
            return name, f
    raise ImportError(f"libm has none of {names}")


_POWF_NAME, _c_powf = _libm_function(("powf32", "powf"), ctypes.c_float, 2)
_POW_NAME, _c_pow = _libm_function(("powf64", "pow"), ctypes.c_double, 2)
_EXPF_NAME, _c_expf = _libm_function(("expf32", "expf"), ctypes.c_float, 1)
_EXP_NAME, _c_exp = _libm_function(("expf64", "exp"), ctypes.c_double, 1)
_, _c_fmaf = _libm_function(("fmaf",), ctypes.c_float, 3)
_, _c_fma = _libm_function(("fma",), ctypes.c_double, 3)


def _all_float32(*xs) -> bool:
    return all(isinstance(x, np.float32) for x in xs)


if _DISABLE_JIT:

    def fma(a, b, c):
        """``a*b + c`` rounded once (libm ``fmaf``/``fma`` through ctypes)."""
        if _all_float32(a, b, c):
            return np.float32(_c_fmaf(a, b, c))
        return np.float64(_c_fma(a, b, c))

    def powf(x, y):
        """glibc ``powf(x, y)`` (``pow`` for float64), through ctypes."""
        if _all_float32(x, y):
            return np.float32(_c_powf(x, y))
        return np.float64(_c_pow(x, y))

    def expf(x):
        """glibc ``expf(x)`` (``exp`` for float64), through ctypes."""
        if _all_float32(x):
            return np.float32(_c_expf(x))
        return np.float64(_c_exp(x))

else:
    import llvmlite.binding as _llvm
    from llvmlite import ir as _ir
    from numba import types as _types
    from numba.core import cgutils as _cgutils
    from numba.extending import intrinsic as _intrinsic

    for _name, _f in ((_POWF_NAME, _c_powf), (_POW_NAME, _c_pow), (_EXPF_NAME, _c_expf), (_EXP_NAME, _c_exp)):
        _llvm.add_symbol(_name, ctypes.cast(_f, ctypes.c_void_p).value)

    def _float_result(*tys):
        if not all(isinstance(t, _types.Float) for t in tys):
            return None
        return _types.float64 if _types.float64 in tys else _types.float32

    @_intrinsic
    def _fma_intrinsic(typingctx, a, b, c):
        ty = _float_result(a, b, c)
        if ty is None:
            return None

        def codegen(context, builder, sig, args):
            lt = context.get_value_type(ty)
            vals = [context.cast(builder, v, t, ty) for v, t in zip(args, sig.args)]
            fn = builder.module.declare_intrinsic("llvm.fma", [lt], _ir.FunctionType(lt, [lt, lt, lt]))
            return builder.call(fn, vals)

        return ty(a, b, c), codegen

    @_intrinsic
    def _pow_intrinsic(typingctx, x, y):
        ty = _float_result(x, y)
        if ty is None:
            return None

        def codegen(context, builder, sig, args):
            lt = context.get_value_type(ty)
            vals = [context.cast(builder, v, t, ty) for v, t in zip(args, sig.args)]
            name = _POWF_NAME if ty == _types.float32 else _POW_NAME
            fn = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(lt, [lt, lt]), name)
            return builder.call(fn, vals)

        return ty(x, y), codegen

    @_intrinsic
    def _exp_intrinsic(typingctx, x):
        ty = _float_result(x)
        if ty is None:
            return None

        def codegen(context, builder, sig, args):
            lt = context.get_value_type(ty)
            name = _EXPF_NAME if ty == _types.float32 else _EXP_NAME
            fn = _cgutils.get_or_insert_function(builder.module, _ir.FunctionType(lt, [lt]), name)
            return builder.call(fn, args)

        return ty(x), codegen

    @numba.njit(cache=True)
    def fma(a, b, c):
        """``a*b + c`` rounded once (``llvm.fma``); float64 if any argument is."""
        return _fma_intrinsic(a, b, c)

    @numba.njit(cache=True)
    def powf(x, y):
        """glibc ``powf(x, y)`` (``pow`` if any argument is float64), never folded."""
        return _pow_intrinsic(x, y)

    @numba.njit(cache=True)
    def expf(x):
        """glibc ``expf(x)`` (``exp`` for float64), never constant-folded."""
        return _exp_intrinsic(x)


# end of libm access


# ---------------------------------------------------------------------------
# the jit wrapper
# ---------------------------------------------------------------------------
_TYPES = ({"A": "float32[::1]", "S": "float32"}, {"A": "float64[::1]", "S": "float64"})


def _jit(template: str):
    """``njit`` with the float32 and float64 signatures spelled by ``template``.

    ``A`` stands for a C-contiguous 1-D array and ``S`` for a scalar of the
    profile's precision; other numba type names are used as written.
    """
    sigs = [re.sub(r"\b[AS]\b", lambda m, t=t: t[m.group(0)], template) for t in _TYPES]
    return numba.njit(sigs, cache=True, error_model="numpy", nogil=True)


_inline = numba.njit(cache=True, error_model="numpy", nogil=True)


@_inline
def scal(alpha, y, zero_fill):
    """One element of ``sscal(alpha, y)`` as the profile's BLAS does it.

    ``alpha*y`` in the array's precision (one rounding), except: ``alpha ==
    1`` returns ``y`` untouched (every BLAS short-cuts it), and with
    ``zero_fill`` ``SCAL_ZERO_FILL`` (``alpha == 0``) or
    ``SCAL_ZERO_FILL_NAN`` (``alpha == 0`` or NaN) it returns +0 whatever
    ``y`` is. ``np.float32(0)`` unifies with float64 in a float64 kernel, so
    this is +0 in either precision.
    """
    if alpha == 1:
        return y
    if zero_fill != SCAL_MULTIPLY and (alpha == 0 or (zero_fill == SCAL_ZERO_FILL_NAN and alpha != alpha)):
        return np.float32(0)
    return alpha * y


@_inline
def axpy(alpha, x, y, fused):
    """One element of ``saxpy(alpha, x, y)``.

    ``fma(alpha, x, y)`` when ``fused`` (OpenBLAS), else
    ``fl(y + fl(alpha*x))``; ``alpha == 0`` returns ``y`` untouched (NaN or
    Inf in ``x`` do not reach it).
    """
    if alpha == 0:
        return y
    if fused:
        return fma(alpha, x, y)
    return y + alpha * x


@_inline
def axpby(alpha, x, beta, y, fused, zero_fill):
    """One element of Caffe's non-MKL ``caffe_cpu_axpby``: ``axpy(alpha, x, scal(beta, y))``.

    ``fma(alpha, x, fl(beta*y))`` when fused, with both BLAS short-cuts.
    """
    return axpy(alpha, x, scal(beta, y, zero_fill), fused)


@_inline
def _prologue(w, g, clip_scale, norm, reg, local_decay, fused, zero_fill):
    """Clip scaling, Normalize and Regularize of one diff element (module docstring)."""
    g = scal(clip_scale, g, zero_fill)
    g = scal(norm, g, zero_fill)
    if reg == REG_L2:
        g = axpy(local_decay, w, g, fused)
    elif reg == REG_L1:
        if w > 0:
            s = np.float32(1)
        elif w < 0:
            s = np.float32(-1)
        else:
            s = np.float32(0)
        g = axpy(local_decay, s, g, fused)
    return g


# ---------------------------------------------------------------------------
# solver kernels: prologue, ComputeUpdateValue, Net::Update, fused per element
# ---------------------------------------------------------------------------
_PROLOGUE = "S, S, int64, S"  # clip_scale, norm, reg, local_decay
_PROFILE = "boolean, int64"  # fused, zero_fill


@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, {_PROFILE})")
def sgd_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, fused, zero_fill):
    """SGD with momentum (``SGDSolver::ComputeUpdateValue``, CPU).

    Caffe: ``caffe_cpu_axpby(local_rate, g, momentum, h)``; ``g = h``;
    ``w -= g``.

    Per element, all float: ``h = fma(local_rate, g, fl(momentum*h))``
    (fused) or ``fl(fl(momentum*h) + fl(local_rate*g))``; ``g = h``;
    ``w = fl(w - g)``. FMA: the saxpy half of axpby, and L2 decay.
    """
    for i in range(w.size):
        gi = _prologue(w[i], g[i], clip_scale, norm, reg, local_decay, fused, zero_fill)
        hi = axpby(local_rate, gi, momentum, h[i], fused, zero_fill)
        h[i] = hi
        g[i] = hi
        w[i] = w[i] - hi


@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def nesterov_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum,
                    neg_momentum, fused, zero_fill):
    """Nesterov momentum (``NesterovSolver::ComputeUpdateValue``, CPU).

    Caffe: ``u = h``; ``caffe_cpu_axpby(local_rate, g, momentum, h)``;
    ``caffe_cpu_axpby(fl(1+momentum), h, -momentum, u)``; ``g = u``;
    ``w -= g``.

    Per element, all float: ``h' = fma(local_rate, g, fl(momentum*h))``;
    ``u = fma(one_plus_momentum, h', fl(neg_momentum*h))`` (each fma is
    ``fl(fl(..)+fl(..))`` when not fused); ``g = u``; ``w = fl(w - u)``.
    ``one_plus_momentum = fl(1+momentum)``, ``neg_momentum = -momentum``.
    """
    for i in range(w.size):
        gi = _prologue(w[i], g[i], clip_scale, norm, reg, local_decay, fused, zero_fill)
        old = h[i]
        hi = axpby(local_rate, gi, momentum, old, fused, zero_fill)
        h[i] = hi
        u = axpby(one_plus_momentum, hi, neg_momentum, old, fused, zero_fill)
        g[i] = u
        w[i] = w[i] - u


@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, {_PROFILE})")
def adagrad_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, delta, fused, zero_fill):
    """AdaGrad (``AdaGradSolver::ComputeUpdateValue``, CPU).

    Caffe: ``u = powx(g, 2)``; ``h = u + h``; ``u = powx(h, 0.5)``;
    ``u += delta``; ``u = g / u``; ``caffe_cpu_axpby(local_rate, u, 0, g)``;
    ``w -= g``.

    Per element, all float: ``u = powf(g, 2)`` (glibc ``powf``, not
    ``g*g``); ``h = fl(u + h)``; ``u = fl(fl(powf(h, 0.5)) + delta)``;
    ``u = fl(g / u)``; ``g = fma(local_rate, u, sscal(0, g))`` -- that is
    ``fl(local_rate*u)`` up to the sign of zero and the profile's
    ``sscal(0)``; ``w = fl(w - g)``.
    """
    for i in range(w.size):
        gi = _prologue(w[i], g[i], clip_scale, norm, reg, local_decay, fused, zero_fill)
        hi = powf(gi, np.float32(2)) + h[i]
        h[i] = hi
        u = powf(hi, np.float32(0.5)) + delta
        u = gi / u
        gi = axpby(local_rate, u, np.float32(0), gi, fused, zero_fill)
        g[i] = gi
        w[i] = w[i] - gi


@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def rmsprop_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta,
                   fused, zero_fill):
    """RMSProp (``RMSPropSolver::ComputeUpdateValue``, CPU).

    Caffe: ``u = powx(g, 2)``; ``caffe_cpu_axpby(fl(1-rms_decay), u,
    rms_decay, h)``; ``u = powx(h, 0.5)``; ``u += delta``; ``u = g / u``;
    ``caffe_cpu_axpby(local_rate, u, 0, g)``; ``w -= g``.

    Per element, all float: ``h = fma(one_minus_rms_decay, powf(g, 2),
    fl(rms_decay*h))``; ``u = fl(g / fl(powf(h, 0.5) + delta))``;
    ``g = fma(local_rate, u, sscal(0, g))``; ``w = fl(w - g)``.
    """
    for i in range(w.size):
        gi = _prologue(w[i], g[i], clip_scale, norm, reg, local_decay, fused, zero_fill)
        u = powf(gi, np.float32(2))
        hi = axpby(one_minus_rms_decay, u, rms_decay, h[i], fused, zero_fill)
        h[i] = hi
        u = powf(hi, np.float32(0.5)) + delta
        u = gi / u
        gi = axpby(local_rate, u, np.float32(0), gi, fused, zero_fill)
        g[i] = gi
        w[i] = w[i] - gi


@_jit(f"void(A, A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def adadelta_update(w, g, h, h2, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta,
                    fused, zero_fill):
    """AdaDelta (``AdaDeltaSolver::ComputeUpdateValue``, CPU).

    ``h`` is ``history[p]`` (E[g^2]), ``h2`` is ``history[N+p]`` (E[dx^2],
    kept without the learning rate). Caffe: ``u = powx(g, 2)``;
    ``caffe_cpu_axpby(fl(1-momentum), u, momentum, h)``; ``t = delta``;
    ``u = t + h2``; ``t = t + h``; ``u = u / t``; ``u = powx(u, 0.5)``;
    ``g = g * u``; ``u = powx(g, 2)``; ``caffe_cpu_axpby(fl(1-momentum), u,
    momentum, h2)``; ``caffe_cpu_scale(local_rate, g, g)``; ``w -= g``.

    Per element, all float: ``h = fma(one_minus_momentum, powf(g, 2),
    fl(momentum*h))``; ``u = powf(fl(fl(delta+h2) / fl(delta+h)), 0.5)``;
    ``g = fl(g*u)``; ``h2 = fma(one_minus_momentum, powf(g, 2),
    fl(momentum*h2))``; ``g = sscal(local_rate, g)``; ``w = fl(w - g)``.
    """
    for i in range(w.size):
        gi = _prologue(w[i], g[i], clip_scale, norm, reg, local_decay, fused, zero_fill)
        u = powf(gi, np.float32(2))
        hi = axpby(one_minus_momentum, u, momentum, h[i], fused, zero_fill)
        h[i] = hi
        u = (delta + h2[i]) / (delta + hi)
        u = powf(u, np.float32(0.5))
        gi = gi * u
        u = powf(gi, np.float32(2))
        h2[i] = axpby(one_minus_momentum, u, momentum, h2[i], fused, zero_fill)
        gi = scal(local_rate, gi, zero_fill)
        g[i] = gi
        w[i] = w[i] - gi


@_jit(f"void(A, A, A, A, {_PROLOGUE}, S, S, S, S, S, S, {_PROFILE})")
def adam_update(w, g, m, v, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2,
                one_minus_beta2, eps_hat, fused, zero_fill):
    """Adam (``AdamSolver::ComputeUpdateValue``, CPU).

    ``m`` is ``history[p]``, ``v`` is ``history[N+p]``; ``beta1`` is
    ``momentum``, ``beta2`` ``momentum2``, ``eps_hat`` ``delta``, and
    ``rate_correction = fl(local_rate * correction)`` (``adam_correction``).
    Caffe: ``caffe_cpu_axpby(fl(1-beta1), g, beta1, m)``; ``t = g*g``
    (``caffe_mul``, not powx); ``caffe_cpu_axpby(fl(1-beta2), t, beta2, v)``;
    ``t = powx(v, 0.5)``; ``t += eps_hat``; ``t = m / t``;
    ``caffe_cpu_scale(rate_correction, t, g)``; ``w -= g``.

    Per element, all float: ``m = fma(one_minus_beta1, g, fl(beta1*m))``;
    ``v = fma(one_minus_beta2, fl(g*g), fl(beta2*v))``;
    ``g = sscal(rate_correction, fl(m / fl(powf(v, 0.5) + eps_hat)))``;
    ``w = fl(w - g)``.
    """
    for i in range(w.size):
        gi = _prologue(w[i], g[i], clip_scale, norm, reg, local_decay, fused, zero_fill)
        mi = axpby(one_minus_beta1, gi, beta1, m[i], fused, zero_fill)
        m[i] = mi
        vi = axpby(one_minus_beta2, gi * gi, beta2, v[i], fused, zero_fill)
        v[i] = vi
        t = mi / (powf(vi, np.float32(0.5)) + eps_hat)
        gi = scal(rate_correction, t, zero_fill)
        g[i] = gi
        w[i] = w[i] - gi


@_jit("float64(float64, float64, float64)")
def adam_correction(beta1, beta2, t):
    """Adam's bias correction, in double as Caffe computes it.

    Caffe: ``sqrt(Dtype(1) - pow(beta2, t)) / (Dtype(1) - pow(beta1, t))``
    with ``t = iter_ + 1`` an int, so ``pow(float, int)`` is glibc's double
    ``pow`` and everything up to the final assignment to ``Dtype`` is
    double. Pass the float32 betas widened to float64 and ``t`` as a float;
    round the result to float32 for Caffe's ``correction``.
    """
    return np.sqrt(1.0 - powf(beta2, t)) / (1.0 - powf(beta1, t))


# ---------------------------------------------------------------------------
# sumsq (sdot(g, g)) in each BLAS's summation order, for ClipGradients
# ---------------------------------------------------------------------------
@numba.njit(["float32(float32[::1])"], cache=True, error_model="numpy", nogil=True)
def sumsq_openblas_haswell(x):
    """``cblas_sdot(n, x, 1, x, 1)`` of OpenBLAS 0.3.13's Haswell/Zen kernel.

    The first ``n - n%32`` elements go to four 8-lane float accumulators
    (element ``32i + 8j + l`` is fused-multiply-added into lane ``l`` of
    accumulator ``j``); each accumulator folds lanes 4..7 onto 0..3, then
    ``(a0+a1) + (a2+a3)`` lane-wise, then two horizontal adds:
    ``(c0+c1) + (c2+c3)``. The last ``n%32`` elements add their float
    products ``fl(x*x)`` into a double, the vector part is added last in
    double, and the double is rounded to float.
    """
    n = x.size
    n1 = n - n % 32
    acc = np.zeros((4, 8), dtype=np.float32)
    for i in range(0, n1, 32):
        for j in range(4):
            for lane in range(8):
                k = i + 8 * j + lane
                acc[j, lane] = fma(x[k], x[k], acc[j, lane])
    vec = np.float32(0)
    if n1:
        c = np.zeros((4, 4), dtype=np.float32)
        for j in range(4):
            for lane in range(4):
                c[j, lane] = acc[j, lane] + acc[j, lane + 4]
        d = np.zeros(4, dtype=np.float32)
        for lane in range(4):
            d[lane] = (c[0, lane] + c[1, lane]) + (c[2, lane] + c[3, lane])
        vec = (d[0] + d[1]) + (d[2] + d[3])
    dot = np.float64(0)
    for k in range(n1, n):
        dot += np.float64(x[k] * x[k])
    dot += np.float64(vec)
    return np.float32(dot)


@numba.njit(["float32(float32[::1])"], cache=True, error_model="numpy", nogil=True)
def sumsq_sequential(x):
    """``sdot(x, x)`` of reference BLAS: ``s = fl(s + fl(x[i]*x[i]))`` in order.

    Netlib's loop is unrolled by 5 but still adds left to right, without FMA.
    """
    s = np.float32(0)
    for k in range(x.size):
        s = s + x[k] * x[k]
    return s


@numba.njit(["float32(float32[::1])"], cache=True, error_model="numpy", nogil=True)
def sumsq_atlas(x):
    """``sdot(x, x)`` of ATLAS 3.10 as Debian builds it (kernel ``dot4p80_x1y1``).

    Four float accumulators take the products ``fl(x*x)`` of the first
    ``4*(n//4)`` elements round-robin (element ``4i+j`` into accumulator
    ``j``, no FMA); they combine as ``(d0+d1) + (d2+d3)``, and the last
    ``n%4`` products are added to that one by one. Identified from the
    ATLAS captures' clipping scales (every iteration of both large clipped
    runs reproduced; a plain sequential sum missed most of them).
    """
    n = x.size
    m = n - n % 4
    d0 = np.float32(0)
    d1 = np.float32(0)
    d2 = np.float32(0)
    d3 = np.float32(0)
    for i in range(0, m, 4):
        d0 = d0 + x[i] * x[i]
        d1 = d1 + x[i + 1] * x[i + 1]
        d2 = d2 + x[i + 2] * x[i + 2]
        d3 = d3 + x[i + 3] * x[i + 3]
    s = (d0 + d1) + (d2 + d3)
    for i in range(m, n):
        s = s + x[i] * x[i]
    return s


@numba.njit(["float64(float64[::1])"], cache=True, error_model="numpy", nogil=True)
def sumsq_float64(x):
    """Sum of squares in double, in order (the float64 profile's yardstick)."""
    s = np.float64(0)
    for k in range(x.size):
        s += x[k] * x[k]
    return s
