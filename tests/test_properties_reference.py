"""Metamorphic properties of the reference solver: relations Caffe's arithmetic guarantees.

No real Caffe needed; every property runs the reference on runs drawn by
``harness.strategies`` in each float32 arithmetic profile:

* ``step`` with ``stepsize: 1`` is ``exp`` (same double ``pow``, same bits);
* multistep with evenly spaced stepvalues is step (one advance per call
  keeps up when the steps are evenly spaced), ``current_step`` included;
* Nesterov with ``momentum: 0`` is SGD with ``momentum: 0`` (up to the sign
  of zero: Nesterov adds ``fl(-0*u)`` to the step);
* AdaGrad's first update is RMSProp's with ``rms_decay: 0``;
* a blob with ``lr_mult: 0`` and ``decay_mult: 0`` never changes;
* snapshot-and-resume (caffemodel + solverstate written, read back, and a
  new ``Reference`` built from them) continues bit for bit;
* the float64 profile stays within the derived bound of float32.

Then a planted bug (AdaGrad with ``delta`` inside the square root) must be
found by these properties.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from harness import strategies as hs
from harness.io.blobs import SolverStateData, params_by_name, read_caffemodel, read_solverstate, write_caffemodel, write_solverstate
from harness.lr import lr_schedule
from harness.reference import PROFILES, Reference
from harness.trace import Trace

try:  # the derived float32-vs-float64 bound, once harness.compare exports it
    from harness.compare import FLOAT64_DIFF_ULPS
except ImportError:  # until then: the table tests/test_reference.py derives (see docs/STRATEGIES.md)
    from test_reference import DIFF_ULPS as FLOAT64_DIFF_ULPS

#: the profiles that reproduce a real Caffe build (float64 is a yardstick)
FLOAT32_PROFILES = tuple(name for name, p in PROFILES.items() if p.dtype is np.float32)
profiles = st.sampled_from(FLOAT32_PROFILES)
#: small runs: the properties are about relations, not sizes
MAX_ITERATIONS = 8
SMALL_BLOBS = hs.learnable_blobs(max_blobs=4, max_size=16)
#: float32's unit roundoff
U = 2.0 ** -24


def runs(**options) -> st.SearchStrategy[Trace]:
    """Small runs for the reference (``hs.solver_runs`` with this module's sizes)."""
    options.setdefault("blobs", SMALL_BLOBS)
    options.setdefault("max_iterations", MAX_ITERATIONS)
    return hs.solver_runs(**options)


def replay(trace: Trace, profile: str, *, config=None, reference=Reference) -> list:
    """Every ``StepRecord`` of ``trace`` (with ``config`` swapped in, if given)."""
    ref = reference(config or trace.config, trace.init_params, profile=profile)
    return [ref.step(it.grads) for it in trace.iterations]


def _bits(a) -> np.ndarray:
    a = np.asarray(a)
    return np.ascontiguousarray(a).view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _zero_sign_free(a) -> np.ndarray:
    """Bits after adding +0: -0 becomes +0, every other value keeps its bits."""
    a = np.asarray(a)
    return _bits(a + a.dtype.type(0))


def differences(a: list, b: list, *, lr=True, current_step=True, bits=_bits) -> list[str]:
    """Where two lists of ``StepRecord`` differ (empty: identical under ``bits``)."""
    out = []
    for ra, rb in zip(a, b, strict=True):
        k = ra.iter
        if lr and _bits(ra.lr).tolist() != _bits(rb.lr).tolist():
            out.append(f"iter {k}: lr {ra.lr!r} vs {rb.lr!r}")
        if current_step and ra.current_step != rb.current_step:
            out.append(f"iter {k}: current_step {ra.current_step} vs {rb.current_step}")
        for stage in ("params", "diff"):
            for name, x in getattr(ra, stage).items():
                y = getattr(rb, stage)[name]
                if not np.array_equal(bits(x), bits(y)):
                    i = int(np.flatnonzero(bits(x).ravel() != bits(y).ravel())[0])
                    out.append(f"iter {k}: {stage} {name}[{i}] {x.ravel()[i]!r} vs {y.ravel()[i]!r}")
        for j, (x, y) in enumerate(zip(ra.history, rb.history, strict=True)):
            if not np.array_equal(bits(x), bits(y)):
                i = int(np.flatnonzero(bits(x).ravel() != bits(y).ravel())[0])
                out.append(f"iter {k}: history[{j}][{i}] {x.ravel()[i]!r} vs {y.ravel()[i]!r}")
    return out


# ---------------------------------------------------------------------------
# learning-rate relations
# ---------------------------------------------------------------------------
@given(run=runs(lr_policies=["exp"]), profile=profiles)
def test_step_with_stepsize_1_is_exp(run, profile):
    cfg = run.config
    as_step = cfg.replace(lr_policy="step", stepsize=1)
    # current_step differs by design: step recomputes it (iter / 1), exp leaves it
    assert differences(replay(run, profile), replay(run, profile, config=as_step), current_step=False) == []


@given(config=hs.solver_parameters(lr_policies=["exp"], blobs=()), n=st.integers(1, 5000))
def test_step_with_stepsize_1_is_exp_over_long_schedules(config, n):
    as_step = config.replace(lr_policy="step", stepsize=1)
    assert np.array_equal(_bits(lr_schedule(config, n)), _bits(lr_schedule(as_step, n)))


def _evenly_spaced(stepsize: int, iterations: int) -> tuple[int, ...]:
    return tuple(range(stepsize, iterations + stepsize + 1, stepsize))


@given(run=runs(lr_policies=["step"]), profile=profiles)
def test_multistep_with_evenly_spaced_stepvalues_is_step(run, profile):
    cfg = run.config
    as_multistep = cfg.replace(lr_policy="multistep", stepvalue=_evenly_spaced(cfg.stepsize, cfg.max_iter))
    assert differences(replay(run, profile), replay(run, profile, config=as_multistep)) == []


@given(config=hs.solver_parameters(lr_policies=["step"], blobs=()), n=st.integers(1, 5000), stepsize=st.integers(1, 700))
def test_multistep_with_evenly_spaced_stepvalues_is_step_over_long_schedules(config, n, stepsize):
    as_step = config.replace(stepsize=stepsize)
    as_multistep = config.replace(lr_policy="multistep", stepvalue=_evenly_spaced(stepsize, n))
    assert np.array_equal(_bits(lr_schedule(as_step, n)), _bits(lr_schedule(as_multistep, n)))


# ---------------------------------------------------------------------------
# solver relations
# ---------------------------------------------------------------------------
@given(run=runs(solver_types=["SGD"]), profile=profiles)
def test_nesterov_without_momentum_is_sgd(run, profile):
    sgd = run.config.replace(momentum=0.0)
    nesterov = sgd.replace(type="Nesterov")
    # Nesterov's step is fma(fl(1+0), h, fl(-0*h_old)): a -0 step comes out +0
    assert differences(replay(run, profile, config=sgd), replay(run, profile, config=nesterov),
                       bits=_zero_sign_free) == []


@given(run=runs(solver_types=["AdaGrad"], max_iterations=1), profile=profiles)
def test_adagrad_first_update_is_rmsprop_without_decay(run, profile):
    rmsprop = run.config.replace(type="RMSProp", rms_decay=0.0)
    assert differences(replay(run, profile), replay(run, profile, config=rmsprop)) == []


def _freeze(run: Trace, index: int, *, zero_gradient: bool) -> Trace:
    """``run`` with blob ``index`` at ``lr_mult: 0``, ``decay_mult: 0`` (and Caffe's zero diff)."""
    import dataclasses

    cfg = run.config
    blobs = list(cfg.blobs)
    frozen = blobs[index] = dataclasses.replace(blobs[index], lr_mult=0.0, decay_mult=0.0)
    iterations = run.iterations
    if zero_gradient:
        iterations = [dataclasses.replace(it, grads=[{**g, frozen.name: np.zeros(frozen.shape, np.float32)}
                                                      for g in it.grads]) for it in iterations]
    return dataclasses.replace(run, config=dataclasses.replace(cfg, blobs=tuple(blobs)), iterations=iterations)


@given(run=runs(), profile=profiles, data=st.data())
def test_frozen_undecayed_blob_never_changes(run, profile, data):
    index = data.draw(st.integers(0, len(run.config.blobs) - 1), label="frozen blob")
    run = _freeze(run, index, zero_gradient=True)
    name = run.config.blobs[index].name
    start = _bits(run.init_params[name])
    for rec in replay(run, profile):
        assert np.array_equal(_bits(rec.params[name]), start), f"iteration {rec.iter} changed {name}"


@given(run=runs(), profile=profiles, data=st.data())
def test_frozen_undecayed_blob_keeps_its_values_whatever_its_gradient(run, profile, data):
    index = data.draw(st.integers(0, len(run.config.blobs) - 1), label="frozen blob")
    run = _freeze(run, index, zero_gradient=False)
    name = run.config.blobs[index].name
    start = run.init_params[name]
    for rec in replay(run, profile):
        # a gradient Caffe would never produce (it is 0 for lr_mult 0) can flip a -0 weight to +0
        assert np.array_equal(_zero_sign_free(rec.params[name]), _zero_sign_free(start)), (
            f"iteration {rec.iter} changed {name}")


# ---------------------------------------------------------------------------
# snapshot and resume
# ---------------------------------------------------------------------------
def _snapshot(folder: Path, k: int, cfg, rec, fmt: str) -> tuple[Path, Path]:
    """Write the state after update ``k-1`` as Caffe snapshots it (``_iter_{k}``)."""
    ext = ".h5" if fmt == "hdf5" else ""
    model = folder / f"run_iter_{k}.caffemodel{ext}"
    state = folder / f"run_iter_{k}.solverstate{ext}"
    layers: dict[str, list[np.ndarray]] = {}
    for b in cfg.blobs:
        layers.setdefault(b.layer, []).append(rec.params[b.name])
    write_caffemodel(model, layers)
    write_solverstate(state, SolverStateData(iter=k, current_step=rec.current_step, learned_net=str(model),
                                             history=list(rec.history)))
    return model, state


@given(run=runs(min_iterations=2), profile=profiles,
       fmt=st.sampled_from(["binaryproto", "hdf5"]), data=st.data())
def test_resume_from_snapshot_is_bit_identical(run, profile, fmt, data):
    cfg = run.config
    k = data.draw(st.integers(1, cfg.max_iter - 1), label="snapshot after iteration")
    straight = replay(run, profile)
    with tempfile.TemporaryDirectory(prefix="resume-") as tmp:
        model, state_path = _snapshot(Path(tmp), k, cfg, straight[k - 1], fmt)
        state = read_solverstate(state_path)
        params = {name: blob.data for name, blob in params_by_name(read_caffemodel(state.learned_net)).items()}
    assert state.iter == k
    resumed = Reference.from_solverstate(cfg, params, state, profile=profile)
    rest = [resumed.step(it.grads) for it in run.iterations[k:]]
    assert differences(straight[k:], rest) == []


# ---------------------------------------------------------------------------
# the float64 yardstick
# ---------------------------------------------------------------------------
@st.composite
def positive_steps(draw):
    """One update from a state without cancellation: positive weights, history and gradients.

    The bound derived in tests/test_reference.py holds there: fixed rate,
    weights in [1, 2], history 0 or in [2^-100, 1e-3] (zero for Nesterov, whose
    ``(1+mu)h' - mu*h`` cancels otherwise), gradients in [1e-3, 20] (no
    underflow), L2 or L1 decay adding to the gradient, clipping and
    iter_size included.
    """
    cfg = draw(hs.solver_parameters(lr_policies=["fixed"], blobs=SMALL_BLOBS, max_iterations=1))

    def positive(bound: float, offset: float) -> dict[str, np.ndarray]:
        drawn = draw(hs.initial_weights(cfg.blobs, bound=bound))
        # values below 2^-100 become 0: a subnormal history would underflow, outside the derived bound
        return {n: np.where(np.abs(a) < 2.0**-100, np.float32(0), np.abs(a)) + np.float32(offset)
                for n, a in drawn.items()}

    w = positive(1.0, 1.0)
    history = None
    if cfg.type != "Nesterov":
        history = [positive(1e-3, 0.0)[b.name] for _ in range(cfg.history_slots) for b in cfg.blobs]
    passes = [positive(20.0, 1e-3) for _ in range(cfg.iter_size)]
    for p in passes:  # Caffe's diff of a frozen blob is 0
        p.update({b.name: np.zeros(b.shape, np.float32) for b in cfg.blobs if b.lr_mult == 0})
    return cfg, w, history, passes


@given(step=positive_steps())
def test_float64_profile_within_derived_bound_of_float32(step):
    cfg, w, history, passes = step
    r32 = Reference(cfg, w, history=history)
    r64 = Reference(cfg, w, history=history, profile="float64")
    a, b = r32.step(passes), r64.step(passes)
    factor = 2 * FLOAT64_DIFF_ULPS[cfg.type] * U  # 2: second-order terms and slack, as derived
    for spec in cfg.blobs:
        d32, d64 = a.diff[spec.name].astype(np.float64), b.diff[spec.name]
        assert d64.dtype == np.float64
        assert np.all(np.abs(d32 - d64) <= factor * np.abs(d64)), spec.name
        w32, w64 = a.params[spec.name].astype(np.float64), b.params[spec.name]
        assert np.all(np.abs(w32 - w64) <= U * np.abs(w64) + factor * np.abs(d64)), spec.name


# ---------------------------------------------------------------------------
# a planted bug is found
# ---------------------------------------------------------------------------
def adagrad_in_python(*, delta_inside_sqrt: bool):
    """AdaGrad's kernel in plain Python over the kernel module's helpers.

    ``delta_inside_sqrt=True`` is the planted bug a misport might make:
    ``g / sqrt(h + delta)`` instead of Caffe's ``g / (sqrt(h) + delta)``;
    ``False`` is the faithful twin (the control: it must pass).
    """
    from harness.kernels import update as k

    def adagrad_update(w, g, h, clip_scale, norm, reg, local_decay, local_rate, delta, fused, zero_fill):
        t = w.dtype.type  # called from Python, numba's scalar helpers return Python floats
        for i in range(w.size):
            gi = t(k._prologue(w[i], g[i], clip_scale, norm, reg, local_decay, fused, zero_fill, True))
            hi = t(t(k.powf(gi, t(2))) + h[i])
            h[i] = hi
            if delta_inside_sqrt:
                u = t(gi / t(k.powf(t(hi + delta), t(0.5))))
            else:
                u = t(gi / t(t(k.powf(hi, t(0.5))) + delta))
            gi = t(k.axpby(local_rate, u, t(0), gi, fused, zero_fill))
            g[i] = gi
            w[i] = w[i] - gi

    return adagrad_update


class PlantedBug(Exception):
    """A property run against a planted bug failed, as it should."""


def _adagrad_property_under(kernel, monkeypatch, max_examples: int):
    """Run the AdaGrad-is-RMSProp property with ``kernel`` as AdaGrad's; raise ``PlantedBug`` on failure."""
    from harness.kernels import update as k

    monkeypatch.setattr(k, "adagrad_update", kernel)

    @settings(max_examples=max_examples, phases=[Phase.generate], database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(run=runs(solver_types=["AdaGrad"], max_iterations=1), profile=profiles)
    def property_under_bug(run, profile):
        rmsprop = run.config.replace(type="RMSProp", rms_decay=0.0)
        found = differences(replay(run, profile), replay(run, profile, config=rmsprop))
        if found:
            raise PlantedBug(found[0])

    property_under_bug()


def test_metamorphic_property_finds_planted_adagrad_bug(monkeypatch):
    with pytest.raises(PlantedBug, match="iter 0"):
        _adagrad_property_under(adagrad_in_python(delta_inside_sqrt=True), monkeypatch, max_examples=200)


def test_planted_bug_control_faithful_python_adagrad_passes(monkeypatch):
    # the failure above is the planted bug's, not the Python re-implementation's
    _adagrad_property_under(adagrad_in_python(delta_inside_sqrt=False), monkeypatch, max_examples=30)
