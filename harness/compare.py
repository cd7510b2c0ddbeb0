"""Comparing numbers: ULP distance, tolerances as data, first divergence.

A ``Tolerance(max_ulp, rtol, atol)`` is chosen by where the expected numbers
came from, never sprinkled as literals: snapshot floats are compared in ULPs
(``EXACT`` for a bit-exact claim), numbers read back from a log's text with
``LOG_PRINT`` (glog prints ``%g``: 6 significant digits). An element is
accepted when its bits are identical, or when

* its ULP distance is at most ``max_ulp``, or
* ``|expected - got| <= atol + rtol * |expected|`` (the absolute floor makes
  values straddling zero comparable).

ULP distance (``ulp_distance``) counts the representable floats between two
values of the same dtype (float32 or float64): +0 and -0 are **distinct
neighbours** (distance 1), so ``EXACT`` means identical bits. A NaN is at
distance 0 from a NaN with the same bits and infinitely far from anything
else (a NaN with other bits included); an infinity is infinitely far from
every other value. Distances are returned as float64 (exact integers, ``inf``
for those cases).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

__all__ = [
    "Tolerance",
    "EXACT",
    "ONE_ULP",
    "LOG_PRINT",
    "TOLERANCES",
    "get_tolerance",
    "ulp_distance",
    "Divergence",
    "first_divergence",
    "Comparison",
    "summarize",
    "log_float_text",
    "log_float_matches",
]


@dataclass(frozen=True)
class Tolerance:
    """How far ``got`` may be from ``expected``: ULPs, or a relative/absolute band.

    Arguments are validated: ``max_ulp`` a whole number >= 0, ``rtol`` and
    ``atol`` finite and >= 0.
    """

    max_ulp: int = 0
    rtol: float = 0.0
    atol: float = 0.0

    def __post_init__(self):
        if isinstance(self.max_ulp, bool) or int(self.max_ulp) != self.max_ulp or self.max_ulp < 0:
            raise ValueError(f"max_ulp must be a whole number >= 0, got {self.max_ulp!r}")
        for name in ("rtol", "atol"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {v!r}")
        object.__setattr__(self, "max_ulp", int(self.max_ulp))

    @property
    def exact(self) -> bool:
        """True when only identical bits are accepted."""
        return self.max_ulp == 0 and self.rtol == 0 and self.atol == 0

    def accepts(self, expected, got, ulps=None):
        """Element-wise acceptance (a bool for scalars, a bool array otherwise).

        ``ulps`` may pass precomputed ``ulp_distance(expected, got)``.
        """
        e, g = _pair(expected, got)
        u = ulp_distance(e, g) if ulps is None else np.asarray(ulps, dtype=np.float64)
        ok = np.asarray(u) <= self.max_ulp
        if self.rtol or self.atol:
            with np.errstate(all="ignore"):
                ef = e.astype(np.float64)
                gf = g.astype(np.float64)
                band = np.abs(ef - gf) <= self.atol + self.rtol * np.abs(ef)
            ok = ok | (band & np.isfinite(ef) & np.isfinite(gf))
        return bool(ok) if ok.ndim == 0 else ok

    def describe(self) -> str:
        """A short human-readable form, e.g. ``exact`` or ``<= 2 ulp or |d| <= 1e-07``."""
        if self.exact:
            return "exact"
        parts = [f"<= {self.max_ulp} ulp"] if self.max_ulp else []
        if self.rtol or self.atol:
            band = " + ".join(s for s in (f"{self.atol:g}" if self.atol else "",
                                          f"{self.rtol:g}*|expected|" if self.rtol else "") if s)
            parts.append(f"|d| <= {band}")
        return " or ".join(parts)


#: Identical bits (NaN only equal to the same NaN).
EXACT = Tolerance()
#: One float step (e.g. a port that rounds one operation differently).
ONE_ULP = Tolerance(max_ulp=1)
#: A value printed by glog with ``%g`` (6 significant digits) and read back
#: as the nearest float32: the text is within half a unit in its 6th digit,
#: ``0.5e-5`` of itself, and reading it back adds ``2**-24`` relative; the
#: bound is taken relative to the read-back value (``2**-23`` covers both).
LOG_PRINT = Tolerance(rtol=0.5e-5 + 2.0**-23)

TOLERANCES = {"exact": EXACT, "one-ulp": ONE_ULP, "log-print": LOG_PRINT}


def get_tolerance(name: str | Tolerance) -> Tolerance:
    """A named tolerance (``KeyError`` lists the known names)."""
    if isinstance(name, Tolerance):
        return name
    try:
        return TOLERANCES[name]
    except KeyError:
        raise KeyError(f"unknown tolerance {name!r} (known: {', '.join(TOLERANCES)})") from None


def _pair(expected, got):
    e = np.asarray(expected)
    g = np.asarray(got)
    if e.dtype not in (np.float32, np.float64):
        e = e.astype(np.float32) if g.dtype != np.float64 else e.astype(np.float64)
    if g.dtype != e.dtype:
        g = g.astype(e.dtype)
    if e.shape != g.shape:
        raise ValueError(f"shapes differ: expected {e.shape}, got {g.shape}")
    return e, g


def _ordered(a: np.ndarray) -> np.ndarray:
    """Map floats to int64 keys in value order, -0 just below +0."""
    if a.dtype == np.float32:
        b = a.view(np.uint32).astype(np.int64)
        sign = np.int64(1) << 31
        return np.where(b >= sign, -(b - sign) - 1, b)
    b = a.view(np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    neg = b >= sign
    mag = np.where(neg, b - sign, b).astype(np.int64)
    return np.where(neg, -mag - 1, mag)


def ulp_distance(a, b) -> np.ndarray | float:
    """Number of representable floats between ``a`` and ``b`` (same dtype).

    float32 or float64 (other inputs are taken as float32). +0/-0 are at
    distance 1; identical NaNs at 0; NaN vs anything else and an infinity
    vs any other value at ``inf``. Returns a float64 array (a float for
    scalars).
    """
    a, b = _pair(a, b)
    same = _bits(a) == _bits(b)
    ka = _ordered(a)
    kb = _ordered(b)
    with np.errstate(all="ignore"):
        # same side of zero: exact int64 difference; across zero: float64 (exact below 2**53)
        d = np.where((ka >= 0) == (kb >= 0), np.abs(ka - kb).astype(np.float64),
                     np.abs(ka.astype(np.float64) - kb.astype(np.float64)))
    special = (np.isnan(a) | np.isnan(b) | np.isinf(a) | np.isinf(b)) & ~same
    d = np.where(special, np.inf, d)
    d = np.where(same, 0.0, d)
    return float(d) if d.ndim == 0 else d


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


class Divergence(NamedTuple):
    """The first element outside the tolerance: flat (C-order) index, values, ULPs."""

    index: int
    expected: float
    got: float
    ulps: float


def first_divergence(expected, got, tolerance: Tolerance = EXACT) -> Divergence | None:
    """The first element (C order) where ``got`` is outside ``tolerance``, or ``None``.

    Raises ``ValueError`` when the shapes differ.
    """
    e, g = _pair(expected, got)
    e = e.reshape(-1)
    g = g.reshape(-1)
    u = ulp_distance(e, g)
    ok = tolerance.accepts(e, g, u)
    if np.all(ok):
        return None
    i = int(np.argmin(ok))
    return Divergence(i, e[i].item(), g[i].item(), float(u[i]))


class Comparison(NamedTuple):
    """Summary of one array comparison."""

    count: int
    mismatched: int
    max_ulp: float
    first: Divergence | None


def _identical(e: np.ndarray, g: np.ndarray, chunk: int = 1 << 20) -> bool:
    """Whether two same-shape arrays hold the same bits (chunked: no array-sized temporaries)."""
    be, bg = _bits(e), _bits(g)
    return all(np.array_equal(be[k:k + chunk], bg[k:k + chunk]) for k in range(0, be.size, chunk))


def summarize(expected, got, tolerance: Tolerance = EXACT) -> Comparison:
    """How many elements are compared and rejected, the worst ULP distance, the first divergence.

    Identical bits (the usual case of a conformant run) are recognised
    first, at memory speed; only arrays that differ get ULP distances.
    """
    e, g = _pair(expected, got)
    e = e.reshape(-1)
    g = g.reshape(-1)
    if _identical(e, g):
        return Comparison(int(e.size), 0, 0.0, None)
    u = ulp_distance(e, g)
    ok = tolerance.accepts(e, g, u)
    bad = int(np.size(ok) - np.count_nonzero(ok))
    first = None
    if bad:
        i = int(np.argmin(ok))
        first = Divergence(i, e[i].item(), g[i].item(), float(u[i]))
    return Comparison(int(e.size), bad, float(u.max()) if u.size else 0.0, first)


def log_float_text(value) -> str:
    """How Caffe's glog prints a float: C++ ``ostream << float`` (``%g``, 6 digits).

    NaN prints as ``nan``/``-nan`` by its sign bit, as glibc's printf does.
    """
    x = float(np.float32(value)) if not isinstance(value, (float, np.float64)) else float(value)
    if x != x:
        return "-nan" if np.signbit(x) else "nan"
    if x in (float("inf"), float("-inf")):
        return "inf" if x > 0 else "-inf"
    return "%g" % x


def log_float_matches(text: str, value) -> bool:
    """True when Caffe would print ``value`` (a float32) as ``text``.

    Exact and stricter than ``LOG_PRINT``: the 6-digit text must be the
    very rounding of ``value``.
    """
    return log_float_text(np.float32(value)) == str(text).strip()
