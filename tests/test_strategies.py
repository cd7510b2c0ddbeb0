"""harness.strategies: what each strategy draws, and how bad arguments are refused."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument, NonInteractiveExampleWarning

from harness import strategies as hs
from harness.config import (LR_POLICIES, REGULARIZATION_TYPES, SOLVER_TYPES, BlobSpec, config_refusals, f32,
                            update_refusals)
from harness.oracle import injection_from_gradients, parse_layers
from harness.reference import Reference

BLOBS = (BlobSpec("ip0/0", (3, 2), 1.0, 1.0), BlobSpec("ip0/1", (3,), 2.0, 0.0), BlobSpec("ip1/0", (1, 3), 0.0, 1.0))
#: the words of the message Caffe prints for each planted fault
REFUSAL_TEXT = {
    "type": "Unknown solver type: ",
    "average_loss": "average_loss should be non-negative.",
    "momentum": "Momentum cannot be used with ",
    "rms_decay": "rms_decay should lie between 0 and 1.",
    "lr_policy": "Unknown learning rate policy: ",
    "gamma": "Check failed: this->param_.gamma() >= 0 ",
    "stepsize": "Check failed: this->param_.stepsize() > 0 ",
    "regularization_type": "Unknown regularization type: ",
}


def _f32_exact(x: float) -> bool:
    return float(np.float32(x)) == x


class _Reached(Exception):
    pass


def reaches(strategy, predicate, *, max_examples: int = 300) -> bool:
    """Whether ``strategy`` draws a value satisfying ``predicate`` (derandomized, no shrinking)."""

    @settings(max_examples=max_examples, phases=[Phase.generate], database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def search(value):
        if predicate(value):
            raise _Reached

    try:
        search()
    except _Reached:
        return True
    return False


# ---------------------------------------------------------------------------
# the public API
# ---------------------------------------------------------------------------
def test_public_api_is_explicit_and_documented():
    for name in hs.__all__:
        obj = getattr(hs, name)
        if callable(obj):
            assert obj.__doc__ and ">>>" in obj.__doc__, f"{name} needs a docstring with an example"
    strategies = [n for n in hs.__all__ if callable(getattr(hs, n))]
    assert all(n.endswith("s") for n in strategies), "strategy names are plural nouns"
    assert set(hs.REFUSAL_KINDS) == set(REFUSAL_TEXT)


def test_docstring_examples_run():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonInteractiveExampleWarning)
        result = doctest.testmod(hs, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 10 and result.failed == 0


BAD_ARGUMENTS = [
    ("solver-type-unknown", lambda: hs.solver_parameters(solver_types=["sgd"]), "solver_types=['sgd']"),
    ("solver-types-a-string", lambda: hs.solver_parameters(solver_types="SGD"), "solver_types='SGD'"),
    ("solver-types-empty", lambda: hs.solver_parameters(solver_types=[]), "solver_types=[]"),
    ("lr-policy-unknown", lambda: hs.solver_parameters(lr_policies=["cosine"]), "lr_policies=['cosine']"),
    ("valid-not-bool", lambda: hs.solver_parameters(valid=1), "valid=1"),
    ("max-iterations-zero", lambda: hs.solver_parameters(max_iterations=0), "max_iterations=0"),
    ("min-above-max-iterations", lambda: hs.solver_parameters(min_iterations=5, max_iterations=4), "min_iterations=5"),
    ("max-iter-size-float", lambda: hs.solver_parameters(max_iter_size=2.0), "max_iter_size=2.0"),
    ("clip-not-bool", lambda: hs.solver_parameters(clip="yes"), "clip='yes'"),
    ("regularization-unknown", lambda: hs.solver_parameters(regularization_types=["L3"]), "regularization_types=['L3']"),
    ("refusals-with-valid", lambda: hs.solver_parameters(refusals=["gamma"]), "refusals=['gamma']"),
    ("refusal-unknown", lambda: hs.solver_parameters(valid=False, refusals=["delta"]), "refusals=['delta']"),
    ("refusal-impossible", lambda: hs.solver_parameters(valid=False, solver_types=["SGD"], refusals=["momentum"]),
     "refusals=['momentum']"),
    ("blobs-not-blobspecs", lambda: hs.solver_parameters(blobs=[("ip0/0", (2, 2))]), "blobs=[('ip0/0', (2, 2))]"),
    ("blobs-duplicate", lambda: hs.solver_parameters(blobs=[BLOBS[0], BLOBS[0]]), "'ip0/0' appears twice"),
    ("types-valid-not-bool", lambda: hs.solver_types(valid=None), "valid=None"),
    ("policies-valid-not-bool", lambda: hs.lr_policies(valid="no"), "valid='no'"),
    ("max-blobs-zero", lambda: hs.learnable_blobs(max_blobs=0), "max_blobs=0"),
    ("min-above-max", lambda: hs.learnable_blobs(min_blobs=3, max_blobs=2), "max_blobs=2"),
    ("max-size-negative", lambda: hs.learnable_blobs(max_size=-1), "max_size=-1"),
    ("lr-mult-inexact", lambda: hs.learnable_blobs(lr_mults=[0.1]), "lr_mults=[0.1]"),
    ("decay-mult-nan", lambda: hs.learnable_blobs(decay_mults=[math.nan]), "decay_mults=[nan]"),
    ("stream-blobs-empty", lambda: hs.gradient_streams((), 2), "blobs=()"),
    ("stream-iterations-zero", lambda: hs.gradient_streams(BLOBS, 0), "iterations=0"),
    ("stream-iter-size-bool", lambda: hs.gradient_streams(BLOBS, 2, iter_size=True), "iter_size=True"),
    ("stream-special-not-bool", lambda: hs.gradient_streams(BLOBS, 2, allow_special=1), "allow_special=1"),
    ("stream-frozen-not-bool", lambda: hs.gradient_streams(BLOBS, 2, frozen_zero=0), "frozen_zero=0"),
    ("injectable-not-a-layer", lambda: hs.injectable_gradient_streams((BlobSpec("ip0/0", (2, 2, 2)),), 1),
     "layer 'ip0'"),
    ("injectable-bias-shape", lambda: hs.injectable_gradient_streams(
        (BlobSpec("ip0/0", (2, 3)), BlobSpec("ip0/1", (3,))), 1), "bias 'ip0/1' has shape (3,)"),
    ("injectable-bad-name", lambda: hs.injectable_gradient_streams((BlobSpec("conv", (2, 3)),), 1), "'conv'"),
    ("weights-bound-negative", lambda: hs.initial_weights(BLOBS, bound=-1.0), "bound=-1.0"),
    ("runs-injectable-not-bool", lambda: hs.solver_runs(injectable="yes"), "injectable='yes'"),
]


@pytest.mark.parametrize("make, words", [(m, w) for _, m, w in BAD_ARGUMENTS], ids=[i for i, _, _ in BAD_ARGUMENTS])
def test_bad_arguments_are_refused_naming_argument_and_value(make, words):
    with pytest.raises(InvalidArgument) as info:
        make()
    assert words in str(info.value)


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------
@given(st.data())
def test_names_are_caffes_or_refused_by_caffe(data):
    assert data.draw(hs.solver_types()) in SOLVER_TYPES
    assert data.draw(hs.lr_policies()) in LR_POLICIES
    assert data.draw(hs.solver_types(valid=False)) not in SOLVER_TYPES
    assert data.draw(hs.lr_policies(valid=False)) not in LR_POLICIES


# ---------------------------------------------------------------------------
# blobs
# ---------------------------------------------------------------------------
@given(blobs=hs.learnable_blobs(min_blobs=2, max_blobs=5, max_size=20))
def test_learnable_blobs_are_injection_layers(blobs):
    assert 2 <= len(blobs) <= 5
    assert len({b.name for b in blobs}) == len(blobs)
    layers = parse_layers(blobs)  # the oracle's injection net accepts them
    assert sum(1 + l.bias for l in layers) == len(blobs)
    for b in blobs:
        assert b.lr_mult in hs.LR_MULTS and b.decay_mult in hs.DECAY_MULTS
        assert _f32_exact(b.lr_mult) and _f32_exact(b.decay_mult)
        if b.index == 0:
            assert len(b.shape) == 2 and b.count <= 20
        else:
            assert b.shape == (blobs[[x.name for x in blobs].index(f"{b.layer}/0")].shape[0],)


def test_learnable_blobs_reach_frozen_biased_and_big_layers():
    assert reaches(hs.learnable_blobs(), lambda bs: any(b.lr_mult == 0 for b in bs) and any(b.index == 1 for b in bs))
    assert reaches(hs.learnable_blobs(max_size=32), lambda bs: any(b.count == 32 for b in bs))


# ---------------------------------------------------------------------------
# solver settings
# ---------------------------------------------------------------------------
@given(cfg=hs.solver_parameters(min_iterations=2, max_iterations=10, max_iter_size=3))
def test_valid_settings_are_accepted_and_in_range(cfg):
    assert config_refusals(cfg) == [] and update_refusals(cfg) == []
    assert cfg.type in SOLVER_TYPES and cfg.lr_policy in LR_POLICIES
    assert 2 <= cfg.max_iter <= 10 and 1 <= cfg.iter_size <= 3
    for name in ("base_lr", "gamma", "power", "momentum", "momentum2", "delta", "rms_decay", "weight_decay",
                 "clip_gradients"):
        value = getattr(cfg, name)
        assert math.isfinite(value) and _f32_exact(value), name
    assert f32(1e-4) <= cfg.base_lr <= 1 and 0 <= cfg.weight_decay <= f32(0.05)
    assert cfg.clip_gradients == -1 or 0 <= cfg.clip_gradients <= 10
    assert cfg.regularization_type in REGULARIZATION_TYPES
    assert list(cfg.stepvalue) == sorted(set(cfg.stepvalue))
    if cfg.type in ("AdaGrad", "RMSProp"):
        assert cfg.momentum == 0
    assert 0 <= cfg.momentum <= f32(0.99) and 0 <= cfg.rms_decay < 1
    assert cfg.blobs and all(isinstance(b, BlobSpec) for b in cfg.blobs)


@given(cfg=hs.solver_parameters(solver_types=["Nesterov", "Adam"], lr_policies=["poly", "inv"], blobs=BLOBS, clip=True))
def test_settings_follow_the_options(cfg):
    assert cfg.type in ("Nesterov", "Adam") and cfg.lr_policy in ("poly", "inv")
    assert cfg.blobs == BLOBS and cfg.clip_gradients >= 0


@given(cfg=hs.solver_parameters(clip=False, blobs=()))
def test_settings_without_clip_or_net(cfg):
    assert cfg.clip_gradients == -1 and cfg.blobs == ()


def test_settings_reach_what_other_policies_refuse():
    # fixed and poly never read gamma or stepsize: Caffe accepts anything there
    assert reaches(hs.solver_parameters(lr_policies=["fixed", "poly"]), lambda c: c.gamma < 0 and c.stepsize <= 0)
    assert reaches(hs.solver_parameters(clip=True), lambda c: c.clip_gradients == 0)


@pytest.mark.parametrize("kind", hs.REFUSAL_KINDS)
def test_refused_settings_plant_exactly_the_fault_asked_for(kind):
    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(cfg=hs.solver_parameters(valid=False, refusals=[kind]))
    def check(cfg):
        refusals = config_refusals(cfg) + update_refusals(cfg)
        assert len(refusals) == 1, [r.message for r in refusals]
        assert REFUSAL_TEXT[kind].strip() in refusals[0].message
        assert refusals[0].when == ("start" if kind in hs.START_REFUSALS else "first-update")

    check()


@given(cfg=hs.solver_parameters(valid=False, blobs=(BlobSpec("ip0/0", (2, 2), 1.0, 0.0),)))
def test_refused_settings_skip_faults_the_net_cannot_carry(cfg):
    # no blob is decayed, so an unknown regularization_type is never reached: not planted
    refusals = config_refusals(cfg) + update_refusals(cfg)
    assert len(refusals) == 1 and "regularization" not in refusals[0].message


def test_refused_settings_reach_every_kind():
    for kind, text in REFUSAL_TEXT.items():
        assert reaches(hs.solver_parameters(valid=False, blobs=hs.learnable_blobs(max_size=4)), lambda c, t=text.strip(): any(
            t in r.message for r in config_refusals(c) + update_refusals(c))), kind


# ---------------------------------------------------------------------------
# weights and gradients
# ---------------------------------------------------------------------------
@given(w=hs.initial_weights(BLOBS))
def test_initial_weights_match_the_blobs(w):
    assert list(w) == [b.name for b in BLOBS]
    for b in BLOBS:
        assert w[b.name].shape == b.shape and w[b.name].dtype == np.float32
        assert np.all(np.abs(w[b.name]) <= 4)


@given(stream=hs.gradient_streams(BLOBS, 3, iter_size=2))
def test_gradient_streams_have_the_blobs_shapes(stream):
    assert len(stream) == 3 and all(len(passes) == 2 for passes in stream)
    for passes in stream:
        for g in passes:
            assert list(g) == [b.name for b in BLOBS]
            for b in BLOBS:
                assert g[b.name].shape == b.shape and g[b.name].dtype == np.float32
                assert np.all(np.isfinite(g[b.name])) and np.all(np.abs(g[b.name]) <= 1024)
            assert not np.any(g["ip1/0"]), "lr_mult 0: Caffe's diff stays zero"


def test_gradient_streams_reach_zeros_subnormals_and_specials():
    tiny = np.finfo(np.float32).tiny

    def any_of(pred):
        return lambda s: any(pred(a) for passes in s for g in passes for a in g.values())

    assert reaches(hs.gradient_streams(BLOBS, 1), any_of(lambda a: np.any((a != 0) & (np.abs(a) < tiny))))
    assert reaches(hs.gradient_streams(BLOBS, 1), any_of(lambda a: np.any(np.signbit(a) & (a == 0))))
    assert reaches(hs.gradient_streams(BLOBS, 1, frozen_zero=False), lambda s: np.any(s[0][0]["ip1/0"]))
    for special in (np.isnan, np.isposinf, np.isneginf, lambda a: np.abs(a) > 1e30):
        assert reaches(hs.gradient_streams(BLOBS, 1, allow_special=True), any_of(lambda a, f=special: np.any(f(a))))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(stream=hs.injectable_gradient_streams(BLOBS, 3, iter_size=2, allow_special=True))
def test_injectable_streams_decompose_into_the_injection_rows(stream):
    arrays = {f"grad/{k}/{p}/{n}": a for k, passes in enumerate(stream) for p, g in enumerate(passes) for n, a in g.items()}
    injection, _, _ = injection_from_gradients(arrays, parse_layers(BLOBS), iter_size=2)
    again = injection.gradients()
    for key, a in arrays.items():
        assert np.array_equal(a.view(np.uint32), again[key].view(np.uint32)), key
    for c in injection.c:
        e = np.log2(np.abs(c[c != 0]).astype(np.float64))
        assert np.all(e == np.round(e)) and np.all((-3 <= e) & (e <= 3))
    for passes in stream:
        for g in passes:
            assert not np.any(g["ip1/0"])
            assert not np.any(np.signbit(g["ip0/0"]) & (g["ip0/0"] == 0)), "-0 reads +0 through Caffe's zeroed diff"


# ---------------------------------------------------------------------------
# whole runs
# ---------------------------------------------------------------------------
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(run=hs.solver_runs(max_iterations=3, blobs=hs.learnable_blobs(max_blobs=3, max_size=8)))
def test_solver_runs_run_in_the_reference(run):
    cfg = run.config
    assert len(run.iterations) == cfg.max_iter
    assert all(len(it.grads) == cfg.iter_size for it in run.iterations)
    assert run.provenance["origin"] == "hypothesis" and run.refusal is None
    ref = Reference(cfg, run.init_params)
    for it in run.iterations:
        rec = ref.step(it.grads)
        assert rec.iter == it.iter


@given(run=hs.solver_runs(valid=False, max_iterations=2, blobs=hs.learnable_blobs(max_blobs=2, max_size=4)))
def test_solver_runs_can_be_refused(run):
    assert config_refusals(run.config) + update_refusals(run.config)
