"""The golden corpus: its definition (harness/corpus.py), the committed golden/ tree, regeneration.

Without Caffe: every case has its golden and nothing else is in golden/;
``golden verify`` passes; each manifest says what its case says; the table
covers what the corpus promises (a table of coverage checks with readable
ids). Marked ``oracle``: regenerating a few cases with real Caffe gives the
committed bytes (skipped with the reason where Caffe is absent, failing
under CI=true).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import corpus, oracle
from harness.config import LR_POLICIES, SOLVER_TYPES
from harness.errors import InputError, OracleUnavailable

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "golden"
TOOL = ROOT / "tools" / "regen-golden"
ENTRIES = corpus.golden_entries()
RUNS = [c for c in corpus.CASES if not c.refused]
REJECTED = [c for c in corpus.CASES if c.refused]


def _layers(c):
    return oracle.parse_layers(c.layers)


def _blob_sizes(c) -> list[int]:
    return [n for l in _layers(c) for n in ([l.O * l.D] + ([l.O] if l.bias else []))]


def _specials(c) -> set[str]:
    g = c.gradients
    return set(g.get("special", ())) | {p["kind"] for p in g.get("positions", ())}


def _manifest(c, blas) -> dict:
    return json.loads((GOLDEN / c.golden_path(blas) / "trace.json").read_text())


# =============================================================================
# The table itself
# =============================================================================
def test_case_ids_unique_and_readable():
    ids = [c.id for c in corpus.CASES]
    assert len(ids) == len(set(ids))
    for c in corpus.CASES:
        assert c.id.replace("-", "").isalnum() and c.id == c.id.lower(), c.id
        assert c.family in corpus.FAMILIES, c.id
        assert set(c.blas) <= set(corpus.BLAS_BUILDS) and "openblas" in c.blas, c.id
        assert c.refused in (None, "start", "first-update"), c.id
        assert (c.family == "rejected") == bool(c.refused), c.id
        assert c.why, c.id
        oracle.parse_layers(c.layers)
        oracle.GradientSpec(**dict(c.gradients))


def test_seeds_fixed_by_id():
    assert len({c.seed for c in corpus.CASES}) > len(corpus.CASES) * 0.95
    assert corpus.case("sgd-step").seed == corpus._seed("sgd-step")


def test_iterations_stay_small():
    assert all(8 <= c.iters <= 16 for c in RUNS)
    assert all(c.iters <= 4 for c in REJECTED)


# What the corpus promises (docs/CORPUS.md); each check names the cases that provide it.
def _any(pred):
    return lambda cases: [c.id for c in cases if pred(c)]


COVERAGE = {
    "l2-decay": _any(lambda c: c.solver.get("weight_decay") and c.solver.get("regularization_type", "L2") == "L2"),
    "l1-decay": _any(lambda c: c.solver.get("regularization_type") == "L1" and c.solver.get("weight_decay")),
    "l1-at-zero-weights": _any(lambda c: c.solver.get("regularization_type") == "L1" and any(v == 0 for _, _, v in c.init_set)),
    "unknown-regtype-accepted": _any(lambda c: c.solver.get("regularization_type") not in (None, "L1", "L2")),
    "clip-active": _any(lambda c: c.solver.get("clip_gradients", -1) > 0 and "clip-active" in c.id),
    "clip-inactive": _any(lambda c: c.solver.get("clip_gradients", -1) >= 1000),
    "clip-zero": _any(lambda c: c.solver.get("clip_gradients") == 0),
    "clip-negative-not-minus-1": _any(lambda c: -1 < c.solver.get("clip_gradients", -1) < 0),
    "clip-with-iter_size": _any(lambda c: c.solver.get("clip_gradients", -1) >= 0 and c.solver.get("iter_size", 1) > 1),
    "clip-33-elements": _any(lambda c: c.solver.get("clip_gradients", -1) > 0 and 33 in _blob_sizes(c)),
    "clip-1000-plus-elements": _any(lambda c: c.solver.get("clip_gradients", -1) > 0 and max(_blob_sizes(c)) >= 1000),
    "iter_size-2": _any(lambda c: c.solver.get("iter_size") == 2),
    "iter_size-3": _any(lambda c: c.solver.get("iter_size") == 3),
    "lr_mult-0": _any(lambda c: any(l.lr_w == 0 or (l.bias and l.lr_b == 0) for l in _layers(c))),
    "decay_mult-0": _any(lambda c: any(l.decay_w == 0 or (l.bias and l.decay_b == 0) for l in _layers(c))),
    "layer-without-bias": _any(lambda c: any(not l.bias for l in _layers(c))),
    "blob-1-element": _any(lambda c: 1 in _blob_sizes(c)),
    "step-stepsize-1": _any(lambda c: c.solver.get("lr_policy") == "step" and c.solver.get("stepsize") == 1),
    "step-boundary-at-last-half": _any(lambda c: c.solver.get("lr_policy") == "step" and c.solver.get("stepsize") * 2 == c.iters),
    "multistep-unsorted": _any(lambda c: c.solver.get("lr_policy") == "multistep"
                               and list(c.solver.get("stepvalue", [])) != sorted(set(c.solver.get("stepvalue", [])))
                               and len(set(c.solver["stepvalue"])) == len(c.solver["stepvalue"])),
    "multistep-repeated": _any(lambda c: c.solver.get("lr_policy") == "multistep"
                               and len(set(c.solver.get("stepvalue", []))) < len(c.solver.get("stepvalue", []))),
    "multistep-empty": _any(lambda c: c.solver.get("lr_policy") == "multistep" and not c.solver.get("stepvalue")),
    "poly-last-iteration": _any(lambda c: c.solver.get("lr_policy") == "poly"),
    "poly-negative-power": _any(lambda c: c.solver.get("lr_policy") == "poly" and c.solver.get("power", 0) < 0),
    "exp-gamma-0": _any(lambda c: c.solver.get("lr_policy") == "exp" and c.solver.get("gamma") == 0),
    "exp-gamma-1": _any(lambda c: c.solver.get("lr_policy") == "exp" and c.solver.get("gamma") == 1),
    "sigmoid-saturated": _any(lambda c: c.solver.get("lr_policy") == "sigmoid" and c.solver.get("gamma", 0) >= 20),
    "gradient-zeros": _any(lambda c: "zeros" in _specials(c)),
    "gradient-subnormal": _any(lambda c: "subnormal" in _specials(c)),
    "gradient-huge": _any(lambda c: "huge" in _specials(c)),
    "gradient-nan": _any(lambda c: "nan" in _specials(c)),
    "gradient-inf": _any(lambda c: "inf" in _specials(c)),
    "sgd-momentum-0": _any(lambda c: c.solver["type"] == "SGD" and not c.solver.get("momentum")),
    "nesterov-momentum-0": _any(lambda c: c.solver["type"] == "Nesterov" and not c.solver.get("momentum")),
    "adam-beta1-proto-default": _any(lambda c: c.solver["type"] == "Adam" and "momentum" not in c.solver),
    "resume-under-multistep": _any(lambda c: c.resume_at and c.solver.get("lr_policy") == "multistep"),
    "deprecated-solver_type": _any(lambda c: any("solver_type" in new for _, new in c.solver_edits)),
}


@pytest.mark.parametrize("name", sorted(COVERAGE))
def test_coverage(name):
    assert COVERAGE[name](RUNS), f"no corpus case provides {name}"


@pytest.mark.parametrize("stype", SOLVER_TYPES)
@pytest.mark.parametrize("policy", LR_POLICIES)
def test_grid_covers_type_and_policy(stype, policy):
    assert any(c.solver["type"] == stype and c.solver.get("lr_policy") == policy for c in RUNS)


@pytest.mark.parametrize("blas", ["reference", "atlas"])
def test_other_blas_builds_are_representative(blas):
    cases = [c for c in RUNS if blas in c.blas]
    assert {c.solver["type"] for c in cases} == set(SOLVER_TYPES)
    assert len({c.solver.get("lr_policy") for c in cases}) == len(LR_POLICIES)
    assert [c for c in cases if c.solver.get("clip_gradients", -1) > 0 and max(_blob_sizes(c)) >= 1000]
    assert [c for c in cases if c.solver.get("iter_size", 1) == 3]
    assert [c for c in cases if c.resume_at]


REFUSALS = {
    "unknown type": "Unknown solver type: ",
    "unknown lr policy": "Unknown learning rate policy: bogus",
    "unset lr policy": "Unknown learning rate policy: ",
    "unknown regularization": "Unknown regularization type: L3",
    "stepsize 0": "this->param_.stepsize() > 0 (0 vs. 0)",
    "negative gamma": "this->param_.gamma() >= 0 (-0.5 vs. 0)",
    "momentum with AdaGrad": "Momentum cannot be used with AdaGrad.",
    "momentum with RMSProp": "Momentum cannot be used with RMSProp.",
    "rms_decay 1": "this->param_.rms_decay() < 1 (1 vs. 1)",
    "rms_decay negative": "this->param_.rms_decay() >= 0 (-0.1 vs. 0)",
    "type and solver_type": "cannot be both specified",
    "average_loss 0": "param_.average_loss() >= 1 (0 vs. 1)",
    "GPU mode": "Cannot use GPU in CPU-only Caffe",
}


@pytest.mark.parametrize("what", sorted(REFUSALS))
def test_rejection_corpus_holds(what):
    messages = [(_manifest(c, "openblas")["refusal"] or {}).get("message", "") for c in REJECTED]
    assert any(REFUSALS[what] in m for m in messages), f"no refusal in golden/rejected says {REFUSALS[what]!r}"


@pytest.mark.parametrize("policy", ["step", "exp", "inv", "multistep", "sigmoid"])
def test_negative_gamma_refused_for(policy):
    assert any(c.solver.get("lr_policy") == policy and c.solver.get("gamma", 0) < 0 for c in REJECTED)


# =============================================================================
# The committed tree
# =============================================================================
def test_every_case_has_its_golden_and_nothing_else_is_there():
    defined = {c.golden_path(b) for c, b in ENTRIES}
    present = corpus.trace_dirs(GOLDEN)
    assert sorted(defined - present) == [], "cases without a golden: run tools/regen-golden"
    assert sorted(present - defined) == [], "goldens no case defines: run tools/regen-golden (it removes stale ones)"


def test_golden_verify_passes(capsys):
    from harness.cli import main

    assert main(["golden", "verify", "--quiet", str(GOLDEN)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("c,blas", ENTRIES, ids=[c.golden_path(b) for c, b in ENTRIES])
def test_golden_says_what_its_case_says(c, blas):
    m = _manifest(c, blas)
    p = m["provenance"]
    assert m["name"] == c.id and m["origin"] == "caffe"
    assert p["blas"] == blas and p["date"] is None and p["corpus"]["case"] == c.id and p["seed"] == c.seed
    assert m["source"] == f"corpus:{c.golden_path(blas)}"
    cfg = m["config"]
    for key in ("type", "lr_policy", "iter_size", "regularization_type", "stepvalue"):
        if key in c.solver and not c.solver_edits:
            assert cfg[key] == c.solver[key], key
    assert cfg["max_iter"] == c.iters
    if c.refused:
        assert m["refusal"]["when"] == c.refused and m["refusal"]["message"]
    else:
        assert m["refusal"] is None
        n = c.iters - (c.resume_at or 0)
        assert len(m["iterations"]) == n and m["init"]["iter"] == (c.resume_at or 0)
        assert m["passes"] == c.solver.get("iter_size", 1)


def test_corpus_size_stays_small():
    total = sum(f.stat().st_size for f in GOLDEN.rglob("*") if f.is_file())
    assert total < 20e6, f"golden/ holds {total / 1e6:.1f} MB; the corpus aims at <= 20 MB"


# =============================================================================
# Selecting and comparing
# =============================================================================
def test_select_by_id_path_and_family():
    assert [c.golden_path(b) for c, b in corpus.select("sgd-step")] == ["openblas/sgd-step", "reference/sgd-step", "atlas/sgd-step"]
    assert {b for _, b in corpus.select("atlas/*")} == {"atlas"}
    assert all(c.family == "clipping" for c, _ in corpus.select("clipping"))
    assert len(corpus.select(["adam-step", "rejected/gpu-mode,sgd-fixed"])) == 7
    assert corpus.select(None) == ENTRIES
    with pytest.raises(InputError, match="matches no corpus case"):
        corpus.select("no-such-*")
    with pytest.raises(InputError, match="no corpus case"):
        corpus.case("sgd-stpe")


def test_compare_trees_finds_a_flipped_byte_and_missing_traces(tmp_path):
    for rel in ("openblas/sgd-step", "rejected/gpu-mode"):
        shutil.copytree(GOLDEN / rel, tmp_path / rel)
    rels = ["openblas/sgd-step", "rejected/gpu-mode"]
    assert corpus.compare_trees(GOLDEN, tmp_path, rels) == []
    f = next((tmp_path / "openblas/sgd-step").glob("params.00.*.npy"))
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    m = tmp_path / "rejected/gpu-mode/trace.json"
    m.write_text(m.read_text().replace('"cpu": "', '"cpu": "other '))
    diffs = corpus.compare_trees(GOLDEN, tmp_path, rels + ["openblas/sgd-fixed"])
    assert diffs == [f"openblas/sgd-fixed: missing from {tmp_path}",
                     f"openblas/sgd-step/{f.name}: differs ({len(raw)} vs {len(raw)} bytes)",
                     "rejected/gpu-mode/trace.json: differs in provenance.cpu"]
    assert corpus.compare_trees(GOLDEN, tmp_path, rels, ignore=corpus.MACHINE_FIELDS) == diffs[1:2]


def test_tool_lists_cases_and_refuses_unknown_patterns():
    p = subprocess.run([sys.executable, str(TOOL), "--list", "--only", "resume"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 0 and "sgd-multistep-resume" in p.stdout and "4 cases" in p.stderr
    p = subprocess.run([sys.executable, str(TOOL), "--check", "--only", "nope-*"], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 2 and "matches no corpus case" in p.stderr


# =============================================================================
# Regenerating with real Caffe
# =============================================================================
def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"real Caffe is required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def caffe():
    try:
        return oracle.find_caffe()
    except OracleUnavailable as e:
        _unavailable(str(e))


# small cases whose bits do not depend on the CPU's BLAS kernels beyond FMA, plus a refusal made by a solver edit
REGEN = ["openblas/sgd-multistep-resume", "reference/sgd-clip-33", "rejected/type-and-solver-type"]


@pytest.mark.oracle
@pytest.mark.parametrize("rel", REGEN)
def test_regenerating_reproduces_the_committed_bytes(caffe, tmp_path, rel):
    (c, blas), = corpus.select(rel)
    corpus.build(c, blas, tmp_path / rel, install=caffe)
    assert corpus.compare_trees(GOLDEN, tmp_path, [rel], ignore=corpus.MACHINE_FIELDS) == []


@pytest.mark.oracle
def test_build_fails_when_caffe_contradicts_the_case(caffe, tmp_path):
    wrong = corpus.Case("wrong", "grid", {"type": "SGD", "lr_policy": "step", "stepsize": 0, "base_lr": 0.1, "max_iter": 2})
    with pytest.raises(InputError, match="expected a run, real Caffe refused at first-update"):
        corpus.build(wrong, "openblas", tmp_path / "wrong", install=caffe)
    assert not (tmp_path / "wrong").exists()


@pytest.mark.oracle
def test_tool_check_exits_1_on_a_changed_golden(caffe, tmp_path):
    rel = "openblas/sgd-clip-33"
    shutil.copytree(GOLDEN / rel, tmp_path / rel)
    cmd = [sys.executable, str(TOOL), "--check", "--quiet", "--golden", str(tmp_path), "--only", rel]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    f = next((tmp_path / rel).glob("history.00.*.npy"))
    raw = bytearray(f.read_bytes())
    raw[-2] ^= 0x80
    f.write_bytes(bytes(raw))
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert p.returncode == 1 and f"{rel}/{f.name}: differs" in p.stdout, p.stdout + p.stderr
