"""The misport catalogue: the numpy emulation is Caffe, each variant is itself.

* ``CaffeUpdate()`` with no flags reproduces every real capture and equals
  the numba reference bit for bit (an independent second implementation);
* its exact building blocks (fma, powf, the BLAS sdot orders) match libm and
  the reference kernels;
* every variant, run as a port, fails on the fixture corpus plus the golden
  traces that exercise what the fixtures cannot, and the diagnosis names
  it -- alone. What the fixtures cannot see, and variants no trace tells
  apart, are declared below as data: a corpus change that alters either
  fails a test that asks for the data to be updated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from pathlib import Path

import numpy as np
import pytest

from harness.ports import _f32
from harness.ports.base import InProcessRunner, PortRun
from harness.ports.conformance import VariantCache, diagnose, evaluate, load_corpus
from harness.ports.emulate import FLAGS, CaffeUpdate, caffe_rate
from harness.ports.variants import VARIANTS, applicable_variants, variant, variant_port

ROOT = Path(__file__).resolve().parent.parent
RUNS = sorted((ROOT / "fixtures").glob("caffe-runs*"))
GOLDEN = ROOT / "golden"

#: Variants no trace of fixtures/ can exercise, and what trace does (a finding about the
#: fixture corpus). The golden corpus has such traces: the diagnosis tests add the golden
#: traces these variants apply to, so each of them is seen and diagnosed too.
NOT_IN_FIXTURES = {
    "clip-after-normalize": "no fixture clips with iter_size > 1 (needs clip_gradients with iter_size 2+)",
    "itersize-mean": "the fixtures only use iter_size 2: dividing by 2 equals multiplying by fl(1/2) (needs iter_size 3)",
    "l1-sign-zero-positive": "no decayed weight is exactly 0 in the L1 fixtures (needs a zero-initialized blob with L1 decay)",
    "multistep-multi-advance": "stepvalues increase and every run starts fresh, so even Caffe's if advances at most once "
                               "(needs repeated stepvalues or a resumed run with a lagging current_step)",
}
#: Variants the corpus exercises but cannot tell apart from another one: {variant: (twin, why)}.
#: Empty: on fixtures + golden every variant is diagnosed alone.
INDISTINGUISHABLE: dict[str, tuple[str, str]] = {}


@pytest.fixture(scope="module")
def corpus():
    return load_corpus(RUNS)


@pytest.fixture(scope="module")
def diagnosis_corpus(corpus):
    """The fixtures plus the golden traces that exercise what the fixtures cannot (``NOT_IN_FIXTURES``)."""
    extra = [(f"golden:{tid}", t) for tid, t in load_corpus([GOLDEN])
             if any(VARIANTS[v].applies(t) for v in NOT_IN_FIXTURES)]
    assert extra, "golden/ has no trace for the variants the fixtures cannot exercise"
    return corpus + extra


@pytest.fixture(scope="module")
def cache():
    return VariantCache()


def _libm(name, nargs):
    f = getattr(ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6"), name)
    f.restype = ctypes.c_float
    f.argtypes = [ctypes.c_float] * nargs
    return f


def _same_bits(a, b) -> bool:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


# ---------------------------------------------------------------------------
# exact building blocks
# ---------------------------------------------------------------------------
def _random_bits(rng, n):
    return rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("case", ["random-bits", "cancellation", "midpoints", "tiny", "scalar-alpha"])
def test_fma_is_libm_fmaf(case):
    rng = np.random.default_rng(7)
    n = 20000
    if case == "random-bits":
        a, b, c = _random_bits(rng, n), _random_bits(rng, n), _random_bits(rng, n)
    elif case == "cancellation":
        a = rng.standard_normal(n).astype(np.float32)
        b = rng.standard_normal(n).astype(np.float32)
        c = -(a.astype(np.float64) * b).astype(np.float32)
    elif case == "midpoints":  # float64 sums landing on float32 midpoints: where double rounding bites
        a = (1 + rng.integers(0, 2**23, n) * 2.0**-23).astype(np.float32)
        b = (1 + rng.integers(0, 2**23, n) * 2.0**-23).astype(np.float32)
        c = (rng.choice([-1, 1], n) * rng.integers(1, 2**20, n) * 2.0**-60).astype(np.float32)
    elif case == "tiny":
        a = (rng.standard_normal(n) * 1e-20).astype(np.float32)
        b = (rng.standard_normal(n) * 1e-20).astype(np.float32)
        c = (rng.standard_normal(n) * 1e-39).astype(np.float32)
    else:
        a, b, c = np.float32(0.3), _random_bits(rng, n), np.float32(1e-3)
    fmaf = _libm("fmaf", 3)
    A, B, C = np.broadcast_arrays(np.float32(a), np.float32(b), np.float32(c))
    want = np.array([fmaf(x, y, z) for x, y, z in zip(A.tolist(), B.tolist(), C.tolist())], np.float32)
    got = _f32.fma(a, b, c)
    same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))
    assert same.all(), f"{(~same).sum()} of {n} differ from libm fmaf"


def test_fma_avoids_double_rounding():
    # CAFFE_ORACLE.md: the float64 route gives 1.5000002, fmaf 1.5000001
    assert _f32.fma(np.float32(1 + 2**-23), np.float32(1.5), np.float32(-(2.0**-80))) == np.float32(1.5000001)


def test_powf_is_glibc_not_numpy():
    powf = _libm("powf", 2)
    x = (1 + np.arange(4096) * 2.0**-12).astype(np.float32)  # tie cases where powf(x, .5) != sqrtf(x)
    for y in (np.float32(0.5), np.float32(2), np.float32(-0.75)):
        want = np.array([powf(v, y) for v in x.tolist()], np.float32)
        assert _same_bits(_f32.powf(x, y), want)


@pytest.mark.parametrize("n", [0, 5, 31, 32, 33, 100, 1000, 7000])
def test_sdot_twins_match_the_reference_kernels(n):
    from harness.kernels import update as k

    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    assert _same_bits(_f32.sdot_openblas(x), k.sumsq_openblas_haswell(x))
    assert _same_bits(_f32.sdot_sequential(x), k.sumsq_sequential(x))
    assert _same_bits(_f32.sdot_atlas(x), k.sumsq_atlas(x))


def test_rates_match_the_reference_lr():
    from harness.lr import learning_rate

    seen = set()
    for _, t in load_corpus(RUNS):
        c = t.config
        if t.refusal is not None or c.lr_policy in seen:
            continue
        seen.add(c.lr_policy)
        cs_ref = cs_emu = 0
        for it in range(c.max_iter + 3):
            want, cs_ref = learning_rate(c, it, cs_ref)
            got, cs_emu = caffe_rate(c, it, cs_emu)
            assert _same_bits(got, want) and cs_emu == cs_ref, (c.lr_policy, it)
    assert seen == {"fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"}


# ---------------------------------------------------------------------------
# no flags: Caffe itself
# ---------------------------------------------------------------------------
def test_unflagged_emulation_equals_the_reference_bit_for_bit(corpus):
    from harness.reference import Reference, profile_for_blas

    checked = 0
    for tid, t in corpus:
        if t.refusal is not None:
            continue
        emu = CaffeUpdate()
        emu.init(t.config, t.init_params, t.init_history, t.init_iter, t.init_current_step, blas=t.blas)
        ref = Reference(t.config, t.init_params, profile=profile_for_blas(t.blas), history=t.init_history,
                        iter=t.init_iter, current_step=t.init_current_step)
        for it in t.iterations:
            a = emu.step(it.grads)
            b = ref.step(it.grads)
            assert _same_bits(a["lr"], b.lr), (tid, it.iter)
            assert a["current_step"] == b.current_step, (tid, it.iter)
            for n in a["params"]:
                assert _same_bits(a["params"][n], b.params[n]), (tid, it.iter, "params", n)
                assert _same_bits(a["diff"][n], b.diff[n]), (tid, it.iter, "diff", n)
            for k, (x, y) in enumerate(zip(a["history"], b.history)):
                assert _same_bits(x, y), (tid, it.iter, "history", k)
        checked += 1
    assert checked == 68


def test_unflagged_emulation_passes_every_capture(corpus, cache):
    results = [evaluate(tid, t, cache.run((), t)) for tid, t in corpus]
    assert {r.result for r in results} == {"pass", "refused-ok"}
    assert sum(r.result == "pass" for r in results) == 68


# ---------------------------------------------------------------------------
# the catalogue
# ---------------------------------------------------------------------------
def test_catalogue_is_complete_data():
    assert set(VARIANTS) == FLAGS
    for v in VARIANTS.values():
        assert v.id and v.description and v.reference
        assert "\n" not in v.description and len(v.description) < 200
        assert v.port().flags == {v.id}


def test_variant_lookup_and_composition():
    assert variant("no-fma").id == "no-fma"
    assert variant_port("caffe").flags == frozenset()
    assert variant_port("no-fma+rates-float64").flags == {"no-fma", "rates-float64"}
    with pytest.raises(KeyError, match="unknown variant 'nope'; known: caffe, lr-outside-history"):
        variant_port("no-fma+nope")
    with pytest.raises(ValueError, match="unknown flag"):
        CaffeUpdate({"nope"})


def _results_of(name, corpus, cache):
    """The conformance results of ``variant:name`` on the corpus (runs shared through ``cache``)."""
    v = VARIANTS[name]
    out = []
    for tid, t in corpus:
        run: PortRun = cache.run((name,), t) if v.applies(t) else cache.run((), t)
        out.append(evaluate(tid, t, run))
    return out


def _params():
    out = []
    for name in VARIANTS:
        if name in INDISTINGUISHABLE:
            twin, why = INDISTINGUISHABLE[name]
            out.append(pytest.param(name, marks=pytest.mark.xfail(reason=f"indistinguishable from {twin}: {why}", strict=True)))
        else:
            out.append(name)
    return out


@pytest.mark.parametrize("name", _params())
def test_variant_fails_and_is_diagnosed_as_itself(name, diagnosis_corpus, cache):
    results = _results_of(name, diagnosis_corpus, cache)
    failing = [r for r in results if r.failed]
    assert failing, f"variant:{name} passes every trace: the corpus cannot see it"
    assert all(r.numeric_failure for r in failing)
    diag = diagnose(results, cache=cache)
    for g in diag.groups:
        assert g.exact == [(name,)], f"{g.solver}: {g.text}"
    assert diag.exact == [(name,)]
    assert f"variant {name}" in diag.text and VARIANTS[name].description in diag.text


@pytest.mark.parametrize("name", sorted(NOT_IN_FIXTURES))
def test_fixtures_cannot_see_some_variants(name, corpus, cache):
    # a finding, kept as data: when the fixtures gain a trace that exercises
    # one of these, this fails and NOT_IN_FIXTURES must shrink
    assert not any(r.failed for r in _results_of(name, corpus, cache)), NOT_IN_FIXTURES[name]


def test_variants_only_run_where_they_apply(corpus, cache):
    # the applicability predicates are conservative: a variant that does not
    # apply to a trace computes exactly Caffe's result there
    for tid, t in corpus:
        if t.refusal is not None:
            continue
        applicable = {v.id for v in applicable_variants(t)}
        for name in FLAGS - applicable:
            run = InProcessRunner(variant_port(name), name, trusted=True).run(t)
            assert evaluate(tid, t, run).result == "pass", (name, tid)
        break  # one trace suffices for the exhaustive check; the parametrized test covers the rest


def test_pairs_are_found_when_no_single_variant_explains(corpus, cache):
    sgd = [(tid, t) for tid, t in corpus if t.config.type == "SGD" and t.blas == "openblas"]
    results = [evaluate(tid, t, cache.run(("lr-outside-history", "rates-lambdalr"), t)) for tid, t in sgd]
    diag = diagnose(results, cache=cache)
    assert diag.exact == [("lr-outside-history", "rates-lambdalr")], diag.text


def test_catalogue_is_documented():
    doc = (ROOT / "docs" / "PORTS.md").read_text()
    for v in VARIANTS.values():
        assert f"| `{v.id}` | {v.description} | {v.reference} |" in doc, v.id
