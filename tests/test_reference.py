"""The reference solver against real Caffe and against the naive twin.

* **every** recorded Caffe run (OpenBLAS, reference BLAS, ATLAS builds)
  replays with 0 mismatched bits in data, diff and history, and the same
  ``current_step``, at every iteration; clipping norms/scales print as in
  the log;
* resuming from any snapshot's ``.solverstate`` continues bit for bit;
* whole steps (clipping + iter_size + L1/L2 + lr_mult 0 ...) equal the naive
  twin in each BLAS profile, including combinations the captures lack;
* refusals and bad input leave the state untouched;
* the float64 profile stays within a bound derived from the float32 path's
  roundings.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import naive
from harness.compare import EXACT, first_divergence, log_float_text
from harness.config import BlobSpec, SolverConfig, f32
from harness.errors import CaffeRefusal, InputError
from harness.io.blobs import params_by_name, read_caffemodel, read_solverstate
from harness.io.capture import find_captures, load_capture
from harness.lr import learning_rate
from harness.reference import PROFILE_FOR_BLAS, PROFILES, Reference, StepRecord, get_profile, profile_for_blas

from conftest import FIXTURES

BUILDS = {"caffe-runs": "openblas", "caffe-runs-refblas": "refblas", "caffe-runs-atlas": "atlas"}
RUNS = [p for sub in BUILDS for p in find_captures(FIXTURES / sub)]
RUN_IDS = [f"{BUILDS[p.parent.name]}/{p.name}" for p in RUNS]
_CLIP_LINE = re.compile(r"Gradient clipping: scaling down gradients \(L2 norm (\S+) > (\S+)\) by scale factor (\S+)")


def test_fixture_runs_are_all_here():
    assert len(RUNS) == 68
    assert {p.parent.name for p in RUNS} == set(BUILDS)


def _check(stage, it, name, expected, got):
    d = first_divergence(np.asarray(expected, np.float32), np.asarray(got, np.float32), EXACT)
    assert d is None, f"iteration {it} {stage} {name}: first mismatch at {d.index}: expected {d.expected!r}, got {d.got!r}"


@pytest.mark.parametrize("run", RUNS, ids=RUN_IDS)
def test_replays_real_caffe_bit_for_bit(run: Path):
    trace = load_capture(run)
    ref = Reference(trace.config, trace.init_params, profile=profile_for_blas(trace.blas), history=trace.init_history,
                    iter=trace.init_iter, current_step=trace.init_current_step)
    clip_lines = [m.groups() for m in map(_CLIP_LINE.search, (run / "caffe.log").read_text().splitlines()) if m]
    clipped = []
    names = trace.config.blob_names
    for it in trace.iterations:
        rec = ref.step(it.grads)
        assert rec.iter == it.iter
        for name in names:
            _check("data", it.iter, name, it.params[name], rec.params[name])
            _check("diff", it.iter, name, it.diff[name], rec.diff[name])
        assert len(rec.history) == len(it.history)
        for k, (e, g) in enumerate(zip(it.history, rec.history)):
            _check("history", it.iter, k, e, g)
        assert rec.current_step == it.current_step
        if rec.scale_factor is not None:
            clipped.append((log_float_text(rec.l2norm_diff), log_float_text(np.float32(trace.config.clip_gradients)),
                            log_float_text(rec.scale_factor)))
    assert clipped == clip_lines
    assert ref.iter == trace.iterations[-1].iter + 1


RESUMES = [r for r in RUNS if r.parent.name == "caffe-runs" and r.name in
           ("sgd-multistep-itersize", "nesterov-poly", "adagrad-step", "rmsprop-sigmoid", "adadelta-multistep",
            "adam-poly-clip-l1", "adam-step-clip-large")]


@pytest.mark.parametrize("run", RESUMES, ids=[r.name for r in RESUMES])
def test_resume_from_solverstate(run: Path):
    trace = load_capture(run)
    k = len(trace.iterations) // 2
    model = params_by_name(read_caffemodel(run / "snapshots" / f"run_iter_{k}.caffemodel"))
    state = read_solverstate(run / "snapshots" / f"run_iter_{k}.solverstate")
    params = {n: model[n].data for n in trace.config.blob_names}
    ref = Reference.from_solverstate(trace.config, params, state, profile=profile_for_blas(trace.blas))
    assert (ref.iter, ref.current_step) == (k, state.current_step)
    for it in trace.iterations[k:]:
        rec = ref.step(it.grads)
        for name in trace.config.blob_names:
            _check("data", it.iter, name, it.params[name], rec.params[name])
        for j, (e, g) in enumerate(zip(it.history, rec.history)):
            _check("history", it.iter, j, e, g)


# ---------------------------------------------------------------------------
# whole steps against the naive twin
# ---------------------------------------------------------------------------
SPECS = (
    BlobSpec("a/0", (3, 7), 1.0, 1.0),
    BlobSpec("a/1", (3,), 2.0, 0.0),
    BlobSpec("b/0", (45,), 0.0, 1.0),
    BlobSpec("c/0", (2, 5), 0.5, 2.0),
)
TWINS = {"caffe-openblas": naive.OPENBLAS, "separate-rounding": naive.REFBLAS, "separate-rounding-atlas": naive.ATLAS}
SOLVERS = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")


def make_config(solver, **kw) -> SolverConfig:
    base = dict(type=solver, base_lr=f32(0.05), lr_policy="inv", gamma=f32(0.01), power=f32(0.75),
                momentum=f32(0.0 if solver in ("AdaGrad", "RMSProp") else 0.9), weight_decay=f32(0.004),
                rms_decay=f32(0.95), blobs=SPECS)
    base.update({k: f32(v) if isinstance(v, float) else v for k, v in kw.items()})
    return SolverConfig(**base)


def gradients(rng, iter_size):
    return [{s.name: (rng.standard_normal(s.shape) * (0 if s.lr_mult == 0 else 1)).astype(np.float32) for s in SPECS}
            for _ in range(iter_size)]


def naive_step(cfg, w, hist, passes, it, cs, blas):
    rate, cs = learning_rate(cfg, it, cs)
    assert rate == naive.rate(cfg.lr_policy, base_lr=cfg.base_lr, gamma=cfg.gamma, power=cfg.power,
                              stepsize=cfg.stepsize, max_iter=cfg.max_iter, it=it, current_step=cs)
    g = {}
    for s in SPECS:
        acc = np.zeros(s.count, np.float32)
        for p in passes:
            acc = acc + p[s.name].reshape(-1)
        g[s.name] = acc
    scale = np.float32(1)
    if cfg.clip_gradients >= 0:
        sumsq = np.float32(0)
        for s in SPECS:
            sumsq = np.float32(sumsq + blas.dot(g[s.name]))
        l2 = np.sqrt(sumsq)  # float32 sqrt
        if l2 > np.float32(cfg.clip_gradients):
            scale = np.float32(np.float32(cfg.clip_gradients) / l2)
    n = len(SPECS)
    for p, s in enumerate(SPECS):
        hs = [hist[p]] if cfg.history_slots == 1 else [hist[p], hist[n + p]]
        naive.apply_update(cfg.type, w[s.name], g[s.name], hs, blas=blas, clip_scale=scale, iter_size=cfg.iter_size,
                           weight_decay=cfg.weight_decay, decay_mult=s.decay_mult,
                           regularization=cfg.regularization_type, rate=rate, lr_mult=s.lr_mult,
                           momentum=cfg.momentum, momentum2=cfg.momentum2, rms_decay=cfg.rms_decay, delta=cfg.delta,
                           iter=it)
    return g, cs


@pytest.mark.parametrize("variant", ["clip-itersize-l1", "plain-multistep", "clip-zero"])
@pytest.mark.parametrize("profile", list(TWINS))
@pytest.mark.parametrize("solver", SOLVERS)
def test_steps_match_naive_twin(solver, profile, variant):
    seed = SOLVERS.index(solver) * 100 + list(TWINS).index(profile) * 10 + ["clip-itersize-l1", "plain-multistep",
                                                                              "clip-zero"].index(variant)
    rng = np.random.default_rng(seed)
    kw = {
        "clip-itersize-l1": dict(clip_gradients=0.75, iter_size=2, regularization_type="L1"),
        "plain-multistep": dict(lr_policy="multistep", gamma=0.5, stepvalue=(1, 2)),
        "clip-zero": dict(clip_gradients=0.0, iter_size=3),
    }[variant]
    cfg = make_config(solver, **kw)
    w0 = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in SPECS}
    ref = Reference(cfg, w0, profile=profile)
    w = {k: v.reshape(-1).copy() for k, v in w0.items()}
    hist = [np.zeros(s.count, np.float32) for _ in range(cfg.history_slots) for s in SPECS]
    cs = 0
    for it in range(3):
        passes = gradients(rng, cfg.iter_size)
        rec = ref.step(passes if cfg.iter_size > 1 else passes[0])
        with np.errstate(all="ignore"):
            g, cs = naive_step(cfg, w, hist, passes, it, cs, TWINS[profile])
        for s in SPECS:
            _check("data", it, s.name, w[s.name], rec.params[s.name].reshape(-1))
            _check("diff", it, s.name, g[s.name], rec.diff[s.name].reshape(-1))
        for k, h in enumerate(hist):
            _check("history", it, k, h, rec.history[k].reshape(-1))
        assert rec.current_step == cs


# ---------------------------------------------------------------------------
# API behaviour
# ---------------------------------------------------------------------------
def small_reference(**kw):
    cfg = make_config("SGD", lr_policy="fixed", **kw)
    params = {s.name: np.ones(s.shape, np.float32) for s in SPECS}
    return cfg, Reference(cfg, params)


def test_step_record_copies_and_views():
    cfg, ref = small_reference()
    g = gradients(np.random.default_rng(0), 1)[0]
    rec = ref.step(g)
    assert isinstance(rec, StepRecord) and rec.iter == 0 and ref.iter == 1
    assert rec.params["a/0"].shape == (3, 7) and rec.history[3].shape == (2, 5)
    before = rec.params["a/0"].copy()
    rec2 = ref.step(g, copy=False)
    assert np.array_equal(rec.params["a/0"], before)  # the copy did not move
    assert not rec2.params["a/0"].flags.writeable
    with pytest.raises(ValueError):
        rec2.history[0][0] = 1
    assert not ref.params["a/0"].flags.writeable
    assert rec.lr == np.float32(0.05) and isinstance(rec.lr, np.float32)


def test_lr_mult_zero_blob_still_decays_and_keeps_history():
    cfg, ref = small_reference()
    g = {s.name: np.zeros(s.shape, np.float32) for s in SPECS}
    rec = ref.step(g)
    # b/0 has lr_mult 0: local_rate 0, so SGD's history is momentum*h = 0, data unchanged ...
    assert np.array_equal(rec.params["b/0"], np.ones(45, np.float32))
    # ... while its diff went through Regularize (decay 0.004 * 1) before the update
    rec2 = Reference(make_config("AdaGrad", lr_policy="fixed", blobs=SPECS),
                     {s.name: np.ones(s.shape, np.float32) for s in SPECS}).step(g)
    assert (rec2.history[2] > 0).all()  # AdaGrad's history accumulated the decayed gradient


def test_refusals_leave_state_untouched():
    cfg, ref = small_reference(regularization_type="L3")
    g = gradients(np.random.default_rng(1), 1)[0]
    with pytest.raises(CaffeRefusal, match="Unknown regularization type: L3") as e:
        ref.step(g)
    assert e.value.when == "first-update"
    assert ref.iter == 0 and np.array_equal(ref.params["a/0"], np.ones((3, 7), np.float32))
    # no weight decay: Caffe never looks at the type
    cfg, ref = small_reference(regularization_type="L3", weight_decay=0.0)
    ref.step(g)
    bad = Reference(make_config("SGD", lr_policy="triangle"), {s.name: np.ones(s.shape, np.float32) for s in SPECS})
    with pytest.raises(CaffeRefusal, match="Unknown learning rate policy: triangle"):
        bad.step(g)
    assert bad.iter == 0


@pytest.mark.parametrize("kw,message", [
    (dict(type="Adamax"), "Unknown solver type: Adamax"),
    (dict(type="AdaGrad", momentum=0.9), "Momentum cannot be used with AdaGrad."),
    (dict(type="RMSProp", momentum=0.0, rms_decay=1.0), "rms_decay should lie between 0 and 1."),
])
def test_start_refusals(kw, message):
    cfg = make_config("SGD").replace(**kw)
    with pytest.raises(CaffeRefusal, match=re.escape(message)) as e:
        Reference(cfg, {s.name: np.ones(s.shape, np.float32) for s in SPECS})
    assert e.value.when == "start"


@pytest.mark.parametrize("mutate,message", [
    (lambda p: p.pop("a/1"), "missing blob"),
    (lambda p: p.update(extra=np.zeros(2, np.float32)), "unknown blob"),
    (lambda p: p.update({"a/0": np.zeros((2, 7), np.float32)}), "a/0"),
])
def test_bad_params(mutate, message):
    cfg = make_config("SGD")
    params = {s.name: np.ones(s.shape, np.float32) for s in SPECS}
    mutate(params)
    with pytest.raises(InputError, match=message):
        Reference(cfg, params)


def test_bad_history_and_gradients():
    cfg = make_config("Adam")
    params = {s.name: np.ones(s.shape, np.float32) for s in SPECS}
    with pytest.raises(InputError, match="Incorrect length of history blobs"):
        Reference(cfg, params, history=[np.zeros(s.shape, np.float32) for s in SPECS])
    ref = Reference(cfg.replace(iter_size=2), params)
    g = gradients(np.random.default_rng(2), 1)
    with pytest.raises(InputError, match="iter_size is 2"):
        ref.step(g)
    g2 = gradients(np.random.default_rng(2), 2)
    g2[1]["c/0"] = np.zeros(3, np.float32)
    with pytest.raises(InputError, match="c/0"):
        ref.step(g2)
    assert ref.iter == 0


def test_profiles_registry():
    assert set(PROFILE_FOR_BLAS.values()) <= set(PROFILES)
    assert get_profile("float64").dtype is np.float64
    with pytest.raises(KeyError, match="known"):
        get_profile("mkl")
    with pytest.raises(KeyError, match="known"):
        profile_for_blas("mkl")


# ---------------------------------------------------------------------------
# the float64 yardstick
# ---------------------------------------------------------------------------
U = 2.0**-24
#: First-order bound on the relative error of the update value (the diff)
#: of one float32 step against the same step in double, for positive data
#: (no cancellation) and a fixed rate. Counted along each solver's chain:
#: the prologue g~ = fl(fl(fl(g*clip)*norm) + fl(decay*w)) carries 3u;
#: local_rate u; every product/sum/quotient u; glibc powf (<= 1 ulp) 2u;
#: x**2 doubles and x**0.5 halves the error in x. Adam adds the rounded
#: correction and fl(local_rate*correction).
DIFF_ULPS = {"SGD": 6, "Nesterov": 8, "AdaGrad": 14, "RMSProp": 15, "AdaDelta": 15, "Adam": 19}


@pytest.mark.parametrize("solver", SOLVERS)
def test_float64_profile_within_derived_bound(solver):
    rng = np.random.default_rng(SOLVERS.index(solver))
    cfg = make_config(solver, lr_policy="fixed", clip_gradients=50.0, iter_size=2)
    w = {s.name: (1 + rng.random(s.shape)).astype(np.float32) for s in SPECS}
    hist = [rng.random(s.shape).astype(np.float32) * 1e-3 for _ in range(cfg.history_slots) for s in SPECS]
    if solver == "Nesterov":
        hist = [np.zeros_like(h) for h in hist]  # (1+mu)h' - mu*h cancels otherwise
    r32 = Reference(cfg, w, history=hist, iter=3)
    r64 = Reference(cfg, w, history=hist, iter=3, profile="float64")
    passes = [{s.name: (rng.random(s.shape) * 20).astype(np.float32) for s in SPECS} for _ in range(2)]
    a, b = r32.step(passes), r64.step(passes)
    assert a.scale_factor is not None  # clipping took part
    factor = 2 * DIFF_ULPS[solver] * U  # 2: second-order terms and slack
    for s in SPECS:
        d32, d64 = a.diff[s.name].astype(np.float64), b.diff[s.name]
        assert b.diff[s.name].dtype == np.float64
        assert (np.abs(d32 - d64) <= factor * np.abs(d64)).all(), s.name
        w32, w64 = a.params[s.name].astype(np.float64), b.params[s.name]
        assert (np.abs(w32 - w64) <= U * np.abs(w64) + factor * np.abs(d64)).all(), s.name
    # and the bound is not vacuous: float32 really differs from double somewhere
    assert any((a.diff[s.name].astype(np.float64) != b.diff[s.name]).any() for s in SPECS)


@pytest.mark.parametrize("module", ["harness.reference", "harness.lr", "harness.kernels.update",
                                    "harness.kernels.lr_policy"])
def test_public_api_is_explicit(module):
    import importlib

    mod = importlib.import_module(module)
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name}"
        obj = getattr(mod, name)
        if callable(obj) and not isinstance(obj, type) and getattr(obj, "__module__", None) == module:
            assert (getattr(obj, "__doc__", None) or getattr(getattr(obj, "py_func", None), "__doc__", None)), \
                f"{module}.{name} has no docstring"
