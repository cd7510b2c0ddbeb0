"""Learning-rate policy kernels: ``SGDSolver::GetLearningRate``, bit for bit.

numba only and self-contained (the libm helpers are repeated from
``update.py``; numba's cache only sees changes to a function's own file).
Policies are coded by their index in ``POLICIES`` (Caffe's strings).

Types follow Caffe 1.0 built with GCC >= 6 (``this->iter_`` and
``stepsize`` are ``int``, proto scalars are ``float``, ``rate`` is
``Dtype=float``):

=========  ===============================================================
fixed      ``base_lr``
step       ``cs = iter / stepsize`` (C int division);
           ``fl(double(base_lr) * pow(double(gamma), double(cs)))``
exp        ``fl(double(base_lr) * pow(double(gamma), double(iter)))``
inv        float: ``fl(base_lr * powf(fl(1 + fl(gamma*fl(iter))), -power))``
multistep  like step with the caller's ``current_step`` (advanced at most
           once per call, see ``multistep_steps``)
poly       float: ``fl(base_lr * powf(fl(1 - fl(fl(iter)/fl(max_iter))), power))``
sigmoid    float: ``fl(base_lr * fl(1 / fl(1 + expf(fl(-gamma *
           fl(fl(iter) - fl(stepsize)))))))``
=========  ===============================================================

``pow(float, int)`` is double in C++11 (the int promotes the call to
``pow(double, double)``), hence the double path of step/exp/multistep;
``pow``/``exp`` of floats resolve to ``powf``/``expf``. ``powf``/``pow`` and
``expf`` are glibc's (see the libm block). The ``*_float64`` variants are the
float64 profile's yardstick: the same formulas evaluated in double with no
intermediate rounding to float.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numba
import numpy as np

__all__ = [
    "POLICIES",
    "FIXED",
    "STEP",
    "EXP",
    "INV",
    "MULTISTEP",
    "POLY",
    "SIGMOID",
    "fma",
    "powf",
    "expf",
    "c_int_div",
    "rate_float32",
    "rate_float64",
    "multistep_steps",
    "EXP_CHUNK",
    "schedule_float32",
    "schedule_float64",
]

#: Caffe's lr_policy strings; a policy's code is its index here.
POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
FIXED, STEP, EXP, INV, MULTISTEP, POLY, SIGMOID = range(7)

_DISABLE_JIT = bool(numba.config.DISABLE_JIT)

# ---------------------------------------------------------------------------
# libm access (repeated verbatim in update.py: keep the two in step)
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


_SCALAR = "(int64, {S}, {S}, {S}, int64, int64, int64, int64)"


@numba.njit(["int64(int64, int64)"], cache=True, error_model="numpy", nogil=True)
def c_int_div(a, b):
    """C's ``a / b`` for ints (truncates toward zero); ``b`` must not be 0."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


_inline = numba.njit(cache=True, error_model="numpy", nogil=True)


@_inline
def _stepwise32(base_lr, gamma, cs):
    return np.float32(np.float64(base_lr) * powf(np.float64(gamma), np.float64(cs)))


@_inline
def _inv32(base_lr, gamma, power, it):
    return base_lr * powf(np.float32(1) + gamma * np.float32(it), -power)


@_inline
def _poly32(base_lr, power, max_iter, it):
    return base_lr * powf(np.float32(1) - np.float32(it) / np.float32(max_iter), power)


@_inline
def _sigmoid32(base_lr, gamma, stepsize, it):
    return base_lr * (np.float32(1) / (np.float32(1) + expf(-gamma * (np.float32(it) - np.float32(stepsize)))))


@numba.njit(["float32" + _SCALAR.format(S="float32")], cache=True, error_model="numpy", nogil=True)
def rate_float32(policy, base_lr, gamma, power, stepsize, max_iter, it, current_step):
    """Caffe's float ``rate`` for ``iter_ = it`` (module table).

    ``current_step`` is used by multistep only (already advanced by the
    caller); step recomputes its own. Unknown codes give NaN (the Python
    side refuses unknown policies before calling).
    """
    if policy == FIXED:
        return base_lr
    if policy == STEP:
        return _stepwise32(base_lr, gamma, c_int_div(it, stepsize))
    if policy == MULTISTEP:
        return _stepwise32(base_lr, gamma, current_step)
    if policy == EXP:
        return _stepwise32(base_lr, gamma, it)
    if policy == INV:
        return _inv32(base_lr, gamma, power, it)
    if policy == POLY:
        return _poly32(base_lr, power, max_iter, it)
    if policy == SIGMOID:
        return _sigmoid32(base_lr, gamma, stepsize, it)
    return np.float32(np.nan)


@numba.njit(["float64" + _SCALAR.format(S="float64")], cache=True, error_model="numpy", nogil=True)
def rate_float64(policy, base_lr, gamma, power, stepsize, max_iter, it, current_step):
    """The float64 yardstick of ``rate_float32``: same formulas, all double."""
    if policy == FIXED:
        return base_lr
    if policy == STEP or policy == MULTISTEP:
        cs = c_int_div(it, stepsize) if policy == STEP else current_step
        return base_lr * powf(gamma, np.float64(cs))
    if policy == EXP:
        return base_lr * powf(gamma, np.float64(it))
    if policy == INV:
        return base_lr * powf(1.0 + gamma * np.float64(it), -power)
    if policy == POLY:
        return base_lr * powf(1.0 - np.float64(it) / np.float64(max_iter), power)
    if policy == SIGMOID:
        return base_lr / (1.0 + expf(-gamma * (np.float64(it) - np.float64(stepsize))))
    return np.nan


_SIG = dict(cache=True, error_model="numpy", nogil=True)
# schedule kernels: (policy, base_lr, gamma, power, stepsize, max_iter, stepvalue,
#                    iters, start, use_range, current_step, out)
# iteration k is ``start + k`` when ``use_range`` (a fresh run: no iters array
# is materialized), else ``iters[k]``.
_SCHED = "(int64, {S}, {S}, {S}, int64, int64, int64[::1], int64[::1], int64, boolean, int64, {S}[::1])"


@numba.njit(["int64(int64[::1], int64[::1], int64, boolean, int64, int64[::1])"], **_SIG)
def multistep_steps(stepvalue, iters, start, use_range, current_step, out):
    """multistep's ``current_step_`` during each of successive calls.

    Caffe, per ``GetLearningRate`` call: ``if (cs < stepvalue_size() &&
    iter_ >= stepvalue(cs)) ++cs`` -- at most one advance per call, so a
    run resumed past several stepvalues catches up one step per iteration.
    ``out[k]`` is the step used by call ``k``; returns the step after the
    last call.
    """
    cs = current_step
    n = stepvalue.size
    for k in range(out.size):
        it = start + k if use_range else iters[k]
        if cs >= 0 and cs < n and it >= stepvalue[cs]:
            cs += 1
        out[k] = cs
    return cs


@numba.njit(["int64" + _SCHED.format(S="float32")], **_SIG)
def _stepwise_float32(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start, use_range,
                      current_step, out):
    """fixed/step/multistep in one sequential pass; ``pow`` once per distinct step."""
    cs = current_step
    n = stepvalue.size
    last = np.int64(-1)
    rate = base_lr
    lo_b = np.int64(1)  # step: [lo_b, hi_b) is the iteration range of step ``cs`` (empty at first)
    hi_b = np.int64(0)
    for k in range(out.size):
        if policy == FIXED:
            out[k] = base_lr
            continue
        it = start + k if use_range else iters[k]
        if policy == STEP:
            if not (lo_b <= it and it < hi_b):
                cs = c_int_div(it, stepsize)
                if it >= 0 and stepsize > 0:
                    lo_b = cs * stepsize
                    hi_b = lo_b + stepsize
        elif cs >= 0 and cs < n and it >= stepvalue[cs]:
            cs += 1
        if k == 0 or cs != last:
            last = cs
            rate = _stepwise32(base_lr, gamma, cs)
        out[k] = rate
    return cs


#: consecutive iterations per ``exp`` chunk between two glibc ``pow`` anchors
EXP_CHUNK = 1024
_EPS52 = 2.0**-52


@numba.njit(["int64" + _SCHED.format(S="float32")], parallel=True, **_SIG)
def _exp_float32(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start, use_range,
                 current_step, out):
    """exp: ``fl(double(base_lr) * pow(double(gamma), it))`` without a ``pow`` per element.

    Within a chunk, ``p`` follows ``gamma**it`` by one double multiplication
    per consecutive iteration from a glibc ``pow`` anchor. glibc's ``pow``
    is within 1 ulp (2**-52 relative) of the true power, the anchor too, and
    each multiplication adds at most 2**-53, so after ``j`` steps ``q =
    base_lr*p`` is within ``delta = (j + 16) * 2**-52`` (a margin of 2 over
    the bound) of Caffe's double ``base_lr*pow(gamma, it)``. When both
    ``q*(1-delta)`` and ``q*(1+delta)`` round to the same float, so does
    Caffe's value (rounding is monotonic); otherwise (about 2**-17 of
    elements), or when ``p`` is not a finite normal double, ``pow`` is
    called. Results far below float's range (``|q| < 1e-60``) are 0 either
    way. Bit-identical to ``rate_float32`` per element.
    """
    nchunks = (out.size + EXP_CHUNK - 1) // EXP_CHUNK
    b = np.float64(base_lr)
    g = np.float64(gamma)
    for c in numba.prange(nchunks):
        lo = c * EXP_CHUNK
        hi = min(lo + EXP_CHUNK, out.size)
        p = 0.0
        j = np.int64(0)
        prev = np.int64(0)
        for k in range(lo, hi):
            it = start + k if use_range else iters[k]
            if k > lo and it == prev + 1 and j < EXP_CHUNK:
                p = p * g
                j += 1
            else:
                p = powf(g, np.float64(it))
                j = 0
            prev = it
            q = b * p
            r = np.float32(0)
            exact = True
            if p == p and abs(p) < np.inf and abs(q) < np.inf:
                if abs(q) < 1e-60:
                    r = np.float32(q)
                    exact = False
                elif abs(p) > 1e-300:
                    d = (j + 16) * _EPS52
                    r1 = np.float32(q * (1.0 - d))
                    r2 = np.float32(q * (1.0 + d))
                    if r1 == r2:
                        r = r1
                        exact = False
            if exact:
                r = _stepwise32(base_lr, gamma, it)
            out[k] = r
    return current_step


@numba.njit(["int64" + _SCHED.format(S="float32")], parallel=True, **_SIG)
def _map_float32(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start, use_range,
                 current_step, out):
    """inv/poly/sigmoid (and any policy): ``rate_float32`` per element, in parallel.

    One loop per policy (the per-element expressions are ``rate_float32``'s
    own helpers), so the loop body is just the glibc call and its roundings.
    """
    n = out.size
    if policy == INV:
        for k in numba.prange(n):
            out[k] = _inv32(base_lr, gamma, power, start + k if use_range else iters[k])
    elif policy == POLY:
        for k in numba.prange(n):
            out[k] = _poly32(base_lr, power, max_iter, start + k if use_range else iters[k])
    elif policy == SIGMOID:
        for k in numba.prange(n):
            out[k] = _sigmoid32(base_lr, gamma, stepsize, start + k if use_range else iters[k])
    else:
        for k in numba.prange(n):
            it = start + k if use_range else iters[k]
            out[k] = rate_float32(policy, base_lr, gamma, power, stepsize, max_iter, it, current_step)
    return current_step


@numba.njit(["int64" + _SCHED.format(S="float64")], **_SIG)
def _schedule_float64(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start, use_range,
                      current_step, out):
    cs = current_step
    n = stepvalue.size
    for k in range(out.size):
        it = start + k if use_range else iters[k]
        if policy == MULTISTEP and cs >= 0 and cs < n and it >= stepvalue[cs]:
            cs += 1
        out[k] = rate_float64(policy, base_lr, gamma, power, stepsize, max_iter, it, cs)
        if policy == STEP:
            cs = c_int_div(it, stepsize)
    return cs


def schedule_float32(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start, use_range,
                     current_step, out):
    """Fill ``out`` with the rates of successive calls; return the final ``current_step``.

    Bit-identical to ``rate_float32`` call by call with multistep's state
    threaded through in order: fixed/step/multistep run one sequential pass
    (``pow`` once per distinct step), exp uses anchored multiplication with
    an exact fallback (``_exp_float32``), inv/poly/sigmoid call
    ``powf``/``expf`` per element in parallel (``prange``).
    """
    if policy in (FIXED, STEP, MULTISTEP):
        fn = _stepwise_float32
    elif policy == EXP:
        fn = _exp_float32
    else:
        fn = _map_float32
    return fn(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start, use_range, current_step,
              out)


def schedule_float64(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start, use_range,
                     current_step, out):
    """``schedule_float32``'s float64 yardstick (``rate_float64`` per call, sequential)."""
    return _schedule_float64(policy, base_lr, gamma, power, stepsize, max_iter, stepvalue, iters, start,
                             use_range, current_step, out)
