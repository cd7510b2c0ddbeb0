"""Learning-rate policies: bits against the naive twin and real Caffe's logs.

* ``learning_rate`` equals ``naive.rate`` bit for bit for every policy over
  ordinary and awkward settings;
* ``lr_schedule`` equals successive ``learning_rate`` calls (multistep's
  state threaded through), including exp's anchored fast path over long
  consecutive runs;
* every ``Iteration k, lr = R`` line of every fixture log prints exactly as
  our rate does (``%g``, 6 significant digits);
* the refusals match the fatal lines of ``fixtures/caffe-runs-rejected``;
* the float64 yardstick stays within a bound derived from the float path's
  roundings.
"""

from __future__ import annotations


import numba
import numpy as np
import pytest

import naive
from harness.config import SolverConfig, caffe_float, f32
from harness.errors import CaffeRefusal
from harness.io.capture import find_captures, load_capture
from harness.kernels import lr_policy as K
from harness.lr import current_steps, learning_rate, lr_schedule, policy_code

from conftest import FIXTURES

U = 2.0**-24  # float32 unit roundoff

CONFIGS = {
    "fixed": dict(base_lr=0.01),
    "step": dict(base_lr=0.01, gamma=0.1, stepsize=7),
    "step-gamma-gt1": dict(base_lr=0.3, gamma=1.7, stepsize=3),
    "exp": dict(base_lr=0.02, gamma=0.97),
    "exp-near-one": dict(base_lr=0.05, gamma=0.9999999),
    "exp-growing": dict(base_lr=1e-30, gamma=1.001),
    "exp-zero-gamma": dict(base_lr=0.5, gamma=0.0),
    "inv": dict(base_lr=0.01, gamma=1e-4, power=0.75),
    "inv-big": dict(base_lr=0.1, gamma=0.37, power=2.5),
    "multistep": dict(base_lr=0.01, gamma=0.5, stepvalue=(3, 5, 6, 40)),
    "poly": dict(base_lr=0.02, power=1.5, max_iter=50),
    "poly-int-power": dict(base_lr=0.02, power=2.0, max_iter=37),
    "sigmoid": dict(base_lr=0.01, gamma=0.2, stepsize=20),
    "sigmoid-steep": dict(base_lr=1.0, gamma=9.5, stepsize=3),
}


def config(name, **extra) -> SolverConfig:
    kw = dict(CONFIGS[name])
    kw.update(extra)
    policy = name.split("-")[0]
    return SolverConfig(lr_policy=policy, **{k: (f32(v) if isinstance(v, float) else v) for k, v in kw.items()})


def naive_rates(cfg: SolverConfig, iters, current_step=0):
    out = []
    cs = current_step
    for it in iters:
        if cfg.lr_policy == "multistep" and cs < len(cfg.stepvalue) and it >= cfg.stepvalue[cs]:
            cs += 1
        out.append(naive.rate(cfg.lr_policy, base_lr=cfg.base_lr, gamma=cfg.gamma, power=cfg.power,
                              stepsize=cfg.stepsize, max_iter=cfg.max_iter, it=it, current_step=cs))
    return np.array(out, dtype=np.float32)


def bits(a):
    return np.asarray(a, dtype=np.float32).view(np.uint32)


def assert_same(want, got, what):
    want, got = np.asarray(want, np.float32), np.asarray(got, np.float32)
    ok = (bits(want) == bits(got)) | (np.isnan(want) & np.isnan(got))
    assert ok.all(), f"{what}: first difference at {int(np.argmin(ok))}: {want[~ok][:3]} vs {got[~ok][:3]}"


ITERS = list(range(0, 60)) + [99, 1000, 12345, 1 << 20, (1 << 24) + 1, 2**31 - 1]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_learning_rate_matches_twin(name):
    cfg = config(name)
    got, cs = [], 0
    for it in ITERS:
        r, cs = learning_rate(cfg, it, cs)
        assert isinstance(r, np.float32)
        got.append(r)
    with np.errstate(all="ignore"):
        assert_same(naive_rates(cfg, ITERS), got, name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_schedule_equals_successive_calls(name):
    cfg = config(name)
    iters = np.array(ITERS, dtype=np.int64)
    calls, cs = [], 0
    for it in iters:
        r, cs = learning_rate(cfg, int(it), cs)
        calls.append(r)
    assert_same(calls, lr_schedule(cfg, iters), name)
    assert_same(calls[:60], lr_schedule(cfg, 60), name + " (range)")


@pytest.mark.parametrize("name", ["exp", "exp-near-one", "exp-growing", "exp-zero-gamma"])
def test_exp_fast_path_is_exact(name):
    """exp's anchored multiplication equals glibc pow per element, over long runs."""
    cfg = config(name)
    n = 20_000 if numba.config.DISABLE_JIT else 300_000
    got = lr_schedule(cfg, n)
    want = np.empty(n, np.float32)
    args = (policy_code("exp"), np.float32(cfg.base_lr), np.float32(cfg.gamma), np.float32(0), 0, 0,
            np.zeros(0, np.int64), np.zeros(0, np.int64), 0, True, 0)
    with np.errstate(all="ignore"):
        K._map_float32(*args, want)  # rate_float32 (one pow per element) in parallel
    assert_same(want, got, name)
    # non-consecutive and repeated iterations take the exact path
    iters = np.array([5, 4, 4, 1000, 1001, 7, 2**31 - 1], np.int64)
    assert_same([learning_rate(cfg, int(i))[0] for i in iters], lr_schedule(cfg, iters), name + " (jumps)")


def test_multistep_advances_at_most_once_per_call():
    cfg = config("multistep")  # stepvalue 3, 5, 6, 40
    # resumed at iteration 30 with current_step 0: catches up one step per call
    r0, cs = learning_rate(cfg, 30, 0)
    assert cs == 1
    r1, cs = learning_rate(cfg, 31, cs)
    assert cs == 2
    r2, cs = learning_rate(cfg, 32, cs)
    assert cs == 3
    r3, cs = learning_rate(cfg, 33, cs)
    assert cs == 3
    assert (r0, r1, r2, r3) == (f32(0.005), f32(0.0025), f32(0.00125), f32(0.00125))
    steps = current_steps(cfg, np.arange(30, 45), current_step=0)
    assert steps.tolist() == [1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4, 4]
    assert_same([r0, r1, r2, r3], lr_schedule(cfg, np.arange(30, 34), current_step=0), "resumed schedule")


def test_step_recomputes_current_step():
    cfg = config("step")
    assert learning_rate(cfg, 20, 99)[1] == 2
    assert current_steps(cfg, [0, 6, 7, 20]).tolist() == [0, 0, 1, 2]


def test_poly_beyond_max_iter_is_nan_like_caffe():
    cfg = config("poly")
    with np.errstate(all="ignore"):
        assert np.isnan(learning_rate(cfg, 51)[0])
        assert np.isnan(learning_rate(cfg.replace(max_iter=0), 0)[0])


# ---------------------------------------------------------------------------
# real Caffe: logs and refusals
# ---------------------------------------------------------------------------
RUNS = [p for sub in ("caffe-runs", "caffe-runs-refblas", "caffe-runs-atlas") for p in find_captures(FIXTURES / sub)]


@pytest.mark.parametrize("run", RUNS, ids=[f"{p.parent.name.replace('caffe-runs', 'openblas').replace('openblas-', '')}/{p.name}" for p in RUNS])
def test_rates_print_as_in_caffe_log(run):
    trace = load_capture(run)
    cs = trace.init_current_step
    schedule = lr_schedule(trace.config, [it.iter for it in trace.iterations], current_step=cs)
    for it, r_sched in zip(trace.iterations, schedule):
        r, cs = learning_rate(trace.config, it.iter, cs)
        assert r == r_sched or (np.isnan(r) and np.isnan(r_sched))
        if it.lr is not None:
            assert caffe_float(r) == str(it.lr), f"iteration {it.iter}"
        if it.current_step is not None:
            assert cs == it.current_step


REJECTED = find_captures(FIXTURES / "caffe-runs-rejected")


@pytest.mark.parametrize("run", REJECTED, ids=[p.name for p in REJECTED])
def test_refusals_match_caffe(run):
    trace = load_capture(run)
    assert trace.refusal_when == "first-update"
    with pytest.raises(CaffeRefusal) as e:
        learning_rate(trace.config, 0, 0)
    assert e.value.when == "first-update"
    assert e.value.message.strip() == trace.refusal.strip()
    with pytest.raises(CaffeRefusal):
        lr_schedule(trace.config, 10)


@pytest.mark.parametrize("policy,kw,message", [
    ("", {}, "Unknown learning rate policy: "),
    ("Step", {}, "Unknown learning rate policy: Step"),
    ("step", dict(gamma=0.1), "Check failed: this->param_.stepsize() > 0 (0 vs. 0)"),
    ("step", dict(gamma=-0.1, stepsize=3), "Check failed: this->param_.gamma() >= 0 (-0.1 vs. 0)"),
    ("exp", dict(gamma=-2.0), "Check failed: this->param_.gamma() >= 0 (-2 vs. 0)"),
    ("sigmoid", dict(gamma=0.5), "Check failed: this->param_.stepsize() > 0 (0 vs. 0)"),
])
def test_refusal_messages(policy, kw, message):
    cfg = SolverConfig(lr_policy=policy, base_lr=0.1, **{k: f32(v) if isinstance(v, float) else v for k, v in kw.items()})
    with pytest.raises(CaffeRefusal) as e:
        learning_rate(cfg, 0)
    assert e.value.message.strip() == message.strip()


# ---------------------------------------------------------------------------
# float64 yardstick and speed
# ---------------------------------------------------------------------------
def float_path_bound(cfg: SolverConfig, it: int) -> float:
    """First-order relative error bound of Caffe's float rate vs exact math.

    Each float operation adds ``u``, glibc powf/expf at most one ulp
    (``2u``); an error ``e`` in ``x`` becomes ``|p|*e`` in ``x**p`` and
    ``|a|*e`` in ``exp(a)``. The double paths (step/exp/multistep) round
    once. A factor 2 covers second-order terms.
    """
    p = cfg.lr_policy
    if p in ("fixed", "step", "exp", "multistep"):
        return 2 * U
    if p == "inv":
        return 2 * ((2 * abs(cfg.power) + 3) * U)
    if p == "poly":
        t = it / cfg.max_iter
        e_x = U + U * t / (1 - t) if t < 1 else np.inf
        return 2 * (abs(cfg.power) * e_x + 3 * U)
    if p == "sigmoid":
        a = abs(cfg.gamma * (it - cfg.stepsize))
        return 2 * ((2 * a + 2) * U + 4 * U)
    raise ValueError(p)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_float64_yardstick_within_bound(name):
    cfg = config(name)
    iters = [i for i in ITERS if i < 2**24]
    r32 = lr_schedule(cfg, iters).astype(np.float64)
    r64 = lr_schedule(cfg, iters, dtype=np.float64)
    assert r64.dtype == np.float64
    for it, a, b in zip(iters, r32, r64):
        if not float(np.finfo(np.float32).tiny) <= abs(b) <= float(np.finfo(np.float32).max):  # float range only
            continue
        assert abs(a - b) <= float_path_bound(cfg, it) * abs(b), (it, a, b)
