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
    "step_steps",
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


_kernel = numba.njit(cache=True, error_model="numpy", nogil=True)
_SCALAR = "(int64, {S}, {S}, {S}, int64, int64, int64, int64)"


@numba.njit(["int64(int64, int64)"], cache=True, error_model="numpy", nogil=True)
def c_int_div(a, b):
    """C's ``a / b`` for ints (truncates toward zero); ``b`` must not be 0."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


@numba.njit(["float32" + _SCALAR.format(S="float32")], cache=True, error_model="numpy", nogil=True)
def rate_float32(policy, base_lr, gamma, power, stepsize, max_iter, it, current_step):
    """Caffe's float ``rate`` for ``iter_ = it`` (module table).

    ``current_step`` is used by multistep only (already advanced by the
    caller); step recomputes its own. Unknown codes give NaN (the Python
    side refuses unknown policies before calling).
    """
    if policy == FIXED:
        return base_lr
    if policy == STEP or policy == MULTISTEP:
        cs = c_int_div(it, stepsize) if policy == STEP else current_step
        return np.float32(np.float64(base_lr) * powf(np.float64(gamma), np.float64(cs)))
    if policy == EXP:
        return np.float32(np.float64(base_lr) * powf(np.float64(gamma), np.float64(it)))
    if policy == INV:
        return base_lr * powf(np.float32(1) + gamma * np.float32(it), -power)
    if policy == POLY:
        return base_lr * powf(np.float32(1) - np.float32(it) / np.float32(max_iter), power)
    if policy == SIGMOID:
        return base_lr * (np.float32(1) / (np.float32(1) + expf(-gamma * (np.float32(it) - np.float32(stepsize)))))
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


@numba.njit(["int64(int64[::1], int64[::1], int64, int64[::1])"], cache=True, error_model="numpy", nogil=True)
def multistep_steps(stepvalue, iters, current_step, out):
    """multistep's ``current_step_`` at each of successive calls.

    Caffe, per ``GetLearningRate`` call: ``if (cs < stepvalue_size() &&
    iter_ >= stepvalue(cs)) ++cs`` -- at most one advance per call, so a
    run resumed past several stepvalues catches up one step per iteration.
    ``out[k]`` is the step used by the call with ``iter_ = iters[k]``;
    returns the step after the last call.
    """
    cs = current_step
    n = stepvalue.size
    for k in range(iters.size):
        if cs < n and cs >= 0 and iters[k] >= stepvalue[cs]:
            cs += 1
        out[k] = cs
    return cs


@numba.njit(["int64(int64[::1], int64, int64[::1])"], cache=True, error_model="numpy", nogil=True)
def step_steps(iters, stepsize, out):
    """step's ``current_step_ = iter_ / stepsize`` at each call; returns the last (or 0)."""
    cs = 0
    for k in range(iters.size):
        cs = c_int_div(iters[k], stepsize)
        out[k] = cs
    return cs


@numba.njit(["void(int64, float32, float32, float32, int64, int64, int64[::1], int64[::1], float32[::1])"],
            cache=True, error_model="numpy", nogil=True, parallel=True)
def _map_float32(policy, base_lr, gamma, power, stepsize, max_iter, iters, steps, out):
    for k in numba.prange(iters.size):
        out[k] = rate_float32(policy, base_lr, gamma, power, stepsize, max_iter, iters[k], steps[k])


@numba.njit(["void(int64, float64, float64, float64, int64, int64, int64[::1], int64[::1], float64[::1])"],
            cache=True, error_model="numpy", nogil=True, parallel=True)
def _map_float64(policy, base_lr, gamma, power, stepsize, max_iter, iters, steps, out):
    for k in numba.prange(iters.size):
        out[k] = rate_float64(policy, base_lr, gamma, power, stepsize, max_iter, iters[k], steps[k])


@numba.njit(["void(int64, float32, float32, int64[::1], float32[::1])"], cache=True, error_model="numpy", nogil=True)
def _stepwise_float32(policy, base_lr, gamma, steps, out):
    """step/multistep: ``pow`` only when the step changes (the rate is a function of it)."""
    last = np.int64(-1)
    rate = np.float32(0)
    for k in range(steps.size):
        if k == 0 or steps[k] != last:
            last = steps[k]
            rate = np.float32(np.float64(base_lr) * powf(np.float64(gamma), np.float64(last)))
        out[k] = rate


def schedule_float32(policy, base_lr, gamma, power, stepsize, max_iter, iters, steps, out):
    """Fill ``out[k]`` with ``rate_float32`` at ``iters[k]``/``steps[k]``.

    Element-independent (``prange`` for the policies that call ``powf``,
    ``pow`` or ``expf`` per element; step/multistep evaluate ``pow`` once per
    distinct step), so bit-identical to calling ``rate_float32`` in a loop.
    """
    if policy == FIXED:
        out[:] = base_lr
    elif policy == STEP or policy == MULTISTEP:
        _stepwise_float32(policy, base_lr, gamma, steps, out)
    else:
        _map_float32(policy, base_lr, gamma, power, stepsize, max_iter, iters, steps, out)


def schedule_float64(policy, base_lr, gamma, power, stepsize, max_iter, iters, steps, out):
    """``schedule_float32``'s float64 yardstick (``rate_float64`` per element)."""
    _map_float64(policy, base_lr, gamma, power, stepsize, max_iter, iters, steps, out)
