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
``fma(...)`` call says so). Every element is computed on its own (given
its index: see ``tail_swap_index``), so the kernels' split into blocks and
into chunks over threads is bit-identical to one pass (``SERIAL`` are the
one-thread twins; the tests compare the two).

Notation in the docstrings: ``fl(x)`` rounds to the array's precision
(float32 for Caffe's ``Dtype=float``), ``fma(a, b, c) = fl(a*b + c)`` with
one rounding, ``g`` the blob's diff, ``w`` its data, ``h`` its history.
Scalars arrive already rounded as Caffe rounds them (``local_rate =
fl(rate*lr_mult)``, ``fl(1-momentum)``, ...); the caller computes them in the
array's precision.

BLAS behaviour is selected per call by two flags that together form an
*arithmetic profile* (``harness.reference.PROFILES``):

``axpy``
    how ``saxpy(alpha, x, y)`` computes (and which NaN it keeps when several
    operands are NaN): ``AXPY_SEPARATE`` (0, reference BLAS: ``t =
    fl(x*alpha)``, then ``fl(t + y)``), ``AXPY_FUSED`` (1, OpenBLAS x86-64
    kernels: ``fma(alpha, x, y)``), ``AXPY_SEPARATE_Y_FIRST`` (2, ATLAS:
    ``fl(y + fl(x*alpha))``). ``True``/``False`` (the former ``fused`` flag)
    mean ``AXPY_FUSED``/``AXPY_SEPARATE``.
``zero_fill``
    what ``sscal(alpha, y)`` does when alpha is 0: ``SCAL_MULTIPLY`` (0)
    multiplies (reference BLAS, ATLAS: ``0*NaN = NaN``, ``0*(-1) = -0``),
    ``SCAL_ZERO_FILL`` (1) writes +0 when ``alpha == 0``,
    ``SCAL_ZERO_FILL_NAN`` (2) writes +0 when ``alpha == 0`` or alpha is NaN
    (OpenBLAS 0.3.13 ``scal_sse.S``: its ``comiss`` test treats unordered as
    equal).

In every profile ``sscal(1, y)`` leaves y alone and ``saxpy`` with
``alpha == 0`` returns at once (both BLAS interfaces short-cut these), which
decides the sign of zeros and whether NaN/Inf in ``x`` reach ``y``.
Caffe's ``caffe_cpu_axpby(alpha, x, beta, y)`` (non-MKL) is
``sscal(beta, y); saxpy(alpha, x, y)``, i.e. ``fma(alpha, x, fl(beta*y))``
when fused.

**Which NaN comes out.** On x86 an SSE/AVX instruction with NaN operands
returns its *first source operand's* NaN if that one is NaN, else the other
one's, quieted (quiet bit set, sign and payload kept); an invalid operation
on non-NaN operands (``inf - inf``, ``0*inf``, ``0/0``) gives the default NaN
``0xFFC00000``. So what decides is the operand order each library's compiled
code uses, measured on the installed builds (``cblas_*`` called directly and
``tests/test_properties_caffe.py::test_nan_propagation`` on live Caffe):

- ``sscal``: ``y*alpha``, y first, in all three BLAS;
- ``saxpy``: ``AXPY_SEPARATE`` ``t = x*alpha`` (x first), ``t + y`` (t
  first); ``AXPY_SEPARATE_Y_FIRST`` ``y + t`` (y first); ``AXPY_FUSED`` the
  FMA keeps alpha's NaN, else x's, else y's (NaN operands win over an
  invalid ``inf*0``);
- Caffe's own loops (``libcaffe.so``, gcc-vectorized, the same in every
  build): ``caffe_add(a, b)``/``caffe_mul(a, b)`` a first, except that with
  ``n >= 7`` and ``n % 4 == 3`` the last element is computed ``b op a`` (the
  third scalar tail iteration after the 4-wide loop); ``caffe_add_scalar(
  alpha, y)`` y first, except the last element when ``n % 4 == 3`` (alpha
  first); ``caffe_div(a, b)`` a first; ``caffe_powx`` is glibc ``powf``;
  copies (``caffe_copy``, ``cblas_scopy``) keep bits.

LLVM treats NaN payloads as unspecified and commutes ``fadd``/``fmul``
operands freely, so the helpers below compute the value and then *select*
the NaN explicitly (``_nan_of``): a compare and a blend per operation,
branch-free, still vectorizable. The raw ``fma`` keeps whatever the
hardware gives.

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
(exact either way; ``net_update``), and leaves the update value in ``g``
(Caffe's ``snapshot_diff``).
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
    "AXPY_SEPARATE",
    "AXPY_FUSED",
    "AXPY_SEPARATE_Y_FIRST",
    "fma",
    "powf",
    "expf",
    "quiet",
    "select",
    "scal",
    "axpy",
    "axpby",
    "net_update",
    "caffe_add",
    "caffe_mul",
    "caffe_add_scalar",
    "tail_swap_index",
    "sgd_update",
    "nesterov_update",
    "adagrad_update",
    "rmsprop_update",
    "adadelta_update",
    "adam_update",
    "sgd_update_serial",
    "nesterov_update_serial",
    "adagrad_update_serial",
    "rmsprop_update_serial",
    "adadelta_update_serial",
    "adam_update_serial",
    "PARALLEL",
    "SERIAL",
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
AXPY_SEPARATE = 0
AXPY_FUSED = 1
AXPY_SEPARATE_Y_FIRST = 2

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


# quiet(x) and select(c, a, b): the two primitives that pin down which NaN an
# operation returns. quiet sets the quiet bit with integer operations (LLVM
# may pick any NaN payload for a float operation, never for an integer one);
# select is LLVM's branch-free select (numba lowers ``a if c else b`` to
# branches, which can keep a loop from vectorizing).
if _DISABLE_JIT:

    def quiet(x):
        """``x`` with its quiet bit set (the NaN an x86 operation returns for a NaN operand)."""
        if isinstance(x, np.float32):
            return (np.array(x).view(np.uint32) | np.uint32(1 << 22)).view(np.float32)[()]
        return (np.array(x, np.float64).view(np.uint64) | np.uint64(1 << 51)).view(np.float64)[()]

    def select(c, a, b):
        """``a`` if ``c`` else ``b``, in the wider of their float types."""
        if isinstance(a, np.float32) and isinstance(b, np.float32):
            return a if c else b
        return np.float64(a if c else b)

else:

    @_intrinsic
    def _quiet_intrinsic(typingctx, x):
        if not isinstance(x, _types.Float):
            return None

        def codegen(context, builder, sig, args):
            width = 32 if sig.args[0] == _types.float32 else 64
            it = _ir.IntType(width)
            bits = builder.bitcast(args[0], it)
            bits = builder.or_(bits, _ir.Constant(it, 1 << (22 if width == 32 else 51)))
            return builder.bitcast(bits, context.get_value_type(sig.args[0]))

        return x(x), codegen

    @_intrinsic
    def _select_intrinsic(typingctx, c, a, b):
        ty = _float_result(a, b)
        if ty is None or not isinstance(c, _types.Boolean):
            return None

        def codegen(context, builder, sig, args):
            cond = context.cast(builder, args[0], sig.args[0], _types.boolean)
            x = context.cast(builder, args[1], sig.args[1], ty)
            y = context.cast(builder, args[2], sig.args[2], ty)
            return builder.select(builder.trunc(cond, _ir.IntType(1)) if cond.type != _ir.IntType(1) else cond, x, y)

        return ty(c, a, b), codegen

    @numba.njit(cache=True, inline="always")
    def quiet(x):
        """``x`` with its quiet bit set (the NaN an x86 operation returns for a NaN operand)."""
        return _quiet_intrinsic(x)

    @numba.njit(cache=True, inline="always")
    def select(c, a, b):
        """``a`` if ``c`` else ``b`` (LLVM ``select``, no branch), in the wider of their float types."""
        return _select_intrinsic(c, a, b)


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
#: the ``exact`` argument of the element helpers: ``False`` (0) plain arithmetic with the certified powf forms,
#: ``True`` (1) NaN bookkeeping and glibc's powf, ``_GLIBC_POW`` (2) plain arithmetic with glibc's powf where a
#: certified form is uncertain (elements without NaN inputs: there plain arithmetic keeps the right NaN)
_EXACT = 1
_GLIBC_POW = 2
#: a solver's per-element body: inlined into its kernel (numba IR) once per value of ``exact``, a constant
#: there, so the copy without the NaN bookkeeping is plain arithmetic
_element = numba.njit(cache=True, error_model="numpy", nogil=True, inline="always")


@_inline
def _nan_of(first, second, r, exact=True):
    """``r``, the value of a two-operand x86 operation, with the NaN x86 keeps.

    ``first``'s NaN (quieted) if it is NaN, else ``second``'s, else ``r``
    (which may be the default NaN of an invalid operation). Selects, so
    LLVM's freedom to commute operands does not matter. ``exact=False``
    returns ``r``: right when no operand can be a NaN other than the default
    one (every NaN born in an element from non-NaN inputs is x86's default
    NaN, whatever the operand order). The helpers below take the same flag;
    the solver elements also pass ``_GLIBC_POW`` (2), which is ``False``
    here (no NaN bookkeeping) but calls glibc's ``powf`` where its
    certified form is not certain (``_pow2``).
    """
    if exact != _EXACT:
        return r
    r = select(second != second, quiet(second), r)
    return select(first != first, quiet(first), r)


@_inline
def scal(alpha, y, zero_fill, exact=True):
    """One element of ``sscal(alpha, y)`` as the profile's BLAS does it.

    ``y*alpha`` in the array's precision (one rounding, y's NaN before
    alpha's), except: ``alpha == 1`` returns ``y`` untouched (every BLAS
    short-cuts it), and with ``zero_fill`` ``SCAL_ZERO_FILL`` (``alpha ==
    0``) or ``SCAL_ZERO_FILL_NAN`` (``alpha == 0`` or NaN) it returns +0
    whatever ``y`` is (+0 in either precision). Branch-free unless
    ``exact=False`` (plain arithmetic, no NaN selection; see ``_nan_of``).
    """
    zero = (zero_fill != SCAL_MULTIPLY) & ((alpha == 0) | ((zero_fill == SCAL_ZERO_FILL_NAN) & (alpha != alpha)))
    if exact != _EXACT:
        if alpha == 1:
            return y
        if zero:
            return np.float32(0)
        return y * alpha
    r = select(zero, np.float32(0), _nan_of(y, alpha, y * alpha))
    return select(alpha == 1, y, r)


@_inline
def axpy(alpha, x, y, form, exact=True):
    """One element of ``saxpy(alpha, x, y)`` in the profile's ``axpy`` ``form``.

    ``AXPY_FUSED`` (or ``True``): ``fma(alpha, x, y)``, keeping alpha's NaN,
    else x's, else y's. ``AXPY_SEPARATE`` (or ``False``): ``t =
    fl(x*alpha)`` then ``fl(t + y)``, each keeping its first operand's NaN.
    ``AXPY_SEPARATE_Y_FIRST``: ``fl(y + t)``, y's NaN first. ``alpha == 0``
    returns ``y`` untouched (NaN or Inf in ``x`` do not reach it). Branch-free
    (the form's result is selected) unless ``exact=False``.
    """
    if exact != _EXACT:
        if alpha == 0:
            return y
        if form == AXPY_FUSED:
            return fma(alpha, x, y)
        return y + alpha * x
    t = _nan_of(x, alpha, x * alpha)
    r = select(form == AXPY_SEPARATE_Y_FIRST, _nan_of(y, t, y + t), _nan_of(t, y, t + y))
    f = fma(alpha, x, y)
    f = select(alpha != alpha, quiet(alpha), select(x != x, quiet(x), select(y != y, quiet(y), f)))
    r = select(form == AXPY_FUSED, f, r)
    return select(alpha == 0, y, r)


@_inline
def axpby(alpha, x, beta, y, form, zero_fill, exact=True):
    """One element of Caffe's non-MKL ``caffe_cpu_axpby``: ``axpy(alpha, x, scal(beta, y))``.

    ``fma(alpha, x, fl(beta*y))`` when fused, with both BLAS short-cuts.
    """
    return axpy(alpha, x, scal(beta, y, zero_fill, exact), form, exact)


@_inline
def net_update(w, g, form, exact=True):
    """One element of ``Net::Update``: ``saxpy(-1, g, w)``, i.e. ``fl(w - g)``.

    Exact in every form (``-1*g`` is exact and the FMA rounds the same sum
    once); the NaN is g's before w's, except with ``AXPY_SEPARATE_Y_FIRST``
    (w's first). Computed as a subtraction, never as a literal ``-1*g``
    (which LLVM may turn into a sign flip, NaNs included).
    """
    w_first = form == AXPY_SEPARATE_Y_FIRST
    return _nan_of(select(w_first, w, g), select(w_first, g, w), w - g, exact)


@_inline
def caffe_add(a, b, swap, exact=True):
    """One element of ``caffe_add(a, b, y)`` (``y = a + b``): a's NaN first, b's when ``swap``.

    ``swap`` is ``i == tail_swap_index(n, 7)``: the element gcc's tail code
    computes as ``b + a``.
    """
    return _nan_of(select(swap, b, a), select(swap, a, b), a + b, exact)


@_inline
def caffe_mul(a, b, swap, exact=True):
    """One element of ``caffe_mul(a, b, y)`` (``y = a*b``): a's NaN first, b's when ``swap``.

    ``swap`` as for ``caffe_add`` (the same compiled loop shape).
    """
    return _nan_of(select(swap, b, a), select(swap, a, b), a * b, exact)


@_inline
def caffe_add_scalar(alpha, y, swap, exact=True):
    """One element of ``caffe_add_scalar(alpha, y)`` (``y += alpha``): y's NaN first, alpha's when ``swap``.

    ``swap`` is ``i == tail_swap_index(n, 3)``.
    """
    return _nan_of(select(swap, alpha, y), select(swap, y, alpha), y + alpha, exact)


@_inline
def tail_swap_index(n, vector_from):
    """The element whose operands libcaffe's gcc-compiled loop swaps, or -1.

    Caffe's ``vAdd``/``vMul``/``caffe_add_scalar`` loops run 4 floats at a
    time, then up to 3 scalar iterations; the third of those (present when
    ``n % 4 == 3``) has its operands the other way round. ``vAdd``/``vMul``
    take the vector path only from ``n >= 7`` (``vector_from`` 7; below
    that a plain scalar loop, no swap); ``caffe_add_scalar`` also runs the
    tail code alone when ``n <= 3`` (``vector_from`` 3).
    """
    if n % 4 == 3 and n >= vector_from:
        return n - 1
    return -1


@_inline
def _isnan(x):
    return x != x


@_inline
def _prologue(w, g, clip_scale, norm, reg, local_decay, form, zero_fill, exact):
    """Clip scaling, Normalize and Regularize of one diff element (module docstring).

    L2 and L1 share one saxpy: its x is ``w`` (L2) or ``sign(w)`` (L1).
    Branch-free unless ``exact=False``.
    """
    g = scal(clip_scale, g, zero_fill, exact)
    g = scal(norm, g, zero_fill, exact)
    s = select(w > 0, np.float32(1), select(w < 0, np.float32(-1), np.float32(0)))
    if exact != _EXACT:
        if reg == REG_L2:
            return axpy(local_decay, w, g, form, exact)
        if reg == REG_L1:
            return axpy(local_decay, s, g, form, exact)
        return g
    x = select(reg == REG_L2, w, s)
    return select(reg == REG_NONE, g, axpy(local_decay, x, g, form, exact))


# ---------------------------------------------------------------------------
# powf(x, 2) and powf(x, 0.5) in vectorizable form, with a certificate
#
# glibc's powf (the FMA variant this machine's libm selects, also what
# Caffe's libcaffe calls) computes exp2(y*log2(x)) in double and rounds that
# to float once. It returns the correctly rounded x*x / sqrt(x) except when
# the exact result lies within a tiny distance of a rounding midpoint (there
# its double approximation may land on the other side): on all 2^32 float
# inputs the farthest such miss was 2^-9.24 ulp from the midpoint for y = 2
# and 2^-9.28 ulp for y = 0.5 (benchmarks/check_powf_exhaustive.py).
#
# So ``_square``/``_root`` return the correctly rounded value ``fl(x*x)`` /
# ``sqrtf(x)`` plus a flag ``certain``: True when the exact result is at
# least about 2^-9 ulp away from every midpoint (1.18x the widest miss), where
# glibc's powf returns the same bits -- proved by running both on all 2^32
# inputs for each exponent (0 certified inputs differ). About 0.4% of
# ordinary inputs per exponent (and every
# zero-free tiny/huge/NaN/Inf/negative input of sqrt) are uncertain; the
# kernels recompute those elements with the real ``powf``. Only float32 is
# certified: in float64 ``certain`` is always False (glibc ``pow`` decides).
#
# Certificates, all in float32, no division, vectorizable:
#   square: p = fl(x*x); e = fma(x, x, -p) is the exact residual x*x - p
#     when |x| >= 2^-51 (below, the residual can fall under 2^-149: x below
#     2^-20 is first scaled by 2^40, which scales p by 2^80 exactly);
#     certain iff fma(1+2^-8, e, p) == p, i.e. |e| < ~(0.5 - 2^-9) of the
#     spacing on e's side of p, and p is normal (or x == 0).
#   root: s = sqrtf(x); e = fma(-s, s, x) = x - s*s exactly (x below 2^-26,
#     subnormals included, is first scaled by 2^100, which scales s by 2^50
#     exactly); sqrt(x) - s ~ e/(2s), so the distance to the midpoint exceeds
#     ~2^-9 ulp iff |e| < (1 - 2^-8) * s * ulp(s); ulp(s) from s's exponent
#     bits. +0 and -0 give +0 (glibc: powf(-0, 0.5) = +0, sqrtf(-0) = -0).
# ---------------------------------------------------------------------------
_SQUARE_C = np.float32(1 + 2.0**-8)
_ROOT_K = np.float32(1 - 2.0**-8)
_SQUARE_MIN = np.float32(2.0**-126)
_SQUARE_SCALE_MIN = np.float32(2.0**-20)
_SQUARE_SCALE = np.float32(2.0**40)
_ROOT_SCALE_MIN = np.float32(2.0**-26)
_ROOT_SCALE = np.float32(2.0**100)
_ROOT_UNSCALE = np.float32(2.0**-50)

if _DISABLE_JIT:

    def _ulp(x):
        """The spacing of floats in ``x``'s binade (finite normal ``x`` above 2^-100)."""
        a = np.asarray(x)
        bits = a.view(np.int32 if a.dtype == np.float32 else np.int64)
        m, shift = (0x7F800000, 23 << 23) if a.dtype == np.float32 else (0x7FF0000000000000, 52 << 52)
        return type(x)(np.asarray((bits & m) - shift, dtype=bits.dtype).view(a.dtype))

    def _certifiable(x):
        return isinstance(x, np.float32)

else:

    @_intrinsic
    def _ulp(typingctx, x):
        """The spacing of floats in ``x``'s binade (finite normal ``x`` above 2^-100)."""
        if not isinstance(x, _types.Float):
            return None
        bits = x.bitwidth
        mask, shift = (0x7F800000, 23 << 23) if bits == 32 else (0x7FF0000000000000, 52 << 52)

        def codegen(context, builder, sig, args):
            it = _ir.IntType(bits)
            v = builder.bitcast(args[0], it)
            v = builder.sub(builder.and_(v, it(mask)), it(shift))
            return builder.bitcast(v, args[0].type)

        return x(x), codegen

    @_intrinsic
    def _certifiable(typingctx, x):
        """True for float32 (the certified forms apply), False for float64, as a constant."""
        if not isinstance(x, _types.Float):
            return None
        answer = x == _types.float32

        def codegen(context, builder, sig, args):
            return context.get_constant(_types.boolean, answer)

        return _types.boolean(x), codegen


@_element
def _square(x):
    """``(fl(x*x), certain)``: certain means glibc ``powf(x, 2)`` is that value."""
    p = x * x
    if not _certifiable(x):
        return p, False
    big = abs(x) >= _SQUARE_SCALE_MIN
    xs = x if big else x * _SQUARE_SCALE  # exact; (x * 2^40)^2 = x^2 * 2^80, same position between floats
    ps = xs * xs
    e = fma(xs, xs, -ps)
    return p, (fma(_SQUARE_C, e, ps) == ps) & ((p >= _SQUARE_MIN) | (x == 0))


@_element
def _root(x):
    """``(sqrtf(x) (+0 for -0), certain)``: certain means glibc ``powf(x, 0.5)`` is that value."""
    if not _certifiable(x):
        return np.sqrt(x), False
    big = x >= _ROOT_SCALE_MIN
    xs = x if big else x * _ROOT_SCALE  # exact; sqrt(x * 4^50) = sqrt(x) * 2^50, same position between floats
    s = np.sqrt(xs)
    e = fma(-s, s, xs)
    ok = ((abs(e) < _ROOT_K * (s * _ulp(s))) & (xs > 0)) | (x == 0)
    s = s if big else s * _ROOT_UNSCALE
    return s + np.float32(0), ok


@_element
def _pow2(x, exact):
    """glibc ``powf(x, 2)`` as ``(value, certain)``.

    ``exact`` ``True``: glibc itself; ``False``: the certified form and its
    flag; ``_GLIBC_POW``: the certified form where certain, else glibc.
    """
    if exact == _EXACT:
        return powf(x, np.float32(2)), True
    p, ok = _square(x)
    if exact == _GLIBC_POW:
        return p if ok else powf(x, np.float32(2)), True
    return p, ok


@_element
def _pow_half(x, exact):
    """glibc ``powf(x, 0.5)`` as ``(value, certain)``, with ``exact`` as for ``_pow2``."""
    if exact == _EXACT:
        return powf(x, np.float32(0.5)), True
    s, ok = _root(x)
    if exact == _GLIBC_POW:
        return s if ok else powf(x, np.float32(0.5)), True
    return s, ok


_PROLOGUE = "S, S, int64, S"  # clip_scale, norm, reg, local_decay
_PROFILE = "int64, int64"  # form (AXPY_*; True/False also work), zero_fill


# ---------------------------------------------------------------------------
# the drivers: parallel, vectorized, bit-identical to a serial loop
#
# Every element is independent (given its index, for the tail swaps), so any
# split over threads gives the bits of a serial loop. Arrays shorter than
# _PARALLEL_MIN run serially (waking the thread pool costs more than they
# do, and far more on a busy machine). The powf solvers go block by block: a
# vectorized pass computes each element without NaN bookkeeping and with the
# certified powf forms (``exact=False``) and keeps the block's inputs; then
# the elements that had a NaN input are recomputed from those inputs with
# the NaN bookkeeping and glibc's powf (``exact=True``), those with an
# uncertain powf without it, calling glibc for that powf (``_GLIBC_POW``).
# Blocks are indexed from 0 through slices (LLVM vectorizes loops whose
# indices it knows to be non-negative).
# ---------------------------------------------------------------------------
_BLOCK = 512
_PARALLEL_MIN = 1 << 10 if _DISABLE_JIT else 1 << 18  # plain Python (NUMBA_DISABLE_JIT): chunks from 1 Ki elements
_CHUNKS = 64
_ALL_CERTAIN = np.uint64(0x0101010101010101)

_range = numba.njit(cache=True, error_model="numpy", nogil=True)


def _pjit(template: str):
    """``_jit`` plus ``parallel=True``: ``prange`` loops run on numba's thread pool."""
    sigs = [re.sub(r"\b[AS]\b", lambda m, t=t: t[m.group(0)], template) for t in _TYPES]
    return numba.njit(sigs, cache=True, error_model="numpy", nogil=True, parallel=True)


@_inline
def _chunks(n):
    """``(chunks, elements per chunk)`` for ``prange``: up to _CHUNKS chunks of whole blocks."""
    per = -(-n // _CHUNKS)
    per = -(-per // _BLOCK) * _BLOCK
    return -(-n // per), per


@_element
def _sgd_element(wi, gi, hi, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill, exact):
    gi = _prologue(wi, gi, clip_scale, norm, reg, local_decay, form, zero_fill, exact)
    hi = axpby(local_rate, gi, momentum, hi, form, zero_fill, exact)
    return net_update(wi, hi, form, exact), hi, hi, True


@_element
def _nesterov_element(wi, gi, hi, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum,
                      neg_momentum, form, zero_fill, exact):
    gi = _prologue(wi, gi, clip_scale, norm, reg, local_decay, form, zero_fill, exact)
    new = axpby(local_rate, gi, momentum, hi, form, zero_fill, exact)
    u = axpby(one_plus_momentum, new, neg_momentum, hi, form, zero_fill, exact)
    return net_update(wi, u, form, exact), u, new, True


@_element
def _has_nan(a, b, c):
    """Whether any element of three equal-length arrays is NaN (a vectorized OR reduction)."""
    found = False
    for j in range(a.size):
        found |= (a[j] != a[j]) | (b[j] != b[j]) | (c[j] != c[j])
    return found


@_element
def _sgd_pass(ws, gs, hs, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill, exact):
    """``_sgd_range``'s loop over one block, with or without the NaN bookkeeping."""
    for j in range(ws.size):
        ws[j], gs[j], hs[j], _ = _sgd_element(ws[j], gs[j], hs[j], clip_scale, norm, reg, local_decay, local_rate, momentum, form,
                                              zero_fill, exact)


@_range
def _sgd_range(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill):
    """Elements of ``sgd_update`` block by block: plain arithmetic unless the block holds a NaN.

    A block with a NaN in its data, diff or history (or any NaN setting)
    runs with the NaN bookkeeping, the others without it (the same bits when
    no operand is NaN) and, without clipping and with ``iter_size`` 1
    (``clip_scale == norm == 1``), with literal ones that LLVM folds away.
    """
    one = w.dtype.type(1)
    plain = (clip_scale == 1) & (norm == 1)
    nan = _isnan(clip_scale) | _isnan(norm) | _isnan(local_decay) | _isnan(local_rate) | _isnan(momentum)
    for b in range(0, w.size, _BLOCK):
        ws, gs, hs = w[b:b + _BLOCK], g[b:b + _BLOCK], h[b:b + _BLOCK]
        if nan or _has_nan(ws, gs, hs):
            _sgd_pass(ws, gs, hs, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill, True)
        elif plain:
            _sgd_pass(ws, gs, hs, one, one, reg, local_decay, local_rate, momentum, form, zero_fill, False)
        else:
            _sgd_pass(ws, gs, hs, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill, False)


@_element
def _nesterov_pass(ws, gs, hs, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form, zero_fill, exact):
    """``_nesterov_range``'s loop over one block, with or without the NaN bookkeeping."""
    for j in range(ws.size):
        ws[j], gs[j], hs[j], _ = _nesterov_element(ws[j], gs[j], hs[j], clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form,
                                              zero_fill, exact)


@_range
def _nesterov_range(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form, zero_fill):
    """Elements of ``nesterov_update`` block by block: plain arithmetic unless the block holds a NaN.

    A block with a NaN in its data, diff or history (or any NaN setting)
    runs with the NaN bookkeeping, the others without it (the same bits when
    no operand is NaN) and, without clipping and with ``iter_size`` 1
    (``clip_scale == norm == 1``), with literal ones that LLVM folds away.
    """
    one = w.dtype.type(1)
    plain = (clip_scale == 1) & (norm == 1)
    nan = _isnan(clip_scale) | _isnan(norm) | _isnan(local_decay) | _isnan(local_rate) | _isnan(momentum) | _isnan(one_plus_momentum) | _isnan(neg_momentum)
    for b in range(0, w.size, _BLOCK):
        ws, gs, hs = w[b:b + _BLOCK], g[b:b + _BLOCK], h[b:b + _BLOCK]
        if nan or _has_nan(ws, gs, hs):
            _nesterov_pass(ws, gs, hs, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form, zero_fill, True)
        elif plain:
            _nesterov_pass(ws, gs, hs, one, one, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form, zero_fill, False)
        else:
            _nesterov_pass(ws, gs, hs, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form, zero_fill, False)


@_element
def _adagrad_element(wi, gi, hi, sv, ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill,
                     exact):
    gi = _prologue(wi, gi, clip_scale, norm, reg, local_decay, form, zero_fill, exact)
    u, ok1 = _pow2(gi, exact)
    hi = caffe_add(u, hi, sv, exact)
    u, ok2 = _pow_half(hi, exact)
    u = caffe_add_scalar(delta, u, ss, exact)
    u = gi / u
    gi = axpby(local_rate, u, np.float32(0), gi, form, zero_fill, exact)
    return net_update(wi, gi, form, exact), gi, hi, ok1 & ok2


@_element
def _adagrad_block(ws, gs, hs, w0, g0, h0, ok, b, sv, ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill, nan):
    """``_adagrad_range``'s vectorized pass over one block: results, the inputs kept in ``w0, g0, h0``, ``ok`` flags."""
    for j in range(ws.size):
        wi, gi, hi = ws[j], gs[j], hs[j]
        w0[j], g0[j], h0[j] = wi, gi, hi
        ws[j], gs[j], hs[j], certain = _adagrad_element(
            wi, gi, hi, b + j == sv, b + j == ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill, False)
        ok[j] = certain & (not (nan | (wi != wi) | (gi != gi) | (hi != hi)))


@_range
def _adagrad_range(w, g, h, sv, ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill, nan):
    """Elements of ``adagrad_update`` block by block (``sv``/``ss``: swapped elements' indices here, or -1).

    Without clipping and with ``iter_size`` 1 (``clip_scale == norm == 1``)
    the vectorized pass runs with literal ones, which LLVM folds away.
    """
    w0 = np.empty(_BLOCK, w.dtype)
    g0 = np.empty(_BLOCK, w.dtype)
    h0 = np.empty(_BLOCK, w.dtype)
    words = np.full(_BLOCK // 8, _ALL_CERTAIN, np.uint64)
    ok = words.view(np.uint8)
    one = w.dtype.type(1)
    plain = (clip_scale == 1) & (norm == 1)
    for b in range(0, w.size, _BLOCK):
        ws, gs, hs = w[b:b + _BLOCK], g[b:b + _BLOCK], h[b:b + _BLOCK]
        if plain:
            _adagrad_block(ws, gs, hs, w0, g0, h0, ok, b, sv, ss, one, one, reg, local_decay, local_rate, delta, form, zero_fill, nan)
        else:
            _adagrad_block(ws, gs, hs, w0, g0, h0, ok, b, sv, ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill,
                          nan)
        for k in range((ws.size + 7) // 8):
            if words[k] != _ALL_CERTAIN:
                for j in range(8 * k, min(8 * k + 8, ws.size)):
                    if not ok[j]:  # a NaN input (NaN bookkeeping), else an uncertain powf
                        if nan | (w0[j] != w0[j]) | (g0[j] != g0[j]) | (h0[j] != h0[j]):
                            ws[j], gs[j], hs[j], _ = _adagrad_element(
                                w0[j], g0[j], h0[j], b + j == sv, b + j == ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill, True)
                        else:
                            ws[j], gs[j], hs[j], _ = _adagrad_element(
                                w0[j], g0[j], h0[j], b + j == sv, b + j == ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill, _GLIBC_POW)


@_element
def _rmsprop_element(wi, gi, hi, ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay,
                     delta, form, zero_fill, exact):
    gi = _prologue(wi, gi, clip_scale, norm, reg, local_decay, form, zero_fill, exact)
    u, ok1 = _pow2(gi, exact)
    hi = axpby(one_minus_rms_decay, u, rms_decay, hi, form, zero_fill, exact)
    u, ok2 = _pow_half(hi, exact)
    u = caffe_add_scalar(delta, u, ss, exact)
    u = gi / u
    gi = axpby(local_rate, u, np.float32(0), gi, form, zero_fill, exact)
    return net_update(wi, gi, form, exact), gi, hi, ok1 & ok2


@_element
def _rmsprop_block(ws, gs, hs, w0, g0, h0, ok, b, ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, nan):
    """``_rmsprop_range``'s vectorized pass over one block: results, the inputs kept in ``w0, g0, h0``, ``ok`` flags."""
    for j in range(ws.size):
        wi, gi, hi = ws[j], gs[j], hs[j]
        w0[j], g0[j], h0[j] = wi, gi, hi
        ws[j], gs[j], hs[j], certain = _rmsprop_element(
            wi, gi, hi, b + j == ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, False)
        ok[j] = certain & (not (nan | (wi != wi) | (gi != gi) | (hi != hi)))


@_range
def _rmsprop_range(w, g, h, ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, nan):
    """Elements of ``rmsprop_update`` block by block (``ss``: swapped elements' indices here, or -1).

    Without clipping and with ``iter_size`` 1 (``clip_scale == norm == 1``)
    the vectorized pass runs with literal ones, which LLVM folds away.
    """
    w0 = np.empty(_BLOCK, w.dtype)
    g0 = np.empty(_BLOCK, w.dtype)
    h0 = np.empty(_BLOCK, w.dtype)
    words = np.full(_BLOCK // 8, _ALL_CERTAIN, np.uint64)
    ok = words.view(np.uint8)
    one = w.dtype.type(1)
    plain = (clip_scale == 1) & (norm == 1)
    for b in range(0, w.size, _BLOCK):
        ws, gs, hs = w[b:b + _BLOCK], g[b:b + _BLOCK], h[b:b + _BLOCK]
        if plain:
            _rmsprop_block(ws, gs, hs, w0, g0, h0, ok, b, ss, one, one, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, nan)
        else:
            _rmsprop_block(ws, gs, hs, w0, g0, h0, ok, b, ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill,
                          nan)
        for k in range((ws.size + 7) // 8):
            if words[k] != _ALL_CERTAIN:
                for j in range(8 * k, min(8 * k + 8, ws.size)):
                    if not ok[j]:  # a NaN input (NaN bookkeeping), else an uncertain powf
                        if nan | (w0[j] != w0[j]) | (g0[j] != g0[j]) | (h0[j] != h0[j]):
                            ws[j], gs[j], hs[j], _ = _rmsprop_element(
                                w0[j], g0[j], h0[j], b + j == ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, True)
                        else:
                            ws[j], gs[j], hs[j], _ = _rmsprop_element(
                                w0[j], g0[j], h0[j], b + j == ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, _GLIBC_POW)


@_element
def _adadelta_element(wi, gi, hi, h2i, sw, clip_scale, norm, reg, local_decay, local_rate, momentum,
                      one_minus_momentum, delta, form, zero_fill, exact):
    gi = _prologue(wi, gi, clip_scale, norm, reg, local_decay, form, zero_fill, exact)
    u, ok1 = _pow2(gi, exact)
    hi = axpby(one_minus_momentum, u, momentum, hi, form, zero_fill, exact)
    u = caffe_add(delta, h2i, sw, exact) / caffe_add(delta, hi, sw, exact)
    u, ok2 = _pow_half(u, exact)
    gi = caffe_mul(gi, u, sw, exact)
    u, ok3 = _pow2(gi, exact)
    h2i = axpby(one_minus_momentum, u, momentum, h2i, form, zero_fill, exact)
    gi = scal(local_rate, gi, zero_fill, exact)
    return net_update(wi, gi, form, exact), gi, hi, h2i, ok1 & ok2 & ok3


@_element
def _adadelta_block(ws, gs, hs, h2s, w0, g0, h0, h20, ok, b, sv, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, nan):
    """``_adadelta_range``'s vectorized pass over one block: results, the inputs kept in ``w0, g0, h0, h20``, ``ok`` flags."""
    for j in range(ws.size):
        wi, gi, hi, h2i = ws[j], gs[j], hs[j], h2s[j]
        w0[j], g0[j], h0[j], h20[j] = wi, gi, hi, h2i
        ws[j], gs[j], hs[j], h2s[j], certain = _adadelta_element(
            wi, gi, hi, h2i, b + j == sv, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, False)
        ok[j] = certain & (not (nan | (wi != wi) | (gi != gi) | (hi != hi) | (h2i != h2i)))


@_range
def _adadelta_range(w, g, h, h2, sv, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, nan):
    """Elements of ``adadelta_update`` block by block (``sv``: swapped elements' indices here, or -1).

    Without clipping and with ``iter_size`` 1 (``clip_scale == norm == 1``)
    the vectorized pass runs with literal ones, which LLVM folds away.
    """
    w0 = np.empty(_BLOCK, w.dtype)
    g0 = np.empty(_BLOCK, w.dtype)
    h0 = np.empty(_BLOCK, w.dtype)
    h20 = np.empty(_BLOCK, w.dtype)
    words = np.full(_BLOCK // 8, _ALL_CERTAIN, np.uint64)
    ok = words.view(np.uint8)
    one = w.dtype.type(1)
    plain = (clip_scale == 1) & (norm == 1)
    for b in range(0, w.size, _BLOCK):
        ws, gs, hs, h2s = w[b:b + _BLOCK], g[b:b + _BLOCK], h[b:b + _BLOCK], h2[b:b + _BLOCK]
        if plain:
            _adadelta_block(ws, gs, hs, h2s, w0, g0, h0, h20, ok, b, sv, one, one, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, nan)
        else:
            _adadelta_block(ws, gs, hs, h2s, w0, g0, h0, h20, ok, b, sv, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill,
                          nan)
        for k in range((ws.size + 7) // 8):
            if words[k] != _ALL_CERTAIN:
                for j in range(8 * k, min(8 * k + 8, ws.size)):
                    if not ok[j]:  # a NaN input (NaN bookkeeping), else an uncertain powf
                        if nan | (w0[j] != w0[j]) | (g0[j] != g0[j]) | (h0[j] != h0[j]) | (h20[j] != h20[j]):
                            ws[j], gs[j], hs[j], h2s[j], _ = _adadelta_element(
                                w0[j], g0[j], h0[j], h20[j], b + j == sv, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, True)
                        else:
                            ws[j], gs[j], hs[j], h2s[j], _ = _adadelta_element(
                                w0[j], g0[j], h0[j], h20[j], b + j == sv, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, _GLIBC_POW)


@_element
def _adam_element(wi, gi, mi, vi, ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1,
                  beta2, one_minus_beta2, eps_hat, form, zero_fill, exact):
    gi = _prologue(wi, gi, clip_scale, norm, reg, local_decay, form, zero_fill, exact)
    mi = axpby(one_minus_beta1, gi, beta1, mi, form, zero_fill, exact)
    vi = axpby(one_minus_beta2, gi * gi, beta2, vi, form, zero_fill, exact)
    t, ok = _pow_half(vi, exact)
    t = mi / caffe_add_scalar(eps_hat, t, ss, exact)
    gi = scal(rate_correction, t, zero_fill, exact)
    return net_update(wi, gi, form, exact), gi, mi, vi, ok


@_element
def _adam_block(ws, gs, ms, vs, w0, g0, m0, v0, ok, b, ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, nan):
    """``_adam_range``'s vectorized pass over one block: results, the inputs kept in ``w0, g0, m0, v0``, ``ok`` flags."""
    for j in range(ws.size):
        wi, gi, mi, vi = ws[j], gs[j], ms[j], vs[j]
        w0[j], g0[j], m0[j], v0[j] = wi, gi, mi, vi
        ws[j], gs[j], ms[j], vs[j], certain = _adam_element(
            wi, gi, mi, vi, b + j == ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, False)
        ok[j] = certain & (not (nan | (wi != wi) | (gi != gi) | (mi != mi) | (vi != vi)))


@_range
def _adam_range(w, g, m, v, ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, nan):
    """Elements of ``adam_update`` block by block (``ss``: swapped elements' indices here, or -1).

    Without clipping and with ``iter_size`` 1 (``clip_scale == norm == 1``)
    the vectorized pass runs with literal ones, which LLVM folds away.
    """
    w0 = np.empty(_BLOCK, w.dtype)
    g0 = np.empty(_BLOCK, w.dtype)
    m0 = np.empty(_BLOCK, w.dtype)
    v0 = np.empty(_BLOCK, w.dtype)
    words = np.full(_BLOCK // 8, _ALL_CERTAIN, np.uint64)
    ok = words.view(np.uint8)
    one = w.dtype.type(1)
    plain = (clip_scale == 1) & (norm == 1)
    for b in range(0, w.size, _BLOCK):
        ws, gs, ms, vs = w[b:b + _BLOCK], g[b:b + _BLOCK], m[b:b + _BLOCK], v[b:b + _BLOCK]
        if plain:
            _adam_block(ws, gs, ms, vs, w0, g0, m0, v0, ok, b, ss, one, one, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, nan)
        else:
            _adam_block(ws, gs, ms, vs, w0, g0, m0, v0, ok, b, ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill,
                          nan)
        for k in range((ws.size + 7) // 8):
            if words[k] != _ALL_CERTAIN:
                for j in range(8 * k, min(8 * k + 8, ws.size)):
                    if not ok[j]:  # a NaN input (NaN bookkeeping), else an uncertain powf
                        if nan | (w0[j] != w0[j]) | (g0[j] != g0[j]) | (m0[j] != m0[j]) | (v0[j] != v0[j]):
                            ws[j], gs[j], ms[j], vs[j], _ = _adam_element(
                                w0[j], g0[j], m0[j], v0[j], b + j == ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, True)
                        else:
                            ws[j], gs[j], ms[j], vs[j], _ = _adam_element(
                                w0[j], g0[j], m0[j], v0[j], b + j == ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, _GLIBC_POW)


# ---------------------------------------------------------------------------
# serial twins: one thread, one pass over the whole array
#
# The same element code in one loop over the blob, no chunks. The parallel
# kernels below call them for short arrays; for long ones they split the
# array into chunks over numba's threads, which must give the same bits (the
# tests compare the two). ``SERIAL``/``PARALLEL`` map solver types to them.
# ---------------------------------------------------------------------------
@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, {_PROFILE})")
def sgd_update_serial(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill):
    """``sgd_update`` on one thread."""
    _sgd_range(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill)


@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def nesterov_update_serial(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum,
                           neg_momentum, form, zero_fill):
    """``nesterov_update`` on one thread."""
    _nesterov_range(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum,
                    neg_momentum, form, zero_fill)


@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, {_PROFILE})")
def adagrad_update_serial(w, g, h, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill):
    """``adagrad_update`` on one thread."""
    n = w.size
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (local_rate != local_rate) | (delta != delta))
    _adagrad_range(w, g, h, tail_swap_index(n, 7), tail_swap_index(n, 3), clip_scale, norm, reg, local_decay,
                   local_rate, delta, form, zero_fill, nan)


@_jit(f"void(A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def rmsprop_update_serial(w, g, h, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay,
                          delta, form, zero_fill):
    """``rmsprop_update`` on one thread."""
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (local_rate != local_rate) | (rms_decay != rms_decay) | (one_minus_rms_decay != one_minus_rms_decay) | (delta != delta))
    _rmsprop_range(w, g, h, tail_swap_index(w.size, 3), clip_scale, norm, reg, local_decay, local_rate, rms_decay,
                   one_minus_rms_decay, delta, form, zero_fill, nan)


@_jit(f"void(A, A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def adadelta_update_serial(w, g, h, h2, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum,
                           delta, form, zero_fill):
    """``adadelta_update`` on one thread."""
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (local_rate != local_rate) | (momentum != momentum) | (one_minus_momentum != one_minus_momentum) | (delta != delta))
    _adadelta_range(w, g, h, h2, tail_swap_index(w.size, 7), clip_scale, norm, reg, local_decay, local_rate, momentum,
                    one_minus_momentum, delta, form, zero_fill, nan)


@_jit(f"void(A, A, A, A, {_PROLOGUE}, S, S, S, S, S, S, {_PROFILE})")
def adam_update_serial(w, g, m, v, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2,
                       one_minus_beta2, eps_hat, form, zero_fill):
    """``adam_update`` on one thread."""
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (rate_correction != rate_correction) | (beta1 != beta1) | (one_minus_beta1 != one_minus_beta1) | (beta2 != beta2) | (one_minus_beta2 != one_minus_beta2) | (eps_hat != eps_hat))
    _adam_range(w, g, m, v, tail_swap_index(w.size, 3), clip_scale, norm, reg, local_decay, rate_correction, beta1,
                one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, nan)


# ---------------------------------------------------------------------------
# solver kernels: prologue, ComputeUpdateValue, Net::Update, fused per element
# ---------------------------------------------------------------------------
@_pjit(f"void(A, A, A, {_PROLOGUE}, S, S, {_PROFILE})")
def sgd_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill):
    """SGD with momentum (``SGDSolver::ComputeUpdateValue``, CPU).

    Caffe: ``caffe_cpu_axpby(local_rate, g, momentum, h)``; ``g = h``;
    ``w -= g``.

    Per element, all float: ``h = fma(local_rate, g, fl(momentum*h))``
    (fused) or ``fl(fl(momentum*h) + fl(local_rate*g))``; ``g = h``;
    ``w = fl(w - g)``. FMA: the saxpy half of axpby, and L2 decay.
    """
    n = w.size
    if n < _PARALLEL_MIN:
        _sgd_range(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill)
        return
    nchunks, per = _chunks(n)
    for c in numba.prange(nchunks):
        s = slice(c * per, (c + 1) * per)
        _sgd_range(w[s], g[s], h[s], clip_scale, norm, reg, local_decay, local_rate, momentum, form, zero_fill)


@_pjit(f"void(A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def nesterov_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum,
                    neg_momentum, form, zero_fill):
    """Nesterov momentum (``NesterovSolver::ComputeUpdateValue``, CPU).

    Caffe: ``u = h``; ``caffe_cpu_axpby(local_rate, g, momentum, h)``;
    ``caffe_cpu_axpby(fl(1+momentum), h, -momentum, u)``; ``g = u``;
    ``w -= g``.

    Per element, all float: ``h' = fma(local_rate, g, fl(momentum*h))``;
    ``u = fma(one_plus_momentum, h', fl(neg_momentum*h))`` (each fma is
    ``fl(fl(..)+fl(..))`` when not fused); ``g = u``; ``w = fl(w - u)``.
    ``one_plus_momentum = fl(1+momentum)``, ``neg_momentum = -momentum``.
    """
    n = w.size
    if n < _PARALLEL_MIN:
        _nesterov_range(w, g, h, clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form, zero_fill)
        return
    nchunks, per = _chunks(n)
    for c in numba.prange(nchunks):
        s = slice(c * per, (c + 1) * per)
        _nesterov_range(w[s], g[s], h[s], clip_scale, norm, reg, local_decay, local_rate, momentum, one_plus_momentum, neg_momentum, form, zero_fill)


@_pjit(f"void(A, A, A, {_PROLOGUE}, S, S, {_PROFILE})")
def adagrad_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill):
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
    n = w.size
    sv = tail_swap_index(n, 7)
    ss = tail_swap_index(n, 3)
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (local_rate != local_rate) | (delta != delta))
    if n < _PARALLEL_MIN:
        _adagrad_range(w, g, h, sv, ss, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill, nan)
        return
    nchunks, per = _chunks(n)
    for c in numba.prange(nchunks):
        s = slice(c * per, (c + 1) * per)
        _adagrad_range(w[s], g[s], h[s], sv - c * per, ss - c * per, clip_scale, norm, reg, local_decay, local_rate, delta, form, zero_fill, nan)


@_pjit(f"void(A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def rmsprop_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta,
                   form, zero_fill):
    """RMSProp (``RMSPropSolver::ComputeUpdateValue``, CPU).

    Caffe: ``u = powx(g, 2)``; ``caffe_cpu_axpby(fl(1-rms_decay), u,
    rms_decay, h)``; ``u = powx(h, 0.5)``; ``u += delta``; ``u = g / u``;
    ``caffe_cpu_axpby(local_rate, u, 0, g)``; ``w -= g``.

    Per element, all float: ``h = fma(one_minus_rms_decay, powf(g, 2),
    fl(rms_decay*h))``; ``u = fl(g / fl(powf(h, 0.5) + delta))``;
    ``g = fma(local_rate, u, sscal(0, g))``; ``w = fl(w - g)``.
    """
    n = w.size
    ss = tail_swap_index(n, 3)
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (local_rate != local_rate) | (rms_decay != rms_decay) | (one_minus_rms_decay != one_minus_rms_decay) | (delta != delta))
    if n < _PARALLEL_MIN:
        _rmsprop_range(w, g, h, ss, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, nan)
        return
    nchunks, per = _chunks(n)
    for c in numba.prange(nchunks):
        s = slice(c * per, (c + 1) * per)
        _rmsprop_range(w[s], g[s], h[s], ss - c * per, clip_scale, norm, reg, local_decay, local_rate, rms_decay, one_minus_rms_decay, delta, form, zero_fill, nan)


@_pjit(f"void(A, A, A, A, {_PROLOGUE}, S, S, S, S, {_PROFILE})")
def adadelta_update(w, g, h, h2, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta,
                    form, zero_fill):
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
    n = w.size
    sv = tail_swap_index(n, 7)
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (local_rate != local_rate) | (momentum != momentum) | (one_minus_momentum != one_minus_momentum) | (delta != delta))
    if n < _PARALLEL_MIN:
        _adadelta_range(w, g, h, h2, sv, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, nan)
        return
    nchunks, per = _chunks(n)
    for c in numba.prange(nchunks):
        s = slice(c * per, (c + 1) * per)
        _adadelta_range(w[s], g[s], h[s], h2[s], sv - c * per, clip_scale, norm, reg, local_decay, local_rate, momentum, one_minus_momentum, delta, form, zero_fill, nan)


@_pjit(f"void(A, A, A, A, {_PROLOGUE}, S, S, S, S, S, S, {_PROFILE})")
def adam_update(w, g, m, v, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2,
                one_minus_beta2, eps_hat, form, zero_fill):
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
    n = w.size
    ss = tail_swap_index(n, 3)
    nan = ((clip_scale != clip_scale) | (norm != norm) | (local_decay != local_decay) | (rate_correction != rate_correction) | (beta1 != beta1) | (one_minus_beta1 != one_minus_beta1) | (beta2 != beta2) | (one_minus_beta2 != one_minus_beta2) | (eps_hat != eps_hat))
    if n < _PARALLEL_MIN:
        _adam_range(w, g, m, v, ss, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, nan)
        return
    nchunks, per = _chunks(n)
    for c in numba.prange(nchunks):
        s = slice(c * per, (c + 1) * per)
        _adam_range(w[s], g[s], m[s], v[s], ss - c * per, clip_scale, norm, reg, local_decay, rate_correction, beta1, one_minus_beta1, beta2, one_minus_beta2, eps_hat, form, zero_fill, nan)


#: the kernel of each solver type: ``PARALLEL`` (threads for blobs of _PARALLEL_MIN elements and more) and
#: ``SERIAL`` (one thread); the two give the same bits
PARALLEL = {"SGD": sgd_update, "Nesterov": nesterov_update, "AdaGrad": adagrad_update, "RMSProp": rmsprop_update,
            "AdaDelta": adadelta_update, "Adam": adam_update}
SERIAL = {"SGD": sgd_update_serial, "Nesterov": nesterov_update_serial, "AdaGrad": adagrad_update_serial,
          "RMSProp": rmsprop_update_serial, "AdaDelta": adadelta_update_serial, "Adam": adam_update_serial}


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
