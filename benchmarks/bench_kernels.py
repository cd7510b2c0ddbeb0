#!/usr/bin/env python3
"""The reference update kernels against the memory-bandwidth bound, real Caffe and numpy.

For every solver type and every size (float32 parameters in one blob) this
measures, in one run on this machine:

``kernel``
    ``harness.kernels.update.<solver>_update`` (what ``Reference`` calls per
    blob): median wall time of ``--repeat`` warm calls. The gradient is
    restored between calls (untimed); the history evolves as in training.
``kernel (1 thread)``
    the same kernel with ``numba.set_num_threads(1)``: on a machine whose
    other cores are busy (a shared VM) this is what one core achieves, and
    one core of this machine kind nearly saturates its memory bandwidth.
``bound``
    the time the update cannot beat: the bytes it must move divided by the
    machine's bandwidth. Each parameter's data, diff and history blob(s) are
    read once and written once (the diff holds the update value afterwards,
    Caffe's ``snapshot_diff``): 24 bytes per parameter for SGD, Nesterov,
    AdaGrad and RMSProp, 32 for AdaDelta and Adam. The bandwidth is a triad
    ``a[i] = b[i] + s*c[i]`` over 2**25 floats per array on all threads,
    measured in the same run and counted with its write-allocate traffic
    (16 bytes per element: the line of ``a`` is read before it is written,
    which the kernels' arrays never need as they are read anyway). The
    1-thread bound uses the triad run on one thread.
``numpy``
    a straightforward numpy implementation of the same update (whole-array
    expressions in Caffe's call order, ``np.sqrt`` for ``powx(., 0.5)``):
    the speed yardstick, not bit-exact (no FMA, sqrt is not glibc's powf).
``caffe``
    real Caffe 1.0's own update (``harness.oracle.find_caffe``): a one-layer
    gradient-injection net (InnerProduct O x D plus bias, O = 1000) trained
    twice, with k and 3k iterations (k = 3e7/size, 2..30; display and
    snapshots off); the per-iteration time is the difference of the two
    runs' CPU times over the extra iterations, so start-up, net set-up and
    the first, page-faulting iteration cancel. ``caffe time`` on the same
    net, likewise with K and 3K iterations, gives Forward-Backward. From the
    iteration subtract Forward-Backward and the time of zeroing the diffs
    (``ClearParamDiffs``, a one-thread numpy fill of that size): what is
    left is ``ApplyUpdate`` (GetLearningRate, Normalize, Regularize,
    ComputeUpdateValue, Net::Update). Caffe runs single-threaded with the
    oracle's environment (OpenBLAS, ``OPENBLAS_NUM_THREADS=1``), so its CPU
    time is its time on an idle core even when other processes share the
    machine; the wall-clock equivalents (glog timestamps, ``caffe time``'s
    averages) are kept in the JSON as ``*_wall_ms``.
``bits``
    the kernel's result after the first call against a plain serial loop
    (one element at a time, glibc ``powf`` for every ``powx``, FMA where
    OpenBLAS fuses) over the whole arrays, bit for bit; and a sample of
    elements (plus zeros, subnormals, near-ties, NaN, Inf) against
    ``tests/naive.py`` (exact rational FMA, glibc through ctypes).

Settings: profile ``caffe-openblas``, ``lr_policy: fixed``, L2
``weight_decay: 0.0005``, no clipping, ``iter_size: 1``; per solver as in
``SETTINGS``. ``--kernels FILE`` benchmarks another ``update.py`` (a
proposed patch) with the same signatures.

    tools/bench [--sizes 1M,10M,100M] [--solvers SGD,Adam] [--quick]
                [--json out.json] [--no-caffe] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "SOLVERS",
    "SETTINGS",
    "BYTES_PER_PARAM",
    "TARGETS",
    "parse_sizes",
    "machine_info",
    "triad_bandwidth",
    "make_state",
    "kernel_call",
    "numpy_step",
    "plain_step",
    "naive_check",
    "caffe_update",
    "bench_solver",
    "run",
    "render",
    "main",
]

f32 = np.float32

SOLVERS = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")

#: solver settings (Caffe's names); lr_policy fixed, weight_decay 0.0005 (L2), lr_mult/decay_mult 1
SETTINGS = {
    "SGD": {"base_lr": 0.01, "momentum": 0.9},
    "Nesterov": {"base_lr": 0.01, "momentum": 0.9},
    "AdaGrad": {"base_lr": 0.01, "delta": 1e-8},
    "RMSProp": {"base_lr": 0.01, "rms_decay": 0.98, "delta": 1e-8},
    "AdaDelta": {"base_lr": 1.0, "momentum": 0.95, "delta": 1e-6},
    "Adam": {"base_lr": 0.001, "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8},
}
WEIGHT_DECAY = 0.0005
#: float32 arrays per parameter: data, diff, history (x2 for AdaDelta and Adam)
ARRAYS = {"SGD": 3, "Nesterov": 3, "AdaGrad": 3, "RMSProp": 3, "AdaDelta": 4, "Adam": 4}
#: bytes the update must move per parameter: every array read once and written once
BYTES_PER_PARAM = {s: 4 * 2 * k for s, k in ARRAYS.items()}
#: the targets at the largest size: share of the bound, speed-up over Caffe's own update and over numpy
TARGETS = {"bound_pct": 70.0, "x_caffe": 3.0, "x_numpy": 5.0}
#: the triad's arrays (floats each): far beyond the last-level cache
TRIAD_N = 1 << 25
#: InnerProduct outputs of the Caffe net (D = size/O - 1, so O*D + O = size)
CAFFE_O = 1000


# ---------------------------------------------------------------------------
# sizes and machine
# ---------------------------------------------------------------------------
def parse_sizes(text: str) -> list[int]:
    """``"1M,10M,100M"`` (also ``k``, ``G``, plain or ``1e6`` numbers) -> parameter counts."""
    out = []
    for item in text.split(","):
        item = item.strip()
        m = re.fullmatch(r"(\d+(?:\.\d+)?(?:[eE]\d+)?)\s*([kKmMgG]?)", item)
        if not m:
            raise ValueError(f"--sizes: cannot read {item!r} (expected e.g. 1M,10M,100M)")
        n = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()]
        if n < CAFFE_O * 2 or n != int(n):
            raise ValueError(f"--sizes: {item!r} must be a whole number >= {CAFFE_O * 2}")
        out.append(int(n))
    return out


def size_label(n: int) -> str:
    """``100000000`` -> ``100M``."""
    for div, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if n >= div and n % (div // 100 or 1) == 0:
            v = n / div
            return f"{v:g}{suffix}"
    return str(n)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine_info() -> dict:
    """CPU model, cores, RAM, kernel, libraries and the load when the run started."""
    model = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        model = m.group(1).strip() if m else ""
    except (OSError, subprocess.TimeoutExpired):
        pass
    if not model:
        m = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
        model = m.group(1).strip() if m else platform.processor()
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    flagset = set(flags.group(1).split()) if flags else set()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "threading_layer": numba.config.THREADING_LAYER,
        "ram_gb": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "kernel": platform.release(),
        "simd": [f for f in ("avx2", "fma", "avx512f") if f in flagset],
        "glibc": platform.libc_ver()[1],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------------------
# the bandwidth yardstick
# ---------------------------------------------------------------------------
@numba.njit(parallel=True, cache=True)
def _triad(a, b, c, s):
    for i in numba.prange(a.size):
        a[i] = b[i] + s * c[i]


@numba.njit(cache=True)
def _triad_serial(a, b, c, s):
    for i in range(a.size):
        a[i] = b[i] + s * c[i]


def triad_bandwidth(n: int = TRIAD_N, repeat: int = 10) -> dict:
    """Median GB/s of ``a = b + s*c`` (float32) on all numba threads and on one.

    ``gbs`` counts 16 bytes per element (two reads, the write and its
    write-allocate read); ``stream_gbs`` counts 12 (STREAM's convention).
    """
    a = np.zeros(n, f32)
    b = np.full(n, f32(1.5))
    c = np.full(n, f32(0.25))
    out = {}
    for name, fn in (("all", _triad), ("one", _triad_serial)):
        fn(a, b, c, f32(3))
        ts = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn(a, b, c, f32(3))
            ts.append(time.perf_counter() - t0)
        t = statistics.median(ts)
        out[name] = {"ms": t * 1e3, "gbs": 16 * n / t / 1e9, "stream_gbs": 12 * n / t / 1e9}
    return {"n": n, "threads": numba.get_num_threads(), "gbs": out["all"]["gbs"],
            "stream_gbs": out["all"]["stream_gbs"], "one_thread_gbs": out["one"]["gbs"], "detail": out}


# ---------------------------------------------------------------------------
# state, scalars and the three implementations
# ---------------------------------------------------------------------------
def make_state(solver: str, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights, a gradient and history in training-like ranges (float32).

    ``w ~ 0.05 N(0,1)``, ``g ~ 1e-3 N(0,1)``; histories hold what a few
    earlier steps would leave (positive second moments).
    """
    rng = np.random.default_rng(seed)

    def normal(scale):
        x = rng.standard_normal(n, dtype=f32)
        x *= f32(scale)
        return x

    st = {"w": normal(0.05), "g": normal(1e-3)}
    if solver in ("SGD", "Nesterov"):
        st["h"] = normal(1e-4)
    elif solver in ("AdaGrad", "RMSProp"):
        h = normal(1e-3)
        np.square(h, out=h)
        st["h"] = h
    elif solver == "AdaDelta":
        h = normal(1e-3)
        np.square(h, out=h)
        h2 = normal(1e-3)
        np.square(h2, out=h2)
        st["h"], st["h2"] = h, h2
    else:  # Adam
        st["h"] = normal(1e-4)
        v = normal(1e-3)
        np.square(v, out=v)
        st["h2"] = v
    return st


def _scalars(solver: str) -> dict:
    """The float32 scalars ``Reference`` passes for this solver (lr_mult = decay_mult = 1, iter 0)."""
    s = SETTINGS[solver]
    one = f32(1)
    d = {"local_rate": f32(f32(s["base_lr"]) * one), "local_decay": f32(f32(WEIGHT_DECAY) * one)}
    mu = f32(s.get("momentum", 0.0))
    d["momentum"] = mu
    d["delta"] = f32(s.get("delta", 1e-8))
    if solver == "Nesterov":
        d["one_plus_momentum"], d["neg_momentum"] = f32(one + mu), f32(-mu)
    if solver == "RMSProp":
        rho = f32(s["rms_decay"])
        d["rms_decay"], d["one_minus_rms_decay"] = rho, f32(one - rho)
    if solver == "AdaDelta":
        d["one_minus_momentum"] = f32(one - mu)
    if solver == "Adam":
        b2 = f32(s["momentum2"])
        corr = math.sqrt(1.0 - float(b2)) / (1.0 - float(mu))  # t = 1: sqrt(1-b2^1)/(1-b1^1), in double
        d["rate_correction"] = f32(d["local_rate"] * f32(corr))
        d["one_minus_momentum"], d["momentum2"], d["one_minus_momentum2"] = f32(one - mu), b2, f32(one - b2)
    return d


def kernel_call(kernels, solver: str, st: dict[str, np.ndarray]):
    """A zero-argument callable running the kernel once on ``st`` (profile caffe-openblas)."""
    sc = _scalars(solver)
    pro = (f32(1), f32(1), int(kernels.REG_L2), sc["local_decay"])
    prof = (True, int(kernels.SCAL_ZERO_FILL_NAN))
    w, g, h = st["w"], st["g"], st["h"]
    if solver == "SGD":
        return lambda: kernels.sgd_update(w, g, h, *pro, sc["local_rate"], sc["momentum"], *prof)
    if solver == "Nesterov":
        return lambda: kernels.nesterov_update(w, g, h, *pro, sc["local_rate"], sc["momentum"],
                                               sc["one_plus_momentum"], sc["neg_momentum"], *prof)
    if solver == "AdaGrad":
        return lambda: kernels.adagrad_update(w, g, h, *pro, sc["local_rate"], sc["delta"], *prof)
    if solver == "RMSProp":
        return lambda: kernels.rmsprop_update(w, g, h, *pro, sc["local_rate"], sc["rms_decay"],
                                              sc["one_minus_rms_decay"], sc["delta"], *prof)
    h2 = st["h2"]
    if solver == "AdaDelta":
        return lambda: kernels.adadelta_update(w, g, h, h2, *pro, sc["local_rate"], sc["momentum"],
                                               sc["one_minus_momentum"], sc["delta"], *prof)
    return lambda: kernels.adam_update(w, g, h, h2, *pro, sc["rate_correction"], sc["momentum"],
                                       sc["one_minus_momentum"], sc["momentum2"], sc["one_minus_momentum2"],
                                       sc["delta"], *prof)


def numpy_step(solver: str, st: dict[str, np.ndarray]) -> None:
    """One update in plain numpy, whole-array expressions in Caffe's order (not bit-exact)."""
    sc = _scalars(solver)
    w, g, h = st["w"], st["g"], st["h"]
    lr, mu, delta = sc["local_rate"], sc["momentum"], sc["delta"]
    g += sc["local_decay"] * w
    if solver == "SGD":
        h[:] = mu * h + lr * g
        g[:] = h
    elif solver == "Nesterov":
        old = h.copy()
        h[:] = mu * h + lr * g
        g[:] = sc["one_plus_momentum"] * h - mu * old
    elif solver == "AdaGrad":
        h += g * g
        g[:] = lr * (g / (np.sqrt(h) + delta))
    elif solver == "RMSProp":
        h[:] = sc["rms_decay"] * h + sc["one_minus_rms_decay"] * (g * g)
        g[:] = lr * (g / (np.sqrt(h) + delta))
    elif solver == "AdaDelta":
        h2 = st["h2"]
        h[:] = mu * h + sc["one_minus_momentum"] * (g * g)
        g *= np.sqrt((delta + h2) / (delta + h))
        h2[:] = mu * h2 + sc["one_minus_momentum"] * (g * g)
        g *= lr
    else:
        v = st["h2"]
        h[:] = mu * h + sc["one_minus_momentum"] * g
        v[:] = sc["momentum2"] * v + sc["one_minus_momentum2"] * (g * g)
        g[:] = sc["rate_correction"] * (h / (np.sqrt(v) + delta))
    w -= g


# Plain serial loops: one element at a time, glibc ``powf`` for every ``powx``
# (``harness.kernels.update``'s ``fma``/``powf``, whatever module is benchmarked).
# Written for this benchmark's settings in the caffe-openblas profile (FMA in
# ``saxpy``/``axpby``; ``sscal(0)`` zero-fills; no scalar is 0 or 1 except
# AdaDelta's ``local_rate`` 1, which ``sscal`` skips).
from harness.kernels.update import fma as _fma, powf as _powf  # noqa: E402

_TWO, _HALF, _ZERO = f32(2), f32(0.5), f32(0)
_plain_jit = numba.njit(error_model="numpy", cache=True)


@_plain_jit
def _plain_sgd(w, g, h, ld, lr, mu):
    for i in range(w.size):
        gi = _fma(ld, w[i], g[i])
        hi = _fma(lr, gi, mu * h[i])
        h[i] = hi
        g[i] = hi
        w[i] = w[i] - hi


@_plain_jit
def _plain_nesterov(w, g, h, ld, lr, mu, one_plus_mu, neg_mu):
    for i in range(w.size):
        gi = _fma(ld, w[i], g[i])
        old = h[i]
        hi = _fma(lr, gi, mu * old)
        h[i] = hi
        u = _fma(one_plus_mu, hi, neg_mu * old)
        g[i] = u
        w[i] = w[i] - u


@_plain_jit
def _plain_adagrad(w, g, h, ld, lr, delta):
    for i in range(w.size):
        gi = _fma(ld, w[i], g[i])
        hi = _powf(gi, _TWO) + h[i]
        h[i] = hi
        u = gi / (_powf(hi, _HALF) + delta)
        gi = _fma(lr, u, _ZERO)
        g[i] = gi
        w[i] = w[i] - gi


@_plain_jit
def _plain_rmsprop(w, g, h, ld, lr, rho, one_minus_rho, delta):
    for i in range(w.size):
        gi = _fma(ld, w[i], g[i])
        hi = _fma(one_minus_rho, _powf(gi, _TWO), rho * h[i])
        h[i] = hi
        u = gi / (_powf(hi, _HALF) + delta)
        gi = _fma(lr, u, _ZERO)
        g[i] = gi
        w[i] = w[i] - gi


@_plain_jit
def _plain_adadelta(w, g, h, h2, ld, lr, mu, one_minus_mu, delta):
    for i in range(w.size):
        gi = _fma(ld, w[i], g[i])
        hi = _fma(one_minus_mu, _powf(gi, _TWO), mu * h[i])
        h[i] = hi
        gi = gi * _powf((delta + h2[i]) / (delta + hi), _HALF)
        h2[i] = _fma(one_minus_mu, _powf(gi, _TWO), mu * h2[i])
        if lr != 1:
            gi = lr * gi
        g[i] = gi
        w[i] = w[i] - gi


@_plain_jit
def _plain_adam(w, g, m, v, ld, rc, b1, one_minus_b1, b2, one_minus_b2, eps):
    for i in range(w.size):
        gi = _fma(ld, w[i], g[i])
        mi = _fma(one_minus_b1, gi, b1 * m[i])
        m[i] = mi
        vi = _fma(one_minus_b2, gi * gi, b2 * v[i])
        v[i] = vi
        gi = rc * (mi / (_powf(vi, _HALF) + eps))
        g[i] = gi
        w[i] = w[i] - gi


_PLAIN = {"SGD": _plain_sgd, "Nesterov": _plain_nesterov, "AdaGrad": _plain_adagrad, "RMSProp": _plain_rmsprop,
          "AdaDelta": _plain_adadelta, "Adam": _plain_adam}


def plain_step(solver: str, st: dict[str, np.ndarray]) -> None:
    """One update with the plain serial loop (``_plain_<solver>``) for ``solver``."""
    sc = _scalars(solver)
    fn = _PLAIN[solver]
    w, g, h = st["w"], st["g"], st["h"]
    ld, lr, mu, delta = sc["local_decay"], sc["local_rate"], sc["momentum"], sc["delta"]
    if solver == "SGD":
        fn(w, g, h, ld, lr, mu)
    elif solver == "Nesterov":
        fn(w, g, h, ld, lr, mu, sc["one_plus_momentum"], sc["neg_momentum"])
    elif solver == "AdaGrad":
        fn(w, g, h, ld, lr, delta)
    elif solver == "RMSProp":
        fn(w, g, h, ld, lr, sc["rms_decay"], sc["one_minus_rms_decay"], delta)
    elif solver == "AdaDelta":
        fn(w, g, h, st["h2"], ld, lr, mu, sc["one_minus_momentum"], delta)
    else:
        fn(w, g, h, st["h2"], ld, sc["rate_correction"], mu, sc["one_minus_momentum"], sc["momentum2"],
           sc["one_minus_momentum2"], delta)


def _differing(a: dict, b: dict) -> int:
    return sum(int(np.count_nonzero(a[k].view(np.uint32) != b[k].view(np.uint32))) for k in a)


def _special_sample(solver: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """A small state with zeros, signed zeros, subnormals, near-ties, huge values, NaN and Inf."""
    st = make_state(solver, n, seed)
    rng = np.random.default_rng(seed + 1)
    g = st["g"]
    k = n // 8
    idx = rng.permutation(n)
    ties = (1 + rng.integers(0, 4096, k) * 2.0**-12).astype(f32)  # x*x lands on ties
    g[idx[:k]] = ties * np.where(rng.random(k) < 0.5, f32(-1), f32(1))
    g[idx[k:k + 8]] = f32(0)
    g[idx[k + 8:k + 16]] = f32(-0.0)
    g[idx[k + 16:k + 24]] = np.arange(1, 9, dtype=np.uint32).view(f32)  # subnormals
    g[idx[k + 24:k + 28]] = [np.nan, np.inf, -np.inf, f32(3e38)]
    g[idx[k + 28:k + 36]] = f32(1e-30)
    st["h"][idx[k + 36:k + 44]] = f32(0)
    st["w"][idx[k + 44:k + 48]] = [np.nan, f32(0), f32(-0.0), np.inf]
    return st


def naive_check(kernels, solver: str, n: int = 600, seed: int = 7) -> int:
    """Elements where the kernel differs from ``tests/naive.py`` on a special-value sample (0 expected)."""
    sys.path.insert(0, str(ROOT / "tests"))
    import naive

    st = _special_sample(solver, n, seed)
    mine = {k: v.copy() for k, v in st.items()}
    with np.errstate(all="ignore"):
        kernel_call(kernels, solver, mine)()
        s = SETTINGS[solver]
        hist = [st["h"]] + ([st["h2"]] if "h2" in st else [])
        naive.apply_update(solver, st["w"], st["g"], hist, blas=naive.OPENBLAS, weight_decay=WEIGHT_DECAY,
                           rate=s["base_lr"], momentum=s.get("momentum", 0.0),
                           momentum2=s.get("momentum2", 0.999), rms_decay=s.get("rms_decay", 0.99),
                           delta=s.get("delta", 1e-8), iter=0)
    return _differing(mine, st)


# ---------------------------------------------------------------------------
# real Caffe
# ---------------------------------------------------------------------------
_STAMP = re.compile(r"^[IWEF]\d{4} (\d\d):(\d\d):(\d\d\.\d+)")


def _stamp_seconds(line: str) -> float | None:
    m = _STAMP.match(line)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _train_seconds(log: Path) -> float:
    """Seconds from ApplyUpdate's ``Iteration 0, lr`` line to ``Optimization Done``."""
    start = end = None
    for line in log.read_text(errors="replace").splitlines():
        if start is None and "] Iteration 0, lr = " in line:
            start = _stamp_seconds(line)
        elif "Optimization Done" in line:
            end = _stamp_seconds(line)
    if start is None or end is None:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"{log}: no 'Iteration 0, lr' / 'Optimization Done' lines; last lines: {tail}")
    if end < start:  # past midnight
        end += 86400
    return end - start


def _write_injection(work: Path, D: int, O: int, rows: int, seed: int) -> None:
    import h5py

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, D), dtype=f32)
    c = (np.exp2(rng.integers(-3, 4, (rows, O))) * np.where(rng.random((rows, O)) < 0.5, -1, 1)).astype(f32)
    with h5py.File(work / "inject.h5", "w") as f:
        f.create_dataset("x0", data=x)
        f.create_dataset("c0", data=c)
    (work / "inject.txt").write_text(str(work / "inject.h5") + "\n")


def _solver_text(solver: str, iters: int) -> str:
    s = {"type": f'"{solver}"', "lr_policy": '"fixed"', "weight_decay": WEIGHT_DECAY, **SETTINGS[solver]}
    lines = ['net: "net.prototxt"'] + [f"{k}: {v}" for k, v in s.items()]
    lines += [f"max_iter: {iters}", f"display: {10**8}", "snapshot: 0", "snapshot_after_train: false",
              "solver_mode: CPU", "random_seed: 1"]
    return "\n".join(lines) + "\n"


def _run_caffe(install, args: list[str], work: Path, log_name: str, timeout: float) -> tuple[float, float]:
    """Run ``caffe ARGS`` in ``work``; ``(wall seconds, CPU seconds of the caffe process)``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with open(work / log_name, "wb") as log:
        rc = install.run(args, cwd=work, timeout=timeout, log=log)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise RuntimeError(f"caffe {args[0]} exited {rc}: see {work / log_name}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def caffe_update(install, solver: str, n: int, iters: int, fb: dict | None = None, work: Path | None = None,
                 timeout: float = 1800) -> dict:
    """Real Caffe's per-iteration, forward-backward and update times (ms) for ``n`` parameters.

    Every time is a difference of two runs that differ only in their
    iteration count (``iters`` and ``3*iters``), so start-up, net set-up and
    the first, page-faulting iteration cancel. ``*_ms`` are CPU times of
    the (single-threaded) caffe process -- robust to other processes on a
    shared machine; ``*_wall_ms`` the same from glog timestamps / wall
    clock. ``fb`` reuses forward-backward numbers already measured for
    this size.
    """
    from harness.oracle import LayerSpec, net_prototxt

    O = CAFFE_O
    D = n // O - 1
    own = work is None
    work = Path(tempfile.mkdtemp(prefix="bench-caffe-")) if own else work
    try:
        if not (work / "net.prototxt").exists():
            _write_injection(work, D, O, rows=4, seed=1)
            (work / "net.prototxt").write_text(net_prototxt([LayerSpec(D=D, O=O)], source=str(work / "inject.txt")))
        wall, cpu, log_secs = {}, {}, {}
        for k in (iters, 3 * iters):
            (work / "solver.prototxt").write_text(_solver_text(solver, k))
            wall[k], cpu[k] = _run_caffe(install, ["train", "--solver=solver.prototxt"], work, f"train-{k}.log", timeout)
            log_secs[k] = _train_seconds(work / f"train-{k}.log")
        extra = 2 * iters
        out = {"D": D, "O": O, "params": O * D + O, "iters": [iters, 3 * iters],
               "iter_ms": (cpu[3 * iters] - cpu[iters]) / extra * 1e3,
               "iter_wall_ms": (log_secs[3 * iters] - log_secs[iters]) / extra * 1e3}
        if fb is None:
            k_fb = max(iters, 5)
            tw, tc = {}, {}
            for k in (k_fb, 3 * k_fb):
                tw[k], tc[k] = _run_caffe(install, ["time", "--model=net.prototxt", f"--iterations={k}"], work,
                                          f"time-{k}.log", timeout)
            text = (work / f"time-{3 * k_fb}.log").read_text(errors="replace")
            fwd = re.search(r"Average Forward pass: ([\d.eE+-]+) ms", text)
            bwd = re.search(r"Average Backward pass: ([\d.eE+-]+) ms", text)
            if not (fwd and bwd):
                raise RuntimeError(f"caffe time printed no averages: see {work / f'time-{3 * k_fb}.log'}")
            fb = {"fb_ms": (tc[3 * k_fb] - tc[k_fb]) / (2 * k_fb) * 1e3,
                  # caffe time's own per-pass averages (wall, microsecond resolution)
                  "fb_wall_ms": float(fwd.group(1)) + float(bwd.group(1))}
        out.update(fb)
        return out
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _fill_ms(n: int, repeat: int = 5) -> float:
    """Median CPU time of zeroing ``n`` floats on one thread (Caffe's ClearParamDiffs of that size), in ms."""
    a = np.ones(n, f32)
    ts = []
    for _ in range(repeat):
        t0 = time.process_time()
        a.fill(0)
        ts.append(time.process_time() - t0)
    return statistics.median(ts) * 1e3


# ---------------------------------------------------------------------------
# one solver at one size
# ---------------------------------------------------------------------------
def _median_ms(step, restore, repeat: int) -> tuple[float, list[float]]:
    ts = []
    for _ in range(repeat):
        restore()
        t0 = time.perf_counter()
        step()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts), ts


def bench_solver(kernels, solver: str, n: int, *, repeat: int, numpy_repeat: int, check_bits: bool,
                 bandwidth_gbs: float, seed: int = 0) -> dict:
    """Kernel, numpy and bound for one solver and size (Caffe is measured separately)."""
    st0 = make_state(solver, n, seed)
    g0 = st0["g"].copy()
    res = {"solver": solver, "params": n, "bytes_per_param": BYTES_PER_PARAM[solver]}
    res["bound_ms"] = BYTES_PER_PARAM[solver] * n / (bandwidth_gbs * 1e9) * 1e3
    # kernel: the first (warm-up) call is also the bit check against the plain loop
    st = {k: v.copy() for k, v in st0.items()}
    call = kernel_call(kernels, solver, st)
    with np.errstate(all="ignore"):
        call()
        if check_bits:
            plain = {k: v.copy() for k, v in st0.items()}
            plain_step(solver, plain)
            res["plain_differing"] = _differing(st, plain)
            del plain
        ms, ts = _median_ms(call, lambda: np.copyto(st["g"], g0), repeat)
        threads = numba.get_num_threads()
        if threads > 1:  # the same kernel on one thread: what a core does when the others are busy
            numba.set_num_threads(1)
            try:
                ms1, _ = _median_ms(call, lambda: np.copyto(st["g"], g0), repeat)
            finally:
                numba.set_num_threads(threads)
        else:
            ms1 = ms
    res["kernel_ms"], res["kernel_runs_ms"], res["kernel_1t_ms"] = ms, ts, ms1
    del st, call
    # numpy
    st = {k: v.copy() for k, v in st0.items()}
    with np.errstate(all="ignore"):
        numpy_step(solver, st)
        ms, ts = _median_ms(lambda: numpy_step(solver, st), lambda: np.copyto(st["g"], g0), numpy_repeat)
    res["numpy_ms"], res["numpy_runs_ms"] = ms, ts
    if check_bits:  # how far numpy is from Caffe's bits, from the same start
        mine = {k: v.copy() for k, v in st0.items()}
        ref = {k: v.copy() for k, v in st0.items()}
        with np.errstate(all="ignore"):
            numpy_step(solver, mine)
            kernel_call(kernels, solver, ref)()
        res["numpy_differing_pct"] = 100.0 * _differing(mine, ref) / (n * len(mine))
    return res


# ---------------------------------------------------------------------------
# the whole run
# ---------------------------------------------------------------------------
def _load_kernels(path: str | None):
    if path is None:
        from harness.kernels import update

        return update
    p = Path(path).resolve()
    sys.path.insert(0, str(p.parent))
    return importlib.import_module(p.stem)


def run(args) -> dict:
    """Measure everything ``args`` asks for; return the result dict (also what ``--json`` writes)."""
    kernels = _load_kernels(args.kernels)
    sizes = parse_sizes(args.sizes)
    solvers = [s.strip() for s in args.solvers.split(",")] if args.solvers else list(SOLVERS)
    unknown = [s for s in solvers if s not in SOLVERS]
    if unknown:
        raise ValueError(f"--solvers: unknown {', '.join(unknown)} (known: {', '.join(SOLVERS)})")
    log = print if not args.quiet else (lambda *a, **k: None)
    out = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["tools/bench"] + list(args.argv)),
        "kernels": str(Path(kernels.__file__).resolve()),
        "machine": machine_info(),
        "settings": {"profile": "caffe-openblas", "weight_decay": WEIGHT_DECAY, "lr_policy": "fixed",
                     "solvers": {s: SETTINGS[s] for s in solvers}},
        "targets": TARGETS,
    }
    log(f"machine: {out['machine']['cpu']}, {out['machine']['cores']} cores, numba threads "
        f"{out['machine']['numba_threads']}, load {out['machine']['load_at_start']}")
    t0 = time.perf_counter()
    tri = triad_bandwidth(args.triad_elements or (TRIAD_N if not args.quick else TRIAD_N // 4), repeat=args.repeat + 5)
    out["triad"] = tri
    log(f"triad: {tri['gbs']:.1f} GB/s counting write-allocate ({tri['stream_gbs']:.1f} GB/s STREAM-style), "
        f"one thread {tri['one_thread_gbs']:.1f} GB/s")
    install = None
    reused = {}
    if args.caffe_from:
        prev = json.loads(Path(args.caffe_from).read_text())
        reused = {(r["solver"], r["params"]): r["caffe"] for r in prev["results"] if r.get("caffe")}
        out["caffe"] = dict(prev.get("caffe", {}), reused_from=str(args.caffe_from), measured=prev.get("date"))
    elif not args.no_caffe:
        from harness.errors import OracleUnavailable
        from harness.oracle import find_caffe

        try:
            install = find_caffe()
            out["caffe"] = {"prefix": str(install.prefix), "version": install.version,
                            "blas": install.blas_package("openblas"), "env": "OPENBLAS_NUM_THREADS=1"}
        except OracleUnavailable as e:
            out["caffe"] = {"unavailable": str(e)}
            log(f"caffe: {e} (columns left empty)")
    results = []
    for n in sizes:
        naive_done = set()
        fb = None
        clear_ms = _fill_ms(n) if install is not None else None
        for solver in solvers:
            big = n >= 50_000_000
            r = bench_solver(kernels, solver, n, repeat=max(3, args.repeat - (2 if big else 0)),
                             numpy_repeat=max(1, (args.repeat + 1) // 2 - (1 if big else 0)),
                             check_bits=not args.no_check, bandwidth_gbs=tri["gbs"])
            if not args.no_check and solver not in naive_done:
                r["naive_differing"] = naive_check(kernels, solver)
                naive_done.add(solver)
            if install is not None:
                iters = max(2, min(30, 30_000_000 // n)) if not args.quick else 2
                c = caffe_update(install, solver, n, iters, fb=fb)
                fb = {k: c[k] for k in ("fb_ms", "fb_wall_ms")}
                c["clear_ms"] = clear_ms
                c["update_ms"] = c["iter_ms"] - c["fb_ms"] - clear_ms
                r["caffe"] = c
                r["caffe_ms"] = c["update_ms"]
            elif (solver, n) in reused:
                r["caffe"] = reused[(solver, n)]
                r["caffe_ms"] = r["caffe"]["update_ms"]
            r["bound_pct"] = 100.0 * r["bound_ms"] / r["kernel_ms"]
            r["bound_1t_ms"] = r["bytes_per_param"] * n / (tri["one_thread_gbs"] * 1e9) * 1e3
            r["bound_1t_pct"] = 100.0 * r["bound_1t_ms"] / r["kernel_1t_ms"]
            r["x_numpy"] = r["numpy_ms"] / r["kernel_ms"]
            r["x_caffe"] = r["caffe_ms"] / r["kernel_ms"] if r.get("caffe_ms") else None
            r["bit_exact"] = (r.get("plain_differing", 0) == 0 and r.get("naive_differing", 0) == 0) \
                if not args.no_check else None
            results.append(r)
            log(_row(r))
    out["results"] = results
    out["seconds"] = time.perf_counter() - t0
    out["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out["verdict"] = _verdict(results, max(sizes))
    return out


def _fmt(v, spec: str, empty: str = "-") -> str:
    return empty if v is None else format(v, spec)


def _row(r: dict) -> str:
    bits = {True: "exact", False: "DIFFERS", None: "unchecked"}[r.get("bit_exact")]
    return (f"{r['solver']:9s} {size_label(r['params']):>5s} kernel {r['kernel_ms']:9.2f} ms  bound "
            f"{r['bound_ms']:8.2f} ms ({r['bound_pct']:5.1f}%)  1 thread {r['kernel_1t_ms']:9.2f} ms "
            f"({r['bound_1t_pct']:5.1f}%)  numpy {r['numpy_ms']:9.2f} ms "
            f"(x{r['x_numpy']:5.1f})  caffe {_fmt(r.get('caffe_ms'), '9.2f')} ms "
            f"(x{_fmt(r.get('x_caffe'), '5.1f')})  bits {bits}")


def _verdict(results: list[dict], n: int) -> dict:
    """Targets at the largest size: met/missed per solver and measure."""
    out = {}
    for r in results:
        if r["params"] != n:
            continue
        v = {"bound_pct": r["bound_pct"] >= TARGETS["bound_pct"],
             "bound_1t_pct": r["bound_1t_pct"] >= TARGETS["bound_pct"], "x_numpy": r["x_numpy"] >= TARGETS["x_numpy"],
             "x_caffe": None if r.get("x_caffe") is None else r["x_caffe"] >= TARGETS["x_caffe"],
             "bit_exact": r.get("bit_exact")}
        out[r["solver"]] = v
    return out


def render(out: dict) -> str:
    """The Markdown tables of a result dict (as docs/PERFORMANCE.md shows them)."""
    m = out["machine"]
    tri = out["triad"]
    lines = [
        f"Run {out['date']}: `{out['command']}` ({out['seconds']:.0f} s; load {m['load_at_start']} -> "
        f"{out.get('load_at_end')})",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['numba_threads']} numba threads, {m['threading_layer']}), "
        f"{m['ram_gb']} GB RAM, Linux {m['kernel']}, glibc {m['glibc']}, numpy {m['numpy']}, numba {m['numba']}",
        f"Triad: {tri['gbs']:.1f} GB/s with write-allocate ({tri['stream_gbs']:.1f} GB/s STREAM-style), one thread "
        f"{tri['one_thread_gbs']:.1f} GB/s",
        f"Kernels: {out['kernels']}" + (f"; Caffe columns from {out['caffe']['reused_from']} ({out['caffe'].get('measured')})"
                                        if out.get("caffe", {}).get("reused_from") else ""),
        "",
        f"| solver | params | B/param | kernel ms ({m['numba_threads']} thr) | bound ms | % of bound | kernel ms "
        "(1 thr) | % of 1-thr bound | numpy ms | x numpy | Caffe update ms | x Caffe | bits |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in out["results"]:
        bits = {True: "exact", False: "**differ**", None: "unchecked"}[r.get("bit_exact")]
        lines.append(
            f"| {r['solver']} | {size_label(r['params'])} | {r['bytes_per_param']} | {r['kernel_ms']:.2f} | "
            f"{r['bound_ms']:.2f} | {r['bound_pct']:.0f}% | {_fmt(r.get('kernel_1t_ms'), '.2f')} | "
            f"{_fmt(r.get('bound_1t_pct'), '.0f')}% | {r['numpy_ms']:.1f} | {r['x_numpy']:.1f} | "
            f"{_fmt(r.get('caffe_ms'), '.1f')} | {_fmt(r.get('x_caffe'), '.1f')} | {bits} |"
        )
    if any("caffe" in r for r in out["results"]):
        lines += ["", "| solver | params | Caffe iteration ms | Forward-Backward ms | ClearParamDiffs ms | update ms |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for r in out["results"]:
            c = r.get("caffe")
            if c:
                lines.append(f"| {r['solver']} | {size_label(r['params'])} | {c['iter_ms']:.1f} | {c['fb_ms']:.1f} | "
                             f"{c['clear_ms']:.1f} | {c['update_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``tools/bench``: parse options, run, print the tables, write ``--json``; 0 when bit-exact."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="tools/bench", description=__doc__.split("\n\n")[0],
                                 epilog="See docs/PERFORMANCE.md for what is measured and how.")
    ap.add_argument("--sizes", default=None, help="parameter counts, e.g. 1M,10M,100M (default; --quick: 1M,10M)")
    ap.add_argument("--solvers", default=None, help=f"comma-separated subset of {','.join(SOLVERS)}")
    ap.add_argument("--quick", action="store_true", help="1M,10M, fewer repetitions, short Caffe runs")
    ap.add_argument("--repeat", type=int, default=None, help="timed kernel calls per case, median reported (default 7)")
    ap.add_argument("--json", default=None, help="also write the full result to this JSON file")
    ap.add_argument("--no-caffe", action="store_true", help="skip real Caffe (it is skipped anyway when not installed)")
    ap.add_argument("--no-check", action="store_true", help="skip the bit checks")
    ap.add_argument("--caffe-from", default=None, metavar="JSON",
                    help="reuse the Caffe columns of an earlier --json run (same machine and sizes) instead of rerunning Caffe")
    ap.add_argument("--kernels", default=None, help="benchmark this update.py instead of harness.kernels.update")
    ap.add_argument("--quiet", action="store_true", help="print only the final tables")
    ap.add_argument("--triad-elements", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.sizes is None:
        args.sizes = "1M,10M" if args.quick else "1M,10M,100M"
    if args.repeat is None:
        args.repeat = 3 if args.quick else 7
    try:
        out = run(args)
    except ValueError as e:
        print(f"tools/bench: {e}", file=sys.stderr)
        return 2
    print()
    print(render(out))
    if args.json:
        from harness.io.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(out, indent=1, default=float) + "\n")
    exact = [r.get("bit_exact") for r in out["results"]]
    return 1 if any(e is False for e in exact) else 0


if __name__ == "__main__":
    sys.exit(main())
