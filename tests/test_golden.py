"""Golden traces: bit-exact round trips, determinism, tamper detection, the CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.cli import main
from harness.config import BlobSpec, SolverConfig
from harness.errors import InputError
from harness.io import golden
from harness.io.capture import load_capture
from harness.io.golden import (
    CHECKSUMS,
    MANIFEST,
    read_golden,
    trace_differences,
    verify_golden,
    write_golden,
)
from harness.trace import Iteration, Trace

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


# --------------------------------------------------------------------------
# building traces
# --------------------------------------------------------------------------
def _special_f32(rng: np.random.Generator, shape) -> np.ndarray:
    """float32 values including the awkward ones: subnormals, -0, inf, NaN with payloads."""
    a = rng.standard_normal(shape).astype(np.float32)
    flat = a.reshape(-1)
    specials = np.array([0x00000001, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00001, 0xFFA00000, 0x007FFFFF], np.uint32).view(np.float32)
    for i in range(0, flat.size, 3):
        flat[i] = specials[(i // 3) % len(specials)]
    return a


def make_trace(
    *,
    type_: str = "Adam",
    iter_size: int = 2,
    shapes=((3, 7), (3,), ()),
    n_iter: int = 3,
    seed: int = 0,
    expected=(True, True, True),
    resumed: bool = False,
    refusal: str | None = None,
    lr_none: bool = False,
    lr_text: bool = False,
) -> Trace:
    """A synthetic trace with every field set (what the round trip must preserve)."""
    rng = np.random.default_rng(seed)
    blobs = tuple(BlobSpec(f"l{j // 2}/{j % 2}", tuple(s), float(np.float32(1 + j / 3)), float(j % 2)) for j, s in enumerate(shapes))
    cfg = SolverConfig(blobs=blobs).replace(
        type=type_, base_lr=0.01, lr_policy="multistep", gamma=0.1, stepvalue=(1, 2), max_iter=n_iter, iter_size=iter_size,
        momentum=0.9, clip_gradients=float("inf"),
    )
    nh = len(blobs) * cfg.history_slots

    def params():
        return {b.name: _special_f32(rng, b.shape) for b in blobs}

    def hist():
        return [_special_f32(rng, blobs[h % len(blobs)].shape) for h in range(nh)]

    start = 5 if resumed else 0
    its = []
    for k in range(start, start + n_iter):
        its.append(
            Iteration(
                iter=k,
                grads=[params() for _ in range(iter_size)],
                lr=None if lr_none else ("%g" % (0.01 * 0.1 ** (k % 3)) if lr_text else float(np.float32(0.01 * 0.1 ** (k % 3)))),
                params=params() if expected[0] and refusal is None else None,
                diff=params() if expected[1] and refusal is None else None,
                history=hist() if expected[2] and refusal is None else None,
                current_step=(k % 3) if refusal is None else None,
            )
        )
    return Trace(
        name="synthetic",
        config=cfg,
        init_params=params(),
        iterations=its,
        init_history=hist() if resumed else None,
        init_iter=start,
        init_current_step=2 if resumed else 0,
        provenance={"origin": "reference", "blas": "openblas", "date": "2025-11-23", "cpu_flags": ["fma", "avx2"], "seed": seed},
        refusal=refusal,
        refusal_when="first-update" if refusal else None,
        source="synthetic:test",
    )


def tree_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def resign(d: Path) -> None:
    """Recompute every checksum after a deliberate edit, so the deeper checks are what must catch it."""
    m = json.loads((d / MANIFEST).read_text())
    for e in m["arrays"]:
        p = d / e["file"]
        if p.exists():
            raw = p.read_bytes()
            e["sha256"], e["bytes"] = hashlib.sha256(raw).hexdigest(), len(raw)
    (d / MANIFEST).write_text(json.dumps(m, indent=1))
    rewrite_sums(d)


def rewrite_sums(d: Path) -> None:
    files = [MANIFEST] + sorted(p.name for p in d.iterdir() if p.suffix == ".npy")
    (d / CHECKSUMS).write_text("".join(f"{hashlib.sha256((d / f).read_bytes()).hexdigest()}  {f}\n" for f in files))


def edit_manifest(d: Path, fn, *, sign: bool = True) -> None:
    m = json.loads((d / MANIFEST).read_text())
    fn(m)
    (d / MANIFEST).write_text(json.dumps(m, indent=1))
    if sign:
        rewrite_sums(d)


# --------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------
ROUND_TRIPS = {
    "adam-itersize2": dict(),
    "sgd-one-slot": dict(type_="SGD", iter_size=1),
    "adadelta-resumed": dict(type_="AdaDelta", resumed=True),
    "params-only": dict(expected=(True, False, False)),
    "inputs-only": dict(expected=(False, False, False), lr_none=True),
    "refused": dict(refusal="Check failed: this->param_.gamma() >= 0 (-0.5 vs. 0)"),
    "no-iterations": dict(n_iter=0),
    "lr-as-log-text": dict(lr_text=True),
}


@pytest.mark.parametrize("kw", ROUND_TRIPS.values(), ids=ROUND_TRIPS.keys())
def test_round_trip_is_bit_exact(tmp_path, kw):
    t = make_trace(**kw)
    write_golden(t, tmp_path / "g")
    back = read_golden(tmp_path / "g")
    assert trace_differences(t, back) == []
    for x, y in zip(t.iterations, back.iterations):
        for g, h in zip(x.grads, y.grads):
            for n in g:
                assert np.array_equal(g[n].view(np.uint32), h[n].view(np.uint32))
    assert verify_golden(tmp_path / "g") == []


@settings(max_examples=25)
@given(
    type_=st.sampled_from(["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"]),
    iter_size=st.integers(1, 3),
    shapes=st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=4),
    n_iter=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
    expected=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    resumed=st.booleans(),
)
def test_round_trip_property(tmp_path_factory, type_, iter_size, shapes, n_iter, seed, expected, resumed):
    t = make_trace(type_=type_, iter_size=iter_size, shapes=shapes, n_iter=n_iter, seed=seed, expected=expected, resumed=resumed)
    d = tmp_path_factory.mktemp("g") / "t"
    write_golden(t, d)
    assert trace_differences(t, read_golden(d)) == []


@pytest.mark.parametrize("run", ["caffe-runs/sgd-multistep-itersize", "caffe-runs/adadelta-exp", "caffe-runs-rejected/adam-sigmoid-gamma-negative"])
def test_capture_round_trip(tmp_path, run):
    t = load_capture(FIXTURES / run)
    write_golden(t, tmp_path / "g")
    back = read_golden(tmp_path / "g")
    assert trace_differences(t, back) == []
    assert back.provenance["origin"] == "caffe"


def test_trace_differences_sees_one_bit(tmp_path):
    t = make_trace()
    write_golden(t, tmp_path / "g")
    back = read_golden(tmp_path / "g")
    a = back.iterations[1].history[2]
    a.view(np.uint32).reshape(-1)[0] ^= 1
    assert trace_differences(t, back) == ["iteration 1 history[2] differs"]


# --------------------------------------------------------------------------
# determinism and atomic writes
# --------------------------------------------------------------------------
def test_writing_twice_gives_identical_bytes(tmp_path):
    t = make_trace()
    write_golden(t, tmp_path / "a")
    write_golden(read_golden(tmp_path / "a"), tmp_path / "b")
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


def test_npy_files_are_plain_numpy(tmp_path):
    t = make_trace()
    write_golden(t, tmp_path / "g")
    m = json.loads((tmp_path / "g" / MANIFEST).read_text())
    for e in m["arrays"]:
        a = np.load(tmp_path / "g" / e["file"], allow_pickle=False)
        assert a.dtype == np.dtype("<f4") and list(a.shape) == e["shape"]
        assert (tmp_path / "g" / e["file"]).read_bytes()[:8] == b"\x93NUMPY\x01\x00"


def test_refuses_to_overwrite_unless_asked(tmp_path):
    t = make_trace()
    write_golden(t, tmp_path / "g")
    with pytest.raises(InputError, match="already exists"):
        write_golden(t, tmp_path / "g")
    t2 = make_trace(seed=1)
    write_golden(t2, tmp_path / "g", overwrite=True)
    assert trace_differences(t2, read_golden(tmp_path / "g")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]  # no temp dirs left behind


def test_failed_write_leaves_nothing(tmp_path):
    t = make_trace()
    with np.errstate(invalid="ignore"):  # the signalling NaN among the values
        t.iterations[1].params["l0/0"] = t.iterations[1].params["l0/0"].astype(np.float64)
    with pytest.raises(InputError, match=r"iteration 1 params l0/0 is float64, expected float32"):
        write_golden(t, tmp_path / "g")
    assert list(tmp_path.iterdir()) == []


WRITE_REFUSALS = {
    "no-origin": (lambda t: t.provenance.pop("origin"), "provenance origin is None"),
    "bad-origin": (lambda t: t.provenance.update(origin="torch"), "expected one of caffe, reference"),
    "wrong-shape": (lambda t: t.init_params.update({"l0/0": np.zeros((7, 3), np.float32)}), r"shape \(7, 3\), expected \(3, 7\)"),
    "missing-blob": (lambda t: t.iterations[0].diff.pop("l0/1"), "iteration 0 diff has blobs"),
    "short-history": (lambda t: t.iterations[0].history.pop(), "history has 5 blobs, expected 6"),
    "ragged-passes": (lambda t: t.iterations[2].grads.pop(), "different numbers of gradient passes"),
    "not-float32-config": (lambda t: setattr(t, "config", dataclasses.replace(t.config, base_lr=0.1)), "base_lr"),
    "no-blobs": (lambda t: setattr(t, "config", t.config.replace(blobs=())), "no learnable blobs"),
    "provenance-not-json": (lambda t: t.provenance.update(where=Path("/x")), "not plain JSON"),
}


@pytest.mark.parametrize("mutate,message", WRITE_REFUSALS.values(), ids=WRITE_REFUSALS.keys())
def test_writer_refuses_bad_traces(tmp_path, mutate, message):
    t = make_trace()
    mutate(t)
    with pytest.raises(InputError, match=message):
        write_golden(t, tmp_path / "g")


# --------------------------------------------------------------------------
# tampering
# --------------------------------------------------------------------------
def _first(d: Path, kind: str) -> Path:
    return d / next(e["file"] for e in json.loads((d / MANIFEST).read_text())["arrays"] if e["kind"] == kind)


def _flip_byte(d):
    p = _first(d, "params")
    b = bytearray(p.read_bytes())
    b[-5] ^= 0x10
    p.write_bytes(bytes(b))
    return p.name


def _truncate(d):
    p = _first(d, "grads")
    p.write_bytes(p.read_bytes()[:-4])
    return p.name


def _delete(d):
    p = _first(d, "diff")
    p.unlink()
    return p.name


def _edit_number(d):
    text = (d / MANIFEST).read_text()
    (d / MANIFEST).write_text(text.replace('"current_step": 1', '"current_step": 2', 1))
    return MANIFEST


def _bad_json(d):
    (d / MANIFEST).write_text((d / MANIFEST).read_text()[:-20])
    return MANIFEST


def _bad_json_resigned(d):
    (d / MANIFEST).write_text((d / MANIFEST).read_text().replace('"iterations": [', '"iterations": [,', 1))
    rewrite_sums(d)
    return MANIFEST


def _lr_hex_vs_decimal(d):
    edit_manifest(d, lambda m: m["iterations"][1]["lr"].update(decimal="0.0011"))
    return MANIFEST


def _log_text_vs_hex(d):
    write_golden(make_trace(lr_text=True), d, overwrite=True)
    edit_manifest(d, lambda m: m["iterations"][1]["lr"].update(log_text="0.0011"))
    return MANIFEST


def _unknown_version(d):
    edit_manifest(d, lambda m: m.update(version=2))
    return MANIFEST


def _wrong_dtype(d):
    p = _first(d, "init_params")
    a = np.load(p)
    with np.errstate(invalid="ignore"):
        np.save(p, a.astype(np.float64))
    resign(d)
    return p.name


def _wrong_shape(d):
    p = _first(d, "init_params")
    a = np.load(p)
    np.save(p, a.reshape(-1))
    resign(d)
    return p.name


def _manifest_shape(d):
    edit_manifest(d, lambda m: m["arrays"][0].update(shape=[7, 3]))
    return MANIFEST


def _no_sums(d):
    (d / CHECKSUMS).unlink()
    return CHECKSUMS


def _unlisted_file(d):
    shutil.copy(_first(d, "params"), d / "params.99.extra.npy")
    return "params.99.extra.npy"


def _dropped_iteration(d):
    edit_manifest(d, lambda m: m["iterations"].pop())
    return MANIFEST


def _origin_mismatch(d):
    edit_manifest(d, lambda m: m["provenance"].update(origin="caffe"))
    return MANIFEST


TAMPERING = {
    "flip-a-byte-in-npy": (_flip_byte, "sha256 mismatch"),
    "truncate-npy": (_truncate, "sha256 mismatch.*truncated"),
    "delete-npy": (_delete, "missing file"),
    "edit-number-in-manifest": (_edit_number, "sha256 mismatch"),
    "bad-json": (_bad_json, "sha256 mismatch"),
    "bad-json-resigned": (_bad_json_resigned, "bad JSON"),
    "lr-hex-vs-decimal": (_lr_hex_vs_decimal, "decimal 0.0011 is float32"),
    "log-text-vs-hex": (_log_text_vs_hex, "log_text 0.0011 is float32"),
    "unknown-version": (_unknown_version, "unknown format version 2"),
    "wrong-dtype": (_wrong_dtype, "dtype '<f8'"),
    "wrong-shape": (_wrong_shape, r"shape \(21,\)"),
    "manifest-shape": (_manifest_shape, r"shape is \[7, 3\], expected \[3, 7\]"),
    "no-checksum-file": (_no_sums, "missing checksum file"),
    "unlisted-file": (_unlisted_file, "not listed"),
    "dropped-iteration": (_dropped_iteration, "iterations must be increasing positions"),
    "origin-mismatch": (_origin_mismatch, "disagrees with origin"),
}


@pytest.mark.parametrize("tamper,message", TAMPERING.values(), ids=TAMPERING.keys())
def test_tampering_is_refused_naming_the_file(tmp_path, tamper, message):
    d = tmp_path / "g"
    write_golden(make_trace(), d)
    fname = tamper(d)
    with pytest.raises(InputError, match=message) as ei:
        read_golden(d)
    err = ei.value
    assert Path(err.path) == d / fname
    assert "\n" not in str(err) and str(err).startswith(os.fspath(d / fname))
    problems = verify_golden(d)
    assert problems and str(problems[0]) == str(err)
    assert all("\n" not in str(p) for p in problems)


def test_not_a_trace(tmp_path):
    with pytest.raises(InputError, match="no such golden trace"):
        read_golden(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="missing checksum file"):
        read_golden(tmp_path / "empty")


def test_non_json_constants_are_bad_json(tmp_path):
    d = tmp_path / "g"
    write_golden(make_trace(), d)
    (d / MANIFEST).write_text((d / MANIFEST).read_text().replace('"current_step": 0', '"current_step": NaN', 1))
    rewrite_sums(d)
    with pytest.raises(InputError, match="bad JSON"):
        read_golden(d)


# --------------------------------------------------------------------------
# the manifest documents itself
# --------------------------------------------------------------------------
def test_manifest_fields(tmp_path):
    t = make_trace()
    write_golden(t, tmp_path / "g")
    m = json.loads((tmp_path / "g" / MANIFEST).read_text())
    assert (m["format"], m["version"], m["origin"]) == ("caffe-harness-trace", 1, "reference")
    assert m["provenance"]["date"] == "2025-11-23"
    assert m["config"]["base_lr"] == 0.01 and m["config"]["clip_gradients"] == "inf"
    assert [b["name"] for b in m["blobs"]] == ["l0/0", "l0/1", "l1/0"]
    assert m["iterations"][0]["lr"] == {"f32_hex": "0x3c23d70a", "decimal": "0.01"}
    sums = (tmp_path / "g" / CHECKSUMS).read_text().splitlines()
    assert sums[0].endswith("  trace.json") and len(sums) == 1 + len(m["arrays"])


def test_public_api():
    for name in golden.__all__:
        assert getattr(golden, name).__doc__ or name.isupper(), name


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------
def test_cli_from_capture_verify_show(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["golden", "from-capture", os.fspath(FIXTURES / "caffe-runs/sgd-step"), os.fspath(out)]) == 0
    assert main(["golden", "from-capture", os.fspath(FIXTURES / "caffe-runs/sgd-step"), os.fspath(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["golden", "verify", os.fspath(out)]) == 0
    assert main(["golden", "show", os.fspath(out), "--iterations"]) == 0
    shown = capsys.readouterr().out
    assert "origin caffe" in shown and "iter 15: lr" in shown
    _flip_byte(out)
    assert main(["golden", "verify", "-q", os.fspath(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "sha256 mismatch" in lines[0]
    assert main(["golden", "show", os.fspath(out)]) == 2
    assert main(["golden", "verify", os.fspath(tmp_path / "missing")]) == 2


def test_cli_all_converts_a_tree(tmp_path, capsys):
    src = tmp_path / "caps"
    for run in ("caffe-runs/sgd-step", "caffe-runs-rejected/sgd-sigmoid-gamma-negative"):
        shutil.copytree(FIXTURES / run, src / run)
    assert main(["golden", "from-capture", "--all", os.fspath(src), os.fspath(tmp_path / "out")]) == 0
    assert (tmp_path / "out/caffe-runs/sgd-step" / MANIFEST).is_file()
    assert read_golden(tmp_path / "out/caffe-runs-rejected/sgd-sigmoid-gamma-negative").refusal_when == "first-update"
    assert main(["golden", "verify", "-q", os.fspath(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main(["golden", "show", "--format", "json", os.fspath(tmp_path / "out/caffe-runs/sgd-step")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["origin"], shown["iterations"], shown["solver"]["type"]) == ("caffe", 16, "SGD")


# --------------------------------------------------------------------------
# generate: a user's solver + layers
# --------------------------------------------------------------------------
SOLVER = """type: "Adam"
base_lr: 0.01
lr_policy: "step"
gamma: 0.5
stepsize: 3
max_iter: 6
momentum: 0.9
weight_decay: 0.001
iter_size: 2
"""
LAYERS = "7x3,5x2:nobias:lr_w=0.5"


def test_generate_from_reference_is_deterministic(tmp_path, capsys):
    (tmp_path / "s.prototxt").write_text(SOLVER)
    args = ["golden", "generate", "--solver", os.fspath(tmp_path / "s.prototxt"), "--layers", LAYERS, "--from", "reference",
            "--grad-special", "nan,subnormal"]
    assert main(args[:2] + [os.fspath(tmp_path / "a")] + args[2:]) == 0
    assert main(args[:2] + [os.fspath(tmp_path / "b")] + args[2:]) == 0
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    t = read_golden(tmp_path / "a")
    assert (t.provenance["origin"], t.provenance["profile"], t.provenance["date"]) == ("reference", "caffe-openblas", None)
    assert [it.current_step for it in t.iterations] == [0, 0, 0, 1, 1, 1]
    assert all(len(it.grads) == 2 and len(it.history) == 6 for it in t.iterations)
    assert np.float32(t.iterations[3].lr) == np.float32(0.005)


def test_generate_refused_settings(tmp_path):
    (tmp_path / "s.prototxt").write_text(SOLVER.replace('"step"', '"sigmoid"').replace("gamma: 0.5", "gamma: -0.5"))
    assert main(["golden", "generate", os.fspath(tmp_path / "g"), "--solver", os.fspath(tmp_path / "s.prototxt"),
                 "--layers", LAYERS, "--from", "reference"]) == 0
    t = read_golden(tmp_path / "g")
    caffe = load_capture(FIXTURES / "caffe-runs-rejected/adam-sigmoid-gamma-negative")
    assert (t.refusal, t.refusal_when) == (caffe.refusal, caffe.refusal_when)
    assert all(it.params is None for it in t.iterations)


@pytest.mark.oracle
def test_generate_caffe_and_reference_agree(tmp_path):
    from harness.commands.golden import generate_trace
    from harness.errors import OracleUnavailable
    from harness.oracle import find_caffe

    try:
        find_caffe()
    except OracleUnavailable as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(str(e))
    (tmp_path / "s.prototxt").write_text(SOLVER)
    caffe = generate_trace(tmp_path / "s.prototxt", LAYERS, use="caffe", seed=3)
    ref = generate_trace(tmp_path / "s.prototxt", LAYERS, use="reference", seed=3)
    assert caffe.provenance["origin"] == "caffe" and ref.provenance["origin"] == "reference"
    arrays_only = [d for d in trace_differences(caffe, ref) if d.split(":")[0] not in ("config", "provenance", "source")
                   and " lr " not in d]
    assert arrays_only == []
    assert [it.lr for it in caffe.iterations] == ["%g" % float(np.float32(it.lr)) for it in ref.iterations]


def test_cli_verify_finds_a_trace_without_its_manifest(tmp_path, capsys):
    write_golden(make_trace(), tmp_path / "tree/a")
    write_golden(make_trace(seed=2), tmp_path / "tree/b")
    (tmp_path / "tree/b" / MANIFEST).unlink()
    assert main(["golden", "verify", "-q", os.fspath(tmp_path / "tree")]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith(os.fspath(tmp_path / "tree/b" / MANIFEST)) and "missing file" in out[0]
    assert main(["golden", "verify", os.fspath(tmp_path / "tree/a")]) == 0


def test_read_arrays_are_maps_writable_and_releasable(tmp_path):
    """Arrays are copy-on-write maps of the files: writable without touching them, released pages read back."""
    t = make_trace()
    write_golden(t, tmp_path / "g")
    files = {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()}
    back = read_golden(tmp_path / "g")
    name = next(iter(back.init_params))
    a = back.init_params[name]
    want = a.copy()
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and base.obj is not None  # a map, not a copy
    a.flat[0] = np.float32(12345.0)  # writable; the file is untouched
    assert {p.name: p.read_bytes() for p in (tmp_path / "g").iterdir()} == files
    golden.release(a)  # what replay does with arrays it has used: pages (and that change) dropped
    assert np.array_equal(a.view(np.uint32), want.view(np.uint32))
    golden.release(np.zeros(3, np.float32))  # not a map: nothing to do
