"""Exact float32 building blocks for the numpy emulation of Caffe's update.

Private to ``harness.ports``. Everything here is elementwise numpy (no numba,
nothing to compile), exact to the bit:

* ``fma(a, b, c)``: ``a*b + c`` rounded once to float32. ``a*b`` is exact in
  float64 (24+24 < 53 bits); where the float64 sum lands exactly on a float32
  midpoint it is redone *round-to-odd* with TwoSum, after which rounding to
  float32 is correct -- a plain float64 route would round twice there
  (``fmaf(1+2^-23, 1.5, -2^-80)``, CAFFE_ORACLE.md).
* ``powf(x, y)``, ``expf(x)``: glibc's own functions through ctypes, element
  by element (never ``np.power``: its SVML path differs from glibc ``powf``
  on 20% of inputs).
* ``sdot_openblas(x)``, ``sdot_sequential(x)``, ``sdot_atlas(x)``,
  ``sdot_float64(x)``: ``sdot(x, x)`` in the summation orders Caffe's
  clipping norm depends on (OpenBLAS Haswell kernel, reference BLAS, ATLAS,
  and a double-precision dot product).
"""

from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np

__all__ = ["fma", "powf", "expf", "pow64", "sdot_openblas", "sdot_sequential", "sdot_atlas", "sdot_float64", "f32"]

_F32 = np.float32
_LIBM = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")


def _libm(names, ctype, nargs):
    for name in names:
        f = getattr(_LIBM, name, None)
        if f is not None:
            f.restype = ctype
            f.argtypes = [ctype] * nargs
            return f
    raise ImportError(f"libm has none of {names}")


_c_powf = _libm(("powf32", "powf"), ctypes.c_float, 2)
_c_expf = _libm(("expf32", "expf"), ctypes.c_float, 1)
_c_pow = _libm(("powf64", "pow"), ctypes.c_double, 2)
_powf_ufunc = np.frompyfunc(_c_powf, 2, 1)


def f32(x) -> np.float32:
    """``x`` rounded to float32 (a numpy scalar)."""
    return _F32(x)


_MID_MASK = np.int64((1 << 29) - 1)  # the float64 mantissa bits below float32's last bit
_MID = np.int64(1 << 28)  # ... holding exactly half a float32 ulp
_TINY = 2.0**-125  # below this float32 is subnormal and the bit test does not apply


def fma(a, b, c):
    """``fl32(a*b + c)`` with one rounding, elementwise (float32 in, float32 out).

    ``a*b`` is exact in float64, so ``s = fl64(a*b + c)`` is the only float64
    rounding; rounding ``s`` on to float32 can only go wrong when ``s`` sits
    exactly on a float32 midpoint (or in float32's subnormal range). Those
    few elements are redone with TwoSum and round-to-odd.
    """
    with np.errstate(all="ignore"):
        p = np.multiply(a, b, dtype=np.float64)
        s = np.atleast_1d(np.add(p, c, dtype=np.float64))
        out = s.astype(np.float32)
        risky = ((s.view(np.int64) & _MID_MASK) == _MID) | (np.abs(s) < _TINY)
        if risky.any():
            pr = np.broadcast_to(p, s.shape)[risky]
            cr = np.broadcast_to(np.asarray(c, np.float64), s.shape)[risky]
            sr = s[risky]
            bb = sr - pr
            err = (pr - (sr - bb)) + (cr - bb)  # TwoSum: sr + err == a*b + c exactly
            fix = (err != 0) & ((sr.view(np.int64) & 1) == 0) & np.isfinite(sr)
            sr[fix] = np.nextafter(sr[fix], np.where(err[fix] > 0, np.inf, -np.inf))  # round to odd
            out[risky] = sr.astype(np.float32)
        out = out.reshape(np.shape(p))
    return out[()] if out.ndim == 0 else out


def powf(x, y):
    """glibc ``powf(x, y)`` elementwise (float32)."""
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.float32)
    out = np.asarray(_powf_ufunc(x, y), dtype=np.float32)
    return out[()] if out.ndim == 0 else out


def expf(x) -> np.float32:
    """glibc ``expf(x)`` of one float32."""
    return _F32(_c_expf(_F32(x)))


def pow64(x: float, y: float) -> float:
    """glibc ``pow(x, y)`` in double (what C++ ``std::pow(double, int)`` calls)."""
    return float(_c_pow(float(x), float(y)))


def sdot_sequential(x: np.ndarray) -> np.float32:
    """``sdot(x, x)`` as reference BLAS: a float sum of float-rounded products, in order."""
    x = np.ravel(np.asarray(x, np.float32))
    if not x.size:
        return _F32(0)
    # np.add.accumulate adds strictly left to right (np.sum is pairwise)
    return _F32(np.add.accumulate(x * x, dtype=np.float32)[-1])


def sdot_openblas(x: np.ndarray) -> np.float32:
    """``sdot(x, x)`` as OpenBLAS's Haswell kernel sums it (CAFFE_ORACLE.md).

    The first ``n - n % 32`` elements go to 4 accumulators of 8 float lanes
    (element ``32i + 8j + l`` is fused-multiply-added into lane ``l`` of
    accumulator ``j``); each accumulator's lanes 4..7 are added to lanes
    0..3, then ``(a0+a1) + (a2+a3)`` lane-wise, then ``(c0+c1) + (c2+c3)``;
    the last ``n % 32`` float products ``fl(x*x)`` are summed in double, the vector part is
    added last in double, and the result is rounded to float.
    """
    x = np.ravel(np.asarray(x, np.float32))
    n = x.size
    nv = n - n % 32
    tail = 0.0
    for v in (x[nv:] * x[nv:]).tolist():  # float products, summed in double
        tail += v
    if nv == 0:
        return _F32(tail)
    blocks = x[:nv].reshape(-1, 4, 8)
    acc = np.zeros((4, 8), np.float32)
    for blk in blocks:
        acc = fma(blk, blk, acc)
    half = acc[:, :4] + acc[:, 4:]
    lanes = (half[0] + half[1]) + (half[2] + half[3])
    vec = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
    return _F32(tail + float(vec))


def sdot_atlas(x: np.ndarray) -> np.float32:
    """``sdot(x, x)`` as Debian's ATLAS 3.10 sums it.

    Four float accumulators take the rounded products of the first
    ``4*(n//4)`` elements round-robin (element ``4i+j`` into accumulator
    ``j``, no FMA), combined as ``(d0+d1) + (d2+d3)``; the last ``n % 4``
    products are added one by one (order identified by the reference
    kernels' author from the ATLAS captures).
    """
    x = np.ravel(np.asarray(x, np.float32))
    n = x.size
    m = n - n % 4
    prod = x * x
    d = np.add.accumulate(prod[:m].reshape(-1, 4), axis=0, dtype=np.float32)[-1] if m else np.zeros(4, np.float32)
    s = (d[0] + d[1]) + (d[2] + d[3])
    for v in prod[m:]:
        s = _F32(s + v)
    return _F32(s)


def sdot_float64(x: np.ndarray) -> np.float32:
    """``sum(x*x)`` in float64 rounded once (a port using a double dot product)."""
    x = np.ravel(np.asarray(x, np.float32)).astype(np.float64)
    return _F32(float(np.dot(x, x)))
