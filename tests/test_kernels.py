"""Kernels against their slow twins (tests/naive.py), bit for bit.

Inputs mix ordinary values with the awkward ones: signed zeros, subnormals,
huge values, infinities, NaN, and values where glibc ``powf(x, 2)`` differs
from ``x*x`` or ``powf(x, 0.5)`` from ``sqrtf(x)`` (the literal-exponent
trap). NaN compares equal to NaN (payloads are not specified by C); every
other element must have identical bits, signed zeros included.
"""

from __future__ import annotations

import itertools
import math

import numba
import numpy as np
import pytest

import naive
from harness.kernels import lr_policy as L
from harness.kernels import update as K

f32 = np.float32
SPECIALS = np.array(
    [0.0, -0.0, 1e-45, -1e-45, 3e-39, -2e-40, 1e-38, 3e38, -3e38, np.inf, -np.inf, np.nan, 1.0, -1.0],
    dtype=np.float32,
)


def _find(pred, start: float, count: int) -> np.ndarray:
    """The first ``count`` floats from ``start`` upwards with ``pred(x)``."""
    out = []
    x = f32(start)
    while len(out) < count:
        if pred(x):
            out.append(x)
        x = np.nextafter(x, f32(np.inf))
    return np.array(out, dtype=np.float32)


#: floats where glibc powf(x, 2) != x*x and powf(x, 0.5) != sqrtf(x)
POW2_TRAP = _find(lambda x: naive.powf(x, 2) != f32(x * x), 1.0, 4)
SQRT_TRAP = np.array([f32(1 + k * 2.0**-12) for k in range(4096) if naive.powf(f32(1 + k * 2.0**-12), 0.5)
                      != np.sqrt(f32(1 + k * 2.0**-12))][:8], dtype=np.float32)


def same_bits(a, b) -> np.ndarray:
    """Element-wise: identical bits, or both NaN."""
    a = np.asarray(a)
    b = np.asarray(b)
    return (a.view(np.uint32 if a.dtype == np.float32 else np.uint64)
            == b.view(np.uint32 if b.dtype == np.float32 else np.uint64)) | (np.isnan(a) & np.isnan(b))


def assert_same_bits(expected, got, what=""):
    ok = same_bits(expected, got)
    if not ok.all():
        i = int(np.argmin(ok))
        raise AssertionError(f"{what}: {int((~ok).sum())} element(s) differ, first at {i}: "
                             f"expected {expected.flat[i]!r}, got {got.flat[i]!r}")


def mixed(rng, n, *, positive=False, specials=True) -> np.ndarray:
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-4, 3, n)).astype(np.float32)
    if specials:
        k = min(n // 4, SPECIALS.size)
        x[rng.choice(n, k, replace=False)] = rng.choice(SPECIALS, k)
    return np.abs(x) if positive else x


# ---------------------------------------------------------------------------
# fma / powf / expf
# ---------------------------------------------------------------------------
def test_fma_matches_exact_rounding():
    rng = np.random.default_rng(1)
    a, b, c = (mixed(rng, 400) for _ in range(3))
    # products that nearly cancel c, where a single rounding matters
    c[:100] = -(a[:100].astype(np.float64) * b[:100]).astype(np.float32)
    got = np.array([K.fma(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)
    want = np.array([naive.fma32(x, y, z) for x, y, z in zip(a, b, c)], dtype=np.float32)
    assert_same_bits(want, got, "fma")


def test_fma_is_single_rounding():
    # the case where emulating fmaf through double rounds twice
    a, b, c = f32(1 + 2.0**-23), f32(1.5), f32(-(2.0**-80))
    assert f32(K.fma(a, b, c)) == f32(1.5000001)
    assert naive.fma32(a, b, c) == f32(1.5000001)
    assert f32(np.float64(a) * np.float64(b) + np.float64(c)) != f32(1.5000001)


def test_fma_float64():
    rng = np.random.default_rng(2)
    vals = rng.standard_normal((50, 3))
    for a, b, c in vals:
        assert np.float64(K.fma(np.float64(a), np.float64(b), np.float64(c))) == naive.fma64(a, b, c)


@pytest.mark.parametrize("module", [K, L], ids=["update", "lr_policy"])
def test_powf_is_glibc(module):
    rng = np.random.default_rng(3)
    x = np.concatenate([mixed(rng, 300, positive=True), POW2_TRAP, SQRT_TRAP])
    for y in (f32(2), f32(0.5), f32(-0.75), f32(1.5)):
        got = np.array([module.powf(v, y) for v in x], dtype=np.float32)
        want = np.array([naive.powf(v, y) for v in x], dtype=np.float32)
        assert_same_bits(want, got, f"powf(x, {y})")


def test_literal_exponent_is_not_folded():
    """``powf(x, literal)`` inside a jitted function still calls glibc powf."""
    assert POW2_TRAP.size and SQRT_TRAP.size

    @numba.njit
    def literal_pows(x, out2, out_half):
        for i in range(x.size):
            out2[i] = K.powf(x[i], np.float32(2.0))
            out_half[i] = K.powf(x[i], np.float32(0.5))

    x = np.concatenate([POW2_TRAP, SQRT_TRAP])
    o2, oh = np.empty_like(x), np.empty_like(x)
    literal_pows(x, o2, oh)
    assert_same_bits(np.array([naive.powf(v, 2) for v in x], np.float32), o2, "powf(x, 2)")
    assert_same_bits(np.array([naive.powf(v, 0.5) for v in x], np.float32), oh, "powf(x, 0.5)")
    assert (o2[: POW2_TRAP.size] != POW2_TRAP * POW2_TRAP).all()
    assert (oh[POW2_TRAP.size:] != np.sqrt(SQRT_TRAP)).all()


@pytest.mark.parametrize("module", [K, L], ids=["update", "lr_policy"])
def test_expf_is_glibc(module):
    x = np.linspace(-100, 90, 777).astype(np.float32)
    got = np.array([module.expf(v) for v in x], dtype=np.float32)
    want = np.array([naive.expf(v) for v in x], dtype=np.float32)
    assert_same_bits(want, got, "expf")


def test_libm_blocks_are_identical():
    """update.py and lr_policy.py repeat one libm block; keep them in step."""
    import inspect

    def block(mod):
        src = inspect.getsource(mod)
        start = src.index("# libm access (repeated verbatim")
        start = src.index("\n", start)
        return src[start: src.index("# end of libm access")]

    assert block(K) == block(L)


# ---------------------------------------------------------------------------
# sumsq orders
# ---------------------------------------------------------------------------
SUMSQ = [
    (K.sumsq_openblas_haswell, naive.sdot_openblas_haswell),
    (K.sumsq_sequential, naive.sdot_sequential),
    (K.sumsq_atlas, naive.sdot_atlas),
]


@pytest.mark.parametrize("kernel,twin", SUMSQ, ids=["openblas-haswell", "sequential", "atlas"])
@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 31, 32, 33, 63, 64, 100, 1000])
def test_sumsq_matches_twin(kernel, twin, n):
    rng = np.random.default_rng(n)
    x = mixed(rng, n, specials=False)
    with np.errstate(all="ignore"):
        assert_same_bits(np.array([twin(x)]), np.array([kernel(x)], dtype=np.float32), kernel.__name__)


def test_sumsq_orders_differ():
    """The orders are really different (else the clipping tests prove nothing)."""
    rng = np.random.default_rng(5)
    kernels = (K.sumsq_openblas_haswell, K.sumsq_sequential, K.sumsq_atlas)
    differ = set()
    for _ in range(10):
        x = rng.standard_normal(5000).astype(np.float32)
        vals = [k(x) for k in kernels]
        differ |= {(i, j) for i, j in itertools.combinations(range(3), 2) if vals[i] != vals[j]}
    assert differ == {(0, 1), (0, 2), (1, 2)}


@pytest.mark.parametrize("kernel", [K.sumsq_openblas_haswell, K.sumsq_sequential, K.sumsq_atlas])
def test_sumsq_specials(kernel):
    for special in (np.inf, np.nan):
        x = np.ones(40, np.float32)
        x[7] = special
        with np.errstate(all="ignore"):
            r = kernel(x)
        assert np.isinf(r) if special == np.inf else np.isnan(r)


def test_sumsq_float64():
    x = np.random.default_rng(6).standard_normal(100)
    assert K.sumsq_float64(x) == sum(float(v) * float(v) for v in x)


# ---------------------------------------------------------------------------
# solver kernels
# ---------------------------------------------------------------------------
SOLVERS = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
BLASES = {"openblas": naive.OPENBLAS, "refblas": naive.REFBLAS, "atlas": naive.ATLAS}
# (clip_scale, iter_size, weight_decay, regularization, lr_mult)
PROLOGUES = {
    "plain": (1, 1, 0.0, "L2", 1.0),
    "l2": (1, 1, 0.01, "L2", 1.0),
    "l1-itersize": (1, 3, 0.02, "L1", 2.0),
    "clip-l2": (0.37, 1, 0.005, "L2", 0.5),
    "frozen": (1, 1, 0.01, "L2", 0.0),
    "clip-zero": (0.0, 2, 0.0, "L2", 1.0),
}


def run_kernel(solver, w, g, hist, blas, *, clip_scale, iter_size, weight_decay, regularization, lr_mult,
               rate, momentum, momentum2=0.999, rms_decay=0.98, delta=1e-8, iter=0):
    """Call the fused kernel the way harness.reference does."""
    local_decay = f32(f32(weight_decay) * f32(1))
    reg = K.REG_NONE if not local_decay else (K.REG_L2 if regularization == "L2" else K.REG_L1)
    norm = f32(1) if iter_size == 1 else f32(f32(1) / f32(iter_size))
    pro = (f32(clip_scale), norm, reg, local_decay)
    local_rate = f32(f32(rate) * f32(lr_mult))
    mu = f32(momentum)
    prof = (blas.fused, blas.zero_fill)
    if solver == "SGD":
        K.sgd_update(w, g, hist[0], *pro, local_rate, mu, *prof)
    elif solver == "Nesterov":
        K.nesterov_update(w, g, hist[0], *pro, local_rate, mu, f32(1 + mu), -mu, *prof)
    elif solver == "AdaGrad":
        K.adagrad_update(w, g, hist[0], *pro, local_rate, f32(delta), *prof)
    elif solver == "RMSProp":
        rho = f32(rms_decay)
        K.rmsprop_update(w, g, hist[0], *pro, local_rate, rho, f32(1 - rho), f32(delta), *prof)
    elif solver == "AdaDelta":
        K.adadelta_update(w, g, hist[0], hist[1], *pro, local_rate, mu, f32(1 - mu), f32(delta), *prof)
    elif solver == "Adam":
        b2 = f32(momentum2)
        corr = f32(K.adam_correction(np.float64(mu), np.float64(b2), np.float64(iter + 1)))
        K.adam_update(w, g, hist[0], hist[1], *pro, f32(local_rate * corr), mu, f32(1 - mu), b2, f32(1 - b2),
                      f32(delta), *prof)


@pytest.mark.parametrize("prologue", list(PROLOGUES))
@pytest.mark.parametrize("blas", list(BLASES))
@pytest.mark.parametrize("solver", SOLVERS)
def test_solver_kernel_matches_twin(solver, blas, prologue):
    seed = SOLVERS.index(solver) * 100 + list(BLASES).index(blas) * 10 + list(PROLOGUES).index(prologue)
    rng = np.random.default_rng(seed)
    n = 96
    w = mixed(rng, n)
    g = mixed(rng, n)
    g[:POW2_TRAP.size] = POW2_TRAP
    positive = solver in ("AdaGrad", "RMSProp", "AdaDelta", "Adam")
    hist = [mixed(rng, n, positive=positive) for _ in range(2 if solver in ("AdaDelta", "Adam") else 1)]
    hist[-1][-SQRT_TRAP.size:] = SQRT_TRAP
    clip_scale, iter_size, wd, regularization, lr_mult = PROLOGUES[prologue]
    kw = dict(clip_scale=clip_scale, iter_size=iter_size, weight_decay=wd, regularization=regularization,
              lr_mult=lr_mult, rate=0.0125, momentum=0.9 if solver not in ("AdaGrad", "RMSProp") else 0.0,
              rms_decay=0.98, iter=seed % 7)
    mine = [w.copy(), g.copy(), [h.copy() for h in hist]]
    theirs = [w.copy(), g.copy(), [h.copy() for h in hist]]
    with np.errstate(all="ignore"):
        run_kernel(solver, mine[0], mine[1], mine[2], BLASES[blas], **kw)
        naive.apply_update(solver, theirs[0], theirs[1], theirs[2], blas=BLASES[blas], **kw)
    assert_same_bits(theirs[1], mine[1], "diff")
    assert_same_bits(theirs[0], mine[0], "data")
    for k, (a, b) in enumerate(zip(theirs[2], mine[2])):
        assert_same_bits(a, b, f"history[{k}]")


@pytest.mark.parametrize("solver", SOLVERS)
def test_float64_kernels_run_in_double(solver):
    """The float64 signatures exist and compute in double (no float32 rounding)."""
    rng = np.random.default_rng(11)
    n = 16
    w = rng.standard_normal(n)
    g = rng.standard_normal(n)
    hist = [np.abs(rng.standard_normal(n)) for _ in range(2)]
    one = np.float64(1)
    pro = (one, one, K.REG_L2, np.float64(0.01))
    lr, mu = np.float64(0.1), np.float64(0.9)
    w0 = w.copy()
    if solver == "SGD":
        K.sgd_update(w, g, hist[0], *pro, lr, mu, False, 0)
    elif solver == "Nesterov":
        K.nesterov_update(w, g, hist[0], *pro, lr, mu, one + mu, -mu, False, 0)
    elif solver == "AdaGrad":
        K.adagrad_update(w, g, hist[0], *pro, lr, np.float64(1e-8), False, 0)
    elif solver == "RMSProp":
        K.rmsprop_update(w, g, hist[0], *pro, lr, mu, one - mu, np.float64(1e-8), False, 0)
    elif solver == "AdaDelta":
        K.adadelta_update(w, g, hist[0], hist[1], *pro, lr, mu, one - mu, np.float64(1e-8), False, 0)
    else:
        K.adam_update(w, g, hist[0], hist[1], *pro, lr, mu, one - mu, np.float64(0.999), np.float64(0.001),
                      np.float64(1e-8), False, 0)
    assert w.dtype == np.float64
    assert not np.array_equal(w, w0)
    # results are not all float32-representable: the arithmetic stayed in double
    assert (w.astype(np.float32).astype(np.float64) != w).any()


@pytest.mark.parametrize("t", [1, 2, 10, 1000, 100000])
def test_adam_correction(t):
    b1, b2 = np.float64(f32(0.9)), np.float64(f32(0.999))
    want = np.sqrt(1.0 - naive.pow64(b2, t)) / (1.0 - naive.pow64(b1, t))
    assert K.adam_correction(b1, b2, np.float64(t)) == want


def test_scal_zero_fill_semantics():
    """sscal(0) per profile: multiply (NaN stays, -0 appears) or write +0."""
    g = np.array([np.nan, -3.0, 2.0, np.inf], np.float32)
    for zero_fill, expect in (
        (K.SCAL_MULTIPLY, [np.nan, 0.0, 0.0, np.nan]),  # +0 + (-0) = +0 in the saxpy
        (K.SCAL_ZERO_FILL, [0.0, 0.0, 0.0, 0.0]),
        (K.SCAL_ZERO_FILL_NAN, [0.0, 0.0, 0.0, 0.0]),
    ):
        w = np.zeros(4, np.float32)
        gg = g.copy()
        h = np.zeros(4, np.float32)
        with np.errstate(all="ignore"):
            # clip_scale 0 reaches sscal(0, g); with momentum 0 and rate 1, h = sscal(0, h) + g'
            K.sgd_update(w, gg, h, f32(0), f32(1), K.REG_NONE, f32(0), f32(1), f32(0), False, zero_fill)
        assert_same_bits(np.array(expect, np.float32), h, f"zero_fill={zero_fill}")
    # NaN alpha: OpenBLAS 0.3.13 zero-fills, the others multiply
    for zero_fill, nan_out in ((K.SCAL_ZERO_FILL, True), (K.SCAL_ZERO_FILL_NAN, False)):
        w = np.zeros(4, np.float32)
        gg = np.ones(4, np.float32)
        h = np.zeros(4, np.float32)
        K.sgd_update(w, gg, h, f32(np.nan), f32(1), K.REG_NONE, f32(0), f32(1), f32(0), False, zero_fill)
        assert np.isnan(h).all() == nan_out


def test_kernels_are_not_fastmath():
    for kern in (K.sgd_update, K.adam_update, K.sumsq_atlas, L.rate_float32):
        if hasattr(kern, "targetoptions"):
            assert not kern.targetoptions.get("fastmath")


# ---------------------------------------------------------------------------
# parallel and serial kernels agree bit for bit
# ---------------------------------------------------------------------------
from hypothesis import given, strategies as st  # noqa: E402

#: scalar settings a kernel may see: ordinary, the BLAS short-cut values 0 and 1, and NaN
_SCALARS = st.sampled_from([0.0, 1.0, 0.5, 0.9, 0.999, 1e-8, 0.0125, 2.5, math.nan])
#: blob sizes that take the parallel path (65 chunks or so): whole blocks, ragged ends, n % 4 == 3 (libcaffe's
#: swapped last element)
_PARALLEL_SIZES = st.sampled_from([K._PARALLEL_MIN, K._PARALLEL_MIN + 3, K._PARALLEL_MIN + 1027])


def _nan_payloads(rng, x: np.ndarray, count: int) -> None:
    """Put ``count`` NaNs of random sign and payload (some signaling) into ``x``, often one last."""
    bits = rng.integers(1, 1 << 22, count).astype(np.uint32) | rng.choice(np.array([0, 1 << 22], np.uint32), count)
    sign = rng.choice(np.array([0, 1 << 31], np.uint32), count)
    nans = (np.uint32(0x7F800000) | bits | sign).view(np.float32)
    where = rng.choice(x.size, count, replace=False)
    if rng.random() < 0.5:  # the last element, where libcaffe swaps operands (NaN in some arrays, not in others)
        where[0] = x.size - 1
    x[where] = nans.astype(x.dtype)


def _assert_parallel_matches_serial(solver, arrays, call, *, one_thread=True):
    """Run ``K.SERIAL[solver]`` and ``K.PARALLEL[solver]`` (also on one numba thread) on copies; same bits."""
    dtype = arrays[0].dtype
    runs = {"serial": K.SERIAL[solver], "parallel": K.PARALLEL[solver]}
    out = {name: [a.copy() for a in arrays] for name in (*runs, *(["one thread"] if one_thread else []))}
    threads = numba.get_num_threads()
    with np.errstate(all="ignore"):
        for name, kernel in runs.items():
            kernel(*out[name], *call)
        if one_thread:
            numba.set_num_threads(1)
            try:
                K.PARALLEL[solver](*out["one thread"], *call)
            finally:
                numba.set_num_threads(threads)
    uint = np.uint32 if dtype == np.float32 else np.uint64
    for name in out:
        for k, (s, p) in enumerate(zip(out["serial"], out[name])):
            if not np.array_equal(s.view(uint), p.view(uint)):
                i = int(np.argmax(s.view(uint) != p.view(uint)))
                raise AssertionError(f"{solver}, {name}, array {k}, element {i} of {s.size}: serial "
                                     f"{s.view(uint)[i]:#x}, {name} {p.view(uint)[i]:#x}")


#: how many scalar arguments (after the prologue's three) each solver's kernel takes
_REST = {"SGD": 2, "Nesterov": 4, "AdaGrad": 2, "RMSProp": 4, "AdaDelta": 4, "Adam": 6}


@pytest.mark.parametrize("solver", SOLVERS)
def test_parallel_kernels_keep_the_swapped_last_element(solver):
    """Where libcaffe swaps the last element's operands (n % 4 == 3), the chunks find it as the serial loop does.

    Every pattern of NaN and finite in the last element's data, diff and
    history, with each scalar NaN in turn (and none): the cases where which
    NaN comes out depends on that swap.
    """
    n = K._PARALLEL_MIN + 3
    rng = np.random.default_rng(SOLVERS.index(solver))
    count = 4 if solver in ("AdaDelta", "Adam") else 3
    base = [np.abs(mixed(rng, n, specials=False)) + f32(0.5) for _ in range(count)]
    nscalars = 3 + _REST[solver]
    for pattern in itertools.product((False, True), repeat=count):
        arrays = [a.copy() for a in base]
        for k, is_nan in enumerate(pattern):
            if is_nan:
                arrays[k][-1] = np.uint32(0x7FC00000 | (k + 1) << 4 | 0x80000000 * (k % 2)).view(np.float32)
        for which in range(-1, nscalars):
            args = [f32(0.5 if k < 3 else 0.25) for k in range(nscalars)]
            if which >= 0:
                args[which] = np.uint32(0xFFC00123).view(np.float32)
            call = (args[0], args[1], K.REG_L2, *args[2:], K.AXPY_FUSED, K.SCAL_MULTIPLY)
            _assert_parallel_matches_serial(solver, arrays, call, one_thread=False)


@pytest.mark.parametrize("solver", SOLVERS)
@given(n=_PARALLEL_SIZES, dtype=st.sampled_from([np.float32, np.float64]),
       form=st.sampled_from([K.AXPY_SEPARATE, K.AXPY_FUSED, K.AXPY_SEPARATE_Y_FIRST]),
       zero_fill=st.sampled_from([K.SCAL_MULTIPLY, K.SCAL_ZERO_FILL, K.SCAL_ZERO_FILL_NAN]),
       reg=st.sampled_from([K.REG_NONE, K.REG_L2, K.REG_L1]), scalars=st.lists(_SCALARS, min_size=10, max_size=10),
       seed=st.integers(0, 2**32 - 1))
def test_parallel_and_serial_kernels_agree(solver, n, dtype, form, zero_fill, reg, scalars, seed):
    """Every solver's threaded kernel gives the serial loop's bits, NaN payloads included, on any thread count."""
    rng = np.random.default_rng(seed)
    arrays = [mixed(rng, n, positive=solver not in ("SGD", "Nesterov") and k >= 2) for k in range(4)]
    arrays[1][:POW2_TRAP.size] = POW2_TRAP
    arrays[2][-SQRT_TRAP.size:] = SQRT_TRAP
    for a in arrays:
        _nan_payloads(rng, a, 9)
    with np.errstate(invalid="ignore"):  # signaling NaNs widened to float64
        arrays = [a.astype(dtype) for a in arrays[:4 if solver in ("AdaDelta", "Adam") else 3]]
    args = [dtype(s) for s in scalars]
    prologue = (args[0], args[1], reg, args[2])
    call = (*prologue, *args[3:3 + _REST[solver]], form, zero_fill)
    _assert_parallel_matches_serial(solver, arrays, call)


def test_reference_parallel_switch():
    """``Reference(parallel=False)`` runs the serial twins, with the same bits as the default."""
    from harness.config import BlobSpec, SolverConfig
    from harness.reference import Reference

    n = K._PARALLEL_MIN + 3
    rng = np.random.default_rng(7)
    cfg = SolverConfig(type="Adam", base_lr=0.01, lr_policy="fixed", max_iter=2, momentum=0.9, momentum2=0.999,
                       weight_decay=0.0005, blobs=(BlobSpec("ip/0", (n,)), BlobSpec("ip/1", (5,))))
    params = {"ip/0": mixed(rng, n, specials=False), "ip/1": mixed(rng, 5)}
    grads = [{"ip/0": mixed(rng, n, specials=False), "ip/1": mixed(rng, 5)} for _ in range(2)]
    a, b = Reference(cfg, params), Reference(cfg, params, parallel=False)
    assert a.kernel is K.PARALLEL["Adam"] and b.kernel is K.SERIAL["Adam"]
    for g in grads:
        ra, rb = a.step([g]), b.step([g])
        for name in params:
            assert np.array_equal(ra.params[name].view(np.uint32), rb.params[name].view(np.uint32))
