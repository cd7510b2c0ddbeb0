"""ULP distance, tolerances and first divergence."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import harness.compare as C
from harness.compare import (
    EXACT,
    LOG_PRINT,
    ONE_ULP,
    Tolerance,
    first_divergence,
    get_tolerance,
    log_float_matches,
    log_float_text,
    summarize,
    ulp_distance,
)

f32 = np.float32
floats32 = st.floats(width=32, allow_nan=False, allow_infinity=False).map(f32)


def steps_between(a: np.float32, b: np.float32, limit: int = 64) -> int:
    """Walk from a to b with nextafter (the obvious definition), -0 counted as its own step."""
    if a.view(np.uint32) == b.view(np.uint32):
        return 0
    lo, hi = (a, b) if (a < b or (a == b and np.signbit(a))) else (b, a)
    n = 0
    x = lo
    while x.view(np.uint32) != hi.view(np.uint32):
        if x == 0 and np.signbit(x):
            x = f32(0.0)
        else:
            x = np.nextafter(x, f32(np.inf))
            if x == 0:
                x = f32(-0.0)  # nextafter(-den, +inf) lands on -0
        n += 1
        assert n <= limit
    return n


def test_public_api():
    for name in C.__all__:
        assert hasattr(C, name), name


@given(floats32, st.integers(-20, 20))
def test_ulp_distance_counts_steps(x, k):
    y = x
    for _ in range(abs(k)):
        y = np.nextafter(y, f32(np.inf) if k > 0 else f32(-np.inf))
    if not np.isfinite(y):
        return
    d = ulp_distance(x, y)
    assert d == steps_between(x, y)
    assert d == ulp_distance(y, x)


@pytest.mark.parametrize("a,b,d", [
    (0.0, -0.0, 1),
    (1e-45, -1e-45, 3),
    (1.0, 1.0, 0),
    (np.inf, np.inf, 0),
    (np.inf, 3.4028235e38, np.inf),
    (np.nan, 1.0, np.inf),
    (1.0, np.nan, np.inf),
])
def test_ulp_distance_specials(a, b, d):
    assert ulp_distance(f32(a), f32(b)) == d


def test_nan_equal_only_with_same_bits():
    nan = f32(np.nan)
    other = np.array([0x7FC00001], np.uint32).view(np.float32)[0]
    neg = np.array([0xFFC00000], np.uint32).view(np.float32)[0]
    assert ulp_distance(nan, f32(np.nan)) == 0
    assert ulp_distance(nan, other) == np.inf
    assert ulp_distance(nan, neg) == np.inf
    assert EXACT.accepts(nan, f32(np.nan))
    assert not EXACT.accepts(nan, neg)


def test_ulp_distance_float64():
    one = np.float64(1)
    assert ulp_distance(one, np.nextafter(one, 2.0)) == 1
    assert ulp_distance(np.float64(-0.0), np.float64(0.0)) == 1
    assert ulp_distance(np.float64(-5e-324), np.float64(5e-324)) == 3


def test_ulp_distance_arrays_and_shapes():
    a = np.array([[1, 2], [3, 4]], np.float32)
    b = a.copy()
    b[1, 0] = np.nextafter(b[1, 0], f32(9))
    assert ulp_distance(a, b).tolist() == [[0, 0], [1, 0]]
    with pytest.raises(ValueError, match="shapes differ"):
        ulp_distance(a, a.ravel())


def test_exact_means_identical_bits():
    assert EXACT.exact
    assert EXACT.accepts(f32(1.5), f32(1.5))
    assert not EXACT.accepts(f32(0.0), f32(-0.0))
    assert not EXACT.accepts(f32(1), np.nextafter(f32(1), f32(2)))
    assert ONE_ULP.accepts(f32(1), np.nextafter(f32(1), f32(2)))
    assert not ONE_ULP.accepts(f32(1), f32(1.0000003))


def test_absolute_floor_crosses_zero():
    tol = Tolerance(atol=1e-30)
    assert tol.accepts(f32(1e-31), f32(-1e-31))
    assert not EXACT.accepts(f32(1e-31), f32(-1e-31))
    assert not tol.accepts(f32(np.inf), f32(np.nan))  # inf vs NaN never inside a band


@pytest.mark.parametrize("kw,field", [
    (dict(max_ulp=-1), "max_ulp"),
    (dict(max_ulp=1.5), "max_ulp"),
    (dict(rtol=-1e-3), "rtol"),
    (dict(atol=float("nan")), "atol"),
])
def test_tolerance_validates_arguments(kw, field):
    with pytest.raises(ValueError, match=field):
        Tolerance(**kw)


def test_tolerance_is_frozen_data():
    with pytest.raises(Exception):
        EXACT.max_ulp = 3  # type: ignore[misc]
    assert get_tolerance("log-print") is LOG_PRINT
    assert get_tolerance(ONE_ULP) is ONE_ULP
    with pytest.raises(KeyError, match="known"):
        get_tolerance("loose")
    assert EXACT.describe() == "exact"


@given(floats32)
def test_log_print_accepts_every_printed_value(v):
    """Reading back glog's 6-digit text is always within LOG_PRINT of the value."""
    text = log_float_text(v)
    back = f32(float(text))
    assert LOG_PRINT.accepts(back, v)
    assert log_float_matches(text, v)


def test_log_print_rejects_a_seventh_digit_error():
    assert not LOG_PRINT.accepts(f32(1.0), f32(1.00002))
    assert LOG_PRINT.accepts(f32(1e-4), f32(1.00000005e-04))


def test_log_float_text_is_cplusplus_ostream():
    assert log_float_text(f32(0.0001)) == "0.0001"
    assert log_float_text(f32(1.0)) == "1"
    assert log_float_text(f32(1e-5)) == "1e-05"
    assert log_float_text(f32(123456789.0)) == "1.23457e+08"
    assert log_float_text(-f32(np.nan)) == "-nan"
    assert log_float_text(f32(-np.inf)) == "-inf"
    assert log_float_matches(" 0.0001 ", f32(9.99999975e-05))
    assert not log_float_matches("0.000100001", f32(1e-4))


def test_first_divergence():
    e = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert first_divergence(e, e.copy()) is None
    g = e.copy()
    g[1, 1] = np.nextafter(g[1, 1], f32(9))
    g[1, 2] = 99
    d = first_divergence(e, g)
    assert (d.index, d.expected, d.ulps) == (4, 4.0, 1.0)
    assert first_divergence(e, g, ONE_ULP).index == 5
    idx, exp, got, ulps = first_divergence(e, g, ONE_ULP)
    assert (exp, got) == (5.0, 99.0)
    with pytest.raises(ValueError):
        first_divergence(e, g.ravel())


def test_summarize():
    e = np.ones(10, np.float32)
    g = e.copy()
    g[3] = np.nextafter(f32(1), f32(2))
    s = summarize(e, g)
    assert (s.count, s.mismatched, s.max_ulp, s.first.index) == (10, 1, 1.0, 3)
    assert summarize(e, g, ONE_ULP).first is None
