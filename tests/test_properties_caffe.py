"""Differential properties against real Caffe 1.0: drawn runs, captured live, replayed bit for bit.

Each example draws solver settings, blobs, initial weights and an injectable
gradient stream (``harness.strategies``), runs real Caffe on them through
``harness.oracle.capture`` with one of the three BLAS builds, loads the
capture and replays it through the reference in that build's arithmetic
profile. Every history, diff and param bit must match at every iteration,
and the rate must print as Caffe printed it.

A failing example is also kept as a capture folder under
``.hypothesis/failures/<id>/``; ``caffe-harness replay <that folder>``
reproduces it without hypothesis (the path is printed by ``note()``).

Needs real Caffe (``tools/install-caffe``): skipped with the reason when it
is not installed, a failure under ``CI=true``. Spread a large sweep over
cores with ``HYPOTHESIS_PROFILE=nightly pytest -n auto tests/test_properties_caffe.py``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from harness import strategies as hs
from harness.config import caffe_float, config_refusals, update_refusals
from harness.errors import CaffeRefusal, OracleUnavailable
from harness.io.capture import load_capture
from harness.oracle import BLAS_CHOICES, capture, find_caffe
from harness.reference import Reference, profile_for_blas
from harness.trace import Trace

pytestmark = pytest.mark.oracle

ROOT = Path(__file__).resolve().parent.parent
FAILURES = ROOT / ".hypothesis" / "failures"

#: no shrink phase: every shrink step is a Caffe run, and a failure is kept
#: as a small capture folder anyway (see ``keep_failure``)
NO_SHRINK = settings(phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target])

#: small enough that one example (a Caffe run, a load, a replay) takes ~0.3 s
SMALL_BLOBS = hs.learnable_blobs(max_blobs=3, max_size=12)
MAX_ITERATIONS = 4


@pytest.fixture(scope="module")
def caffe():
    """The real Caffe install; skip (fail under CI=true) when it is missing."""
    try:
        return find_caffe()
    except OracleUnavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true needs real Caffe for the differential properties: {e}")
        pytest.skip(str(e))


@st.composite
def caffe_examples(draw, *, valid: bool = True):
    """(blas, run): a BLAS build and the inputs of a small run real Caffe can reproduce."""
    blas = draw(st.sampled_from(BLAS_CHOICES))
    special = valid and draw(st.integers(0, 4)) == 0
    run = draw(hs.solver_runs(injectable=True, allow_special=special, valid=valid, blobs=SMALL_BLOBS,
                              max_iterations=MAX_ITERATIONS if valid else 2))
    return blas, run


def _events(blas: str, run: Trace) -> None:
    cfg = run.config
    event(f"blas={blas}")
    event(f"type={cfg.type}")
    event(f"lr_policy={cfg.lr_policy}")
    for tag, on in (("clip", cfg.clip_gradients >= 0), ("iter_size>1", cfg.iter_size > 1),
                    ("lr_mult=0", any(b.lr_mult == 0 for b in cfg.blobs)),
                    ("nan/inf gradients", any(not np.isfinite(a).all() for it in run.iterations
                                              for g in it.grads for a in g.values()))):
        if on:
            event(tag)


def _gradient_arrays(run: Trace) -> dict[str, np.ndarray]:
    """The run's gradients as ``grad/<k>/<p>/<blob>`` arrays (what ``capture`` decomposes)."""
    return {f"grad/{it.iter}/{p}/{name}": a for it in run.iterations for p, g in enumerate(it.grads) for name, a in g.items()}


def _capture(caffe, blas: str, run: Trace, out: Path):
    return capture(run.config, None, _gradient_arrays(run), out, blas=blas, init=run.init_params, install=caffe)


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def first_difference(trace: Trace, profile: str, reference=Reference) -> str | None:
    """Replay ``trace`` and describe the first bit that differs from Caffe's (``None``: all match)."""
    cfg = trace.config
    ref = reference(cfg, trace.init_params, profile=profile, history=trace.init_history,
                    iter=trace.init_iter, current_step=trace.init_current_step)
    hist_names = [f"history[{i}]" for i in range(len(cfg.blobs) * cfg.history_slots)]
    for it in trace.iterations:
        rec = ref.step(it.grads)
        if it.lr is not None:
            ours = caffe_float(np.float32(rec.lr)) if isinstance(it.lr, str) else float(np.float32(rec.lr))
            expected = it.lr if isinstance(it.lr, str) else float(np.float32(it.lr))
            if ours != expected:
                return f"iter {it.iter}: lr printed {expected!r} by Caffe, {ours!r} by the reference"
        for stage, expected, got, names in (
            ("history", it.history, rec.history, hist_names),
            ("diff", it.diff, rec.diff, None),
            ("params", it.params, rec.params, None),
        ):
            if expected is None:
                continue
            pairs = zip(names, expected, got) if names else ((n, expected[n], got[n]) for n in expected)
            for name, e, g in pairs:
                e, g = np.asarray(e, np.float32), np.asarray(g, np.float32)
                if e.shape != g.shape:
                    return f"iter {it.iter} {stage} {name}: shape {e.shape} from Caffe, {g.shape} from the reference"
                bad = np.flatnonzero(_bits(e).ravel() != _bits(g).ravel())
                if bad.size:
                    i = int(bad[0])
                    return (f"iter {it.iter} {stage} {name}[{i}]: Caffe {e.ravel()[i]!r}, reference "
                            f"{g.ravel()[i]!r} ({bad.size} of {e.size} elements differ)")
        if it.current_step is not None and int(it.current_step) != int(rec.current_step):
            return f"iter {it.iter}: current_step {it.current_step} from Caffe, {rec.current_step} from the reference"
    return None


def keep_failure(capture_dir: Path) -> Path:
    """Copy a failing capture to ``.hypothesis/failures/<id>/`` (id: hash of its inputs)."""
    h = hashlib.sha256()
    for name in ("solver.prototxt", "net.prototxt", "gradients.npz", "config.json"):
        p = capture_dir / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    dest = FAILURES / h.hexdigest()[:16]
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        shutil.copytree(capture_dir, tmp, dirs_exist_ok=True)
        os.replace(tmp, dest)
    return dest


def check_against_caffe(caffe, blas: str, run: Trace, reference=Reference, *, keep: bool = True) -> None:
    """The differential property: Caffe accepts the run and the reference matches every bit.

    ``keep``: copy a failing capture to ``.hypothesis/failures/`` (off for planted bugs).
    """
    with tempfile.TemporaryDirectory(prefix="caffe-property-") as tmp:
        out = Path(tmp) / "run"
        res = _capture(caffe, blas, run, out)
        assert not res.refused, f"real Caffe refused settings drawn as valid: {res.fatal}"
        trace = load_capture(out)
        for ours, theirs in zip(run.iterations, trace.iterations):
            for p, (g_ours, g_theirs) in enumerate(zip(ours.grads, theirs.grads)):
                for name in g_ours:
                    assert np.array_equal(_bits(g_ours[name]), _bits(g_theirs[name])), (
                        f"the capture does not hold the drawn gradient of {name}, iteration {ours.iter} pass {p}")
        problem = first_difference(trace, profile_for_blas(blas), reference)
        if problem is not None and keep:
            kept = keep_failure(out)
            note(f"failing capture kept in {kept}; reproduce with: caffe-harness replay {kept}")
        assert problem is None, f"{blas} build, {run.config.type}/{run.config.lr_policy}: {problem}"


@NO_SHRINK
@given(example=caffe_examples())
def test_reference_matches_live_caffe(caffe, example):
    blas, run = example
    _events(blas, run)
    check_against_caffe(caffe, blas, run)


@NO_SHRINK
@given(example=caffe_examples(valid=False))
def test_caffe_and_harness_refuse_alike(caffe, example):
    blas, run = example
    cfg = run.config
    ours = (config_refusals(cfg) + update_refusals(cfg))
    assert ours, "a config drawn with valid=False must be refused by the harness"
    event(f"refused at {ours[0].when}: {ours[0].message.split(' (')[0].split(':')[0]}")
    with tempfile.TemporaryDirectory(prefix="caffe-refusal-") as tmp:
        out = Path(tmp) / "run"
        res = _capture(caffe, blas, run, out)
        assert res.refused, f"real Caffe accepted a config drawn as refused; the harness says {ours[0].message!r}"
        assert res.fatal == ours[0].message
        trace = load_capture(out)
    assert (trace.refusal or "").strip() == ours[0].message
    assert trace.refusal_when == ours[0].when
    if ours[0].when == "first-update":
        ref = Reference(cfg, run.init_params)
        with pytest.raises(CaffeRefusal) as info:
            ref.step(run.iterations[0].grads)
        assert info.value.message == ours[0].message


# ---------------------------------------------------------------------------
# a planted bug is found
# ---------------------------------------------------------------------------
class Found(Exception):
    """Raised by a property run against a planted bug when the bug shows."""


class _NesterovOnePlusMomentumRoundedUp(Reference):
    """A plausible misport: ``fl(1+momentum)`` rounded up instead of to nearest."""

    def _update_all(self, rate, clip_scale, norm):
        from harness.kernels import update as k

        original = k.nesterov_update

        def mutated(*args):
            args = list(args)
            # (..., local_rate, momentum, one_plus_momentum, neg_momentum, fused, zero_fill)
            args[-4] = np.nextafter(args[-4], type(args[-4])(np.inf))
            return original(*args)

        k.nesterov_update = mutated
        try:
            super()._update_all(rate, clip_scale, norm)
        finally:
            k.nesterov_update = original


def test_differential_property_finds_a_planted_nesterov_bug(caffe):
    found = []

    @settings(max_examples=40, phases=[Phase.generate], database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(example=caffe_examples(), data=st.data())
    def run(example, data):
        blas, trace = example
        momentum = data.draw(st.sampled_from([np.float32(0.9), np.float32(0.5), np.float32(0.99)]))
        cfg = trace.config.replace(type="Nesterov", momentum=momentum)
        trace.config = cfg
        try:
            check_against_caffe(caffe, blas, trace, reference=_NesterovOnePlusMomentumRoundedUp, keep=False)
        except AssertionError as e:
            found.append(str(e))
            raise Found() from None

    with pytest.raises(Found):
        run()
    assert found and "Nesterov" in found[0]
