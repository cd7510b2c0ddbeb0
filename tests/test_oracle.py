"""Real Caffe as the oracle: install, injection net, gradient streams, captures.

Tests marked ``oracle`` run real Caffe (``tools/install-caffe``). Where it is
missing they try the installer once; where it cannot be installed they skip
with its reason, except under ``CI=true`` where they fail.
``CAFFE_HARNESS_NO_CAFFE=1`` skips the install attempt.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from harness import oracle
from harness.cli import main as cli_main
from harness.config import BlobSpec, SolverConfig
from harness.errors import InputError, OracleUnavailable
from harness.io.blobs import params_by_name, read_caffemodel, read_solverstate
from harness.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
RUNS = sorted(p for p in FIXTURES.glob("caffe-runs*/*") if (p / "config.json").is_file())
INSTALLER = ROOT / "tools" / "install-caffe"
CAPTURE_FILES = {"solver.prototxt", "net.prototxt", "init.caffemodel", "inject.h5", "inject.txt",
                 "caffe.log", "gradients.npz", "config.json", "snapshots"}


def _run_id(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def _lr0_blobs(cfg: dict) -> set[str]:
    """Blobs with lr_mult 0 in a fixture's layer list (their recorded gradients vary between fixture sets)."""
    out = set()
    for j, l in enumerate(cfg["layers"]):
        if l.get("lr_w", 1) == 0:
            out.add(f"ip{j}/0")
        if l.get("bias", True) and l.get("lr_b", 2) == 0:
            out.add(f"ip{j}/1")
    return out


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, np.float32).tobytes()


def _snapshots(folder: Path, prefix: str = "run") -> dict[str, object]:
    """Decoded blobs of every snapshot: data and diff per blob; iter, current_step and history per state."""
    out: dict[str, object] = {}
    for f in sorted((folder / "snapshots").glob(f"{prefix}_iter_*")):
        if f.suffix == ".caffemodel":
            blobs = params_by_name(read_caffemodel(f))
            out[f.name] = {k: (_bits(b.data), None if b.diff is None else _bits(b.diff)) for k, b in blobs.items()}
        else:
            st = read_solverstate(f)
            out[f.name] = (st.iter, st.current_step, [_bits(h) for h in st.history])
    return out


def _installer_module():
    loader = importlib.machinery.SourceFileLoader("install_caffe", str(INSTALLER))
    spec = importlib.util.spec_from_loader("install_caffe", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


# =============================================================================
# Real Caffe, installed on demand
# =============================================================================
def _unavailable(reason: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"real Caffe is required under CI=true: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def caffe() -> oracle.CaffeInstall:
    try:
        return oracle.find_caffe()
    except OracleUnavailable as first:
        if os.environ.get("CAFFE_HARNESS_NO_CAFFE") == "1":
            _unavailable(f"{first} (CAFFE_HARNESS_NO_CAFFE=1)")
        p = subprocess.run([sys.executable, str(INSTALLER), "--quiet"], capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            _unavailable((p.stderr.strip().splitlines() or [str(first)])[-1])
        try:
            return oracle.find_caffe()
        except OracleUnavailable as e:
            _unavailable(str(e))


# =============================================================================
# Without Caffe: the texts, the gradient streams, the specs
# =============================================================================
@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_fixture_inputs_are_rebuilt_exactly(run: Path):
    """net.prototxt and solver.prototxt of every fixture come back byte for byte from its config.json."""
    cfg = _config(run)
    layers = oracle.parse_layers(cfg["layers"])
    assert oracle.net_prototxt(layers) == (run / "net.prototxt").read_text()
    fields = {k: v for k, v in cfg.items() if k not in ("seed", "layers", "caffe_exit", "blas")}
    assert oracle.solver_prototxt(fields, random_seed=cfg["seed"]) == (run / "solver.prototxt").read_text()
    assert [l.to_dict() for l in layers] == cfg["layers"]


@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_fixture_gradients_follow_from_inject_h5(run: Path):
    """The gradients Caffe saw are c[o]*x[d] and c[o] of inject.h5's rows, bit for bit."""
    cfg = _config(run)
    injection, init = oracle.read_injection(run)
    grads = injection.gradients()
    with np.load(run / "gradients.npz") as z:
        assert set(z.files) == set(grads) | {f"init/{k}" for k in init}
        lr0 = _lr0_blobs(cfg)
        for key in z.files:
            mine = grads[key] if key.startswith("grad/") else init[key[len("init/"):]]
            blob = key.split("/", 3)[-1] if key.startswith("grad/") else ""
            if blob in lr0:
                # Caffe gives these no gradient; some fixture sets recorded -0 or the unused c[o]
                assert not np.any(mine.view(np.uint32)), key
            elif run.parent.name == "caffe-runs":
                assert _bits(mine) == _bits(z[key]), key
            else:
                assert np.array_equal(mine, z[key]), key


@pytest.mark.parametrize("run", [r for r in RUNS if r.parent.name != "caffe-runs-rejected"], ids=_run_id)
def test_fixture_gradients_decompose(run: Path):
    """Every recorded gradient stream is accepted as a user .npz, with or without the layer spec."""
    cfg = _config(run)
    expected = oracle.read_injection(run)[0].gradients()
    injection, init, layers = oracle.injection_from_gradients(run / "gradients.npz", cfg["layers"],
                                                              iter_size=cfg.get("iter_size", 1))
    assert init.keys() == {k[len("init/"):] for k in np.load(run / "gradients.npz").files if k.startswith("init/")}
    got = injection.gradients()
    assert all(_bits(got[k]) == _bits(expected[k]) for k in expected)
    inferred = oracle.injection_from_gradients(run / "gradients.npz")[2]
    assert [(l.D, l.O, l.bias) for l in inferred] == [(l.D, l.O, l.bias) for l in layers]


def test_generated_gradients_are_exact_products():
    """Generated gradients equal the exact (float64) products c*x, specials included, and repeat per seed."""
    spec = oracle.GradientSpec(special=oracle.GRAD_SPECIALS, rate=0.3)
    inj, init = oracle.generate_injection("9x4,6x3:nobias", 6, 2, spec, seed=11)
    again, init2 = oracle.generate_injection("9x4,6x3:nobias", 6, 2, spec, seed=11)
    assert all(_bits(a) == _bits(b) for a, b in zip(inj.x + inj.c, again.x + again.c))
    assert all(_bits(init[k]) == _bits(init2[k]) for k in init)
    seen = set()
    for x, c in zip(inj.x, inj.c):
        ok = np.isin(np.abs(c), [0] + [2.0**e for e in range(-3, 4)])
        assert ok.all()
        exact = c[:, :, None].astype(np.float64) * x[:, None, :].astype(np.float64)
        fin = np.isfinite(exact)
        with np.errstate(all="ignore"):
            prod = c[:, :, None] * x[:, None, :]
        assert np.array_equal(prod[fin].astype(np.float64), exact[fin])  # no rounding anywhere
        a = np.abs(x)
        seen |= {"nan"} if np.isnan(x).any() else set()
        seen |= {"inf"} if np.isinf(x).any() else set()
        seen |= {"subnormal"} if ((a > 0) & (a < np.finfo(np.float32).tiny)).any() else set()
        seen |= {"huge"} if (np.isfinite(a) & (a >= 2.0**100)).any() else set()
        seen |= {"zeros"} if (x == 0).any() and (c == 0).any() else set()
        # no 0*Inf: its result depends on the BLAS
        assert not ((c == 0).any(axis=1) & ~np.isfinite(x).all(axis=1)).any()
    assert seen == set(oracle.GRAD_SPECIALS)


def test_positions_inject_exact_values():
    spec = {"positions": [{"iter": 1, "layer": "ip0", "d": 2, "kind": "nan"},
                          {"iter": 2, "layer": 0, "o": 1, "kind": "zeros"}]}
    inj, _ = oracle.generate_injection("4x3", 3, 1, spec, seed=2)
    g = inj.gradients()
    assert np.isnan(g["grad/1/0/ip0/0"][:, 2]).all() and np.isfinite(np.delete(g["grad/1/0/ip0/0"], 2, axis=1)).all()
    assert g["grad/2/0/ip0/1"][1] == 0 and not g["grad/2/0/ip0/0"][1].any()
    with pytest.raises(InputError, match="'d' must be in 0..3"):
        oracle.generate_injection("4x3", 3, 1, {"positions": [{"iter": 0, "d": 9, "kind": "inf"}]})


def _bad_npz(tmp_path, arrays, name="g.npz"):
    p = tmp_path / name
    np.savez(p, **arrays)
    return p


@pytest.mark.parametrize(
    "arrays, layers, message",
    [
        pytest.param({"grad/0/0/ip0/0": np.eye(2, dtype=np.float32), "grad/0/0/ip0/1": np.ones(2, np.float32)},
                     "2x2", r"grad/0/0/ip0/0: not c\[o\]\*x\[d\]", id="not-rank-1"),
        pytest.param({"grad/0/0/ip0/0": np.ones((2, 2), np.float32), "grad/0/0/ip0/1": np.full(2, 3, np.float32)},
                     "2x2", r"grad/0/0/ip0/1: bias gradient .* is not 0 or ±2\^e", id="bias-not-power-of-two"),
        pytest.param({"grad/0/0/ip0/0": np.array([[1, 1], [256, 256]], np.float32)},
                     "2x2:nobias", r"grad/0/0/ip0/0: not c\[o\]\*x\[d\]", id="ratio-beyond-2^6"),
        pytest.param({"grad/0/0/ip0/0": np.ones((2, 2))}, "2x2:nobias", "dtype float64, expected float32", id="float64"),
        pytest.param({"grad/0/0/ip0/0": np.ones((2, 2), np.float32), "grad/1/0/ip0/1": np.ones(2, np.float32)},
                     "2x2", r"grad/0/0/ip0/1: missing", id="missing-blob"),
        pytest.param({"grad/0/0/ip0/0": np.ones((3, 2), np.float32)}, "2x2:nobias", "do not match the layer", id="shape"),
        pytest.param({"gradient/0": np.ones(2, np.float32)}, None, "unexpected key 'gradient/0'", id="bad-key"),
        pytest.param({"grad/0/0/ip9/0": np.ones((2, 2), np.float32), "grad/0/0/ip0/0": np.ones((2, 2), np.float32)},
                     "2x2:nobias", "not in the layer spec: ip9", id="extra-layer"),
    ],
)
def test_user_gradients_refused(tmp_path, arrays, layers, message):
    p = _bad_npz(tmp_path, arrays)
    with pytest.raises(InputError, match=message) as e:
        oracle.injection_from_gradients(p, layers)
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)


def test_user_gradients_file_problems(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="junk.npz: not a readable .npz"):
        oracle.injection_from_gradients(tmp_path / "junk.npz")
    with pytest.raises(InputError, match="no such file"):
        oracle.injection_from_gradients(tmp_path / "absent.npz")
    p = _bad_npz(tmp_path, {"grad/0/0/ip0/0": np.ones((2, 2), np.float32), "grad/0/1/ip0/0": np.ones((2, 2), np.float32)})
    with pytest.raises(InputError, match="2 pass\\(es\\) per iteration but iter_size is 1"):
        oracle.injection_from_gradients(p, "2x2:nobias", iter_size=1)


def test_user_gradients_rank_one_accepted():
    """A stream built from other powers of two (row ratios up to 2^6) decomposes and rebuilds exactly."""
    x = np.array([0.3, -1.7, 0.0, 5.5], np.float32)
    c = np.array([2.0**-5, -(2.0**1), 0.0], np.float32)  # shifted into ±2^-3..2^3 by the decomposition
    w = (c[:, None] * x[None, :]) + np.float32(0)
    inj, _, layers = oracle.injection_from_gradients({"grad/0/0/fc/0": w})
    assert layers[0].name == "fc" and not layers[0].bias
    assert _bits(inj.gradients()["grad/0/0/fc/0"]) == _bits(w)
    assert set(np.abs(inj.c[0][0][inj.c[0][0] != 0])) <= {2.0**e for e in range(-3, 4)}


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("7x3", [{"D": 7, "O": 3}]),
        ("7x3,5x2:nobias:lr_w=0.5:decay_w=2.0", [{"D": 7, "O": 3}, {"D": 5, "O": 2, "bias": False, "lr_w": 0.5, "decay_w": 2.0}]),
        ("3x4:lr_w=1.5:lr_b=0:decay_b=1", [{"D": 3, "O": 4, "lr_w": 1.5, "lr_b": 0, "decay_b": 1}]),
        (" 2X2 : name=fc1 ", [{"D": 2, "O": 2, "name": "fc1"}]),
        ([BlobSpec("fc/0", (3, 5), 0.5, 2.0)], [{"D": 5, "O": 3, "bias": False, "lr_w": 0.5, "decay_w": 2, "name": "fc"}]),
    ],
)
def test_layer_spec_syntax(spec, expected):
    assert [l.to_dict() for l in oracle.parse_layers(spec)] == expected


@pytest.mark.parametrize(
    "spec, message",
    [("7y3", "expected DxO"), ("0x3", "D must be a positive integer"), ("7x3:bogus", "unknown option 'bogus'"),
     ("7x3:lr_w=abc", "expected a number"), ("7x3:name=a,7x3:name=a", "used twice"), ("", "at least one layer"),
     ("7x3:lr_w=nan", "finite")],
)
def test_layer_spec_refused(spec, message):
    with pytest.raises(InputError, match=message):
        oracle.parse_layers(spec)


def test_layer_spec_json_file(tmp_path):
    (tmp_path / "l.json").write_text(json.dumps({"layers": [{"D": 2, "O": 1, "bias": False}]}))
    assert oracle.parse_layers(str(tmp_path / "l.json"))[0] == oracle.LayerSpec(2, 1, bias=False)
    (tmp_path / "bad.json").write_text("[{\"D\": 2}")
    with pytest.raises(InputError, match="bad.json: not valid JSON"):
        oracle.parse_layers(str(tmp_path / "bad.json"))
    (tmp_path / "key.json").write_text(json.dumps([{"D": 2, "O": 1, "lr": 1}]))
    with pytest.raises(InputError, match=r"key.json: layer 0: unknown key\(s\) lr"):
        oracle.parse_layers(str(tmp_path / "key.json"))


def test_solver_text_round_trips_float32():
    """Every float field reads back as the same float32 (shortest repr), for awkward values too."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(200), 10.0 ** rng.uniform(-40, 38, 200), [1e-8, 0.999, 3.4e38, 1.4e-45]])
    for v in values.astype(np.float32):
        text = oracle.solver_prototxt({"type": "Adam", "base_lr": float(v), "delta": float(v)}, random_seed=1)
        msg = text_format.Parse(text, caffe_pb2.SolverParameter())
        assert np.float32(msg.base_lr).view(np.uint32) == v.view(np.uint32)
        assert np.float32(msg.delta).view(np.uint32) == v.view(np.uint32)


def test_solver_fields_sources(tmp_path):
    cfg = SolverConfig(type="Adam", base_lr=0.001, lr_policy="fixed", max_iter=5, momentum=0.9, random_seed=4,
                       snapshot=100, net="elsewhere.prototxt")
    assert oracle.solver_fields(cfg) == {"type": "Adam", "base_lr": cfg.base_lr, "lr_policy": "fixed",
                                         "max_iter": 5, "momentum": cfg.momentum, "random_seed": 4}
    (tmp_path / "s.prototxt").write_text('net: "train.prototxt"\ntest_iter: 5\ntest_interval: 10\nbase_lr: 0.5\n'
                                        'solver_type: NESTEROV\nsnapshot: 1000\nmax_iter: 3\n')
    assert oracle.solver_fields(tmp_path / "s.prototxt") == {"base_lr": 0.5, "type": "Nesterov", "max_iter": 3}
    with pytest.raises(InputError, match="'snapshot' is set by the capture"):
        oracle.solver_fields({"snapshot": 3})
    with pytest.raises(InputError, match="unknown solver field 'momentun'"):
        oracle.solver_fields({"momentun": 0.9})
    with pytest.raises(InputError, match="'stepsize' is an integer"):
        oracle.solver_prototxt({"stepsize": 2.5}, random_seed=1)
    (tmp_path / "typo.prototxt").write_text("base_lr: 0.1\nmomentun: 0.9\n")
    with pytest.raises(InputError, match=r"typo.prototxt:2:1: unknown field 'momentun'"):
        oracle.solver_fields(tmp_path / "typo.prototxt")


def test_find_caffe_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("CAFFE_HARNESS_CAFFE", str(tmp_path / "nowhere"))
    with pytest.raises(OracleUnavailable, match="^real Caffe is not installed: run tools/install-caffe$"):
        oracle.find_caffe()
    with pytest.raises(OracleUnavailable, match="no usr/bin/caffe here"):
        oracle.find_caffe(tmp_path)


def test_installer_reads_the_mirror_from_apt(tmp_path):
    tool = _installer_module()
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list.d" / "off.sources").write_text(
        "Types: deb\nURIs: http://disabled.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n")
    (etc / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "# a comment\nTypes: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    assert tool.apt_mirror(str(etc)) == "http://mirror.example/debian"
    for f in (etc / "sources.list.d").iterdir():
        f.unlink()
    (etc / "sources.list").write_text("# old style\ndeb [arch=amd64 signed-by=/k.gpg] http://old.example/debian bookworm main\n")
    assert tool.apt_mirror(str(etc)) == "http://old.example/debian"
    (etc / "sources.list").write_text("")
    with pytest.raises(tool.Failure, match="no Debian mirror found"):
        tool.apt_mirror(str(etc))


def test_capture_refuses_bad_input_before_running(tmp_path, monkeypatch):
    """Bad settings are refused without Caffe (nothing is written)."""
    monkeypatch.setenv("CAFFE_HARNESS_CAFFE", str(tmp_path / "nowhere"))
    out = tmp_path / "out"
    for kwargs, message in [
        (dict(solver={"type": "SGD", "max_iter": 0}, blobs="2x2"), "max_iter"),
        (dict(solver={"max_iter": 3}, blobs="2x2", resume_at=3), "resume_at must be an iteration in 1..2"),
        (dict(solver={"max_iter": 3}, blobs="2x2", blas="mkl"), "unknown blas 'mkl'"),
        (dict(solver={"max_iter": 3}, blobs="2x2", gradients={"special": ["denormal"]}), "unknown gradient special"),
        (dict(solver={"max_iter": 3}, blobs="2x2", init={"ip0/0": np.zeros((3, 3), np.float32)}), r"shape \(3, 3\)"),
    ]:
        with pytest.raises(InputError, match=message):
            oracle.capture(out_dir=out, **kwargs)
    assert not out.exists()
    with pytest.raises(OracleUnavailable):
        oracle.capture({"max_iter": 3}, "2x2", None, out)
    assert not out.exists() and not list(tmp_path.glob(".out*"))


# =============================================================================
# With real Caffe
# =============================================================================
@pytest.mark.oracle
def test_installer_is_idempotent(caffe):
    p = subprocess.run([sys.executable, str(INSTALLER)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "CAFFE_HARNESS_CAFFE": str(caffe.prefix)})
    assert p.returncode == 0, p.stderr
    assert "already installed" in p.stdout and f"caffe {caffe.version}" in p.stdout
    assert "libopenblas0-pthread" in p.stdout and "libblas3" in p.stdout and "libatlas3-base" in p.stdout


@pytest.mark.oracle
@pytest.mark.parametrize("blas, folder", [("openblas", "openblas-pthread"), ("reference", "blas"), ("atlas", "atlas")])
def test_each_blas_loads_its_own_libblas(caffe, blas, folder):
    lib = caffe.blas_library(blas)
    assert lib.is_relative_to(caffe.prefix)
    assert lib.parent.name == folder and lib.name == "libblas.so.3"


@pytest.mark.oracle
def test_caffe_runs_and_reports_its_version(caffe, tmp_path):
    assert caffe.version.startswith("1.0.0")
    with open(tmp_path / "v.log", "wb") as log:
        assert caffe.run(["--version"], cwd=tmp_path, log=log) == 0
    assert "caffe version 1.0.0" in (tmp_path / "v.log").read_text()


RECAPTURED = [
    ("caffe-runs", "sgd-step"),
    ("caffe-runs", "adam-poly-clip-l1"),
    ("caffe-runs", "sgd-multistep-itersize"),
    ("caffe-runs", "adadelta-exp"),
    ("caffe-runs-refblas", "sgd-inv-clip"),
    ("caffe-runs-atlas", "adam-step-clip-large"),
]


@pytest.mark.oracle
@pytest.mark.parametrize("group, name", RECAPTURED, ids=[f"{g}/{n}" for g, n in RECAPTURED])
def test_recapture_is_bit_identical(caffe, tmp_path, group, name):
    """Real Caffe re-run on a fixture's inputs writes the same bits in every snapshot."""
    src = FIXTURES / group / name
    res = oracle.capture_like(src, tmp_path / "again", install=caffe)
    cfg = json.loads((res.path / "config.json").read_text())
    assert res.caffe_exit == 0 and res.fatal is None and res.blas == _config(src)["blas"] == cfg["blas"]
    assert {p.name for p in res.path.iterdir()} == CAPTURE_FILES
    expected, got = _snapshots(src), _snapshots(res.path)
    assert len(expected) == 2 * _config(src)["max_iter"]
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key
    assert cfg["provenance"]["caffe"] == f"caffe {caffe.version}"
    assert cfg["provenance"]["blas_library"].endswith("libblas.so.3")


@pytest.mark.oracle
def test_refused_setting_is_captured(caffe, tmp_path):
    src = FIXTURES / "caffe-runs-rejected" / "sgd-sigmoid-gamma-negative"
    res = oracle.capture_like(src, tmp_path / "like", install=caffe)
    assert res.refused and res.caffe_exit == _config(src)["caffe_exit"] == -6
    assert res.fatal == "Check failed: this->param_.gamma() >= 0 (-0.5 vs. 0)"
    assert res.fatal in (src / "caffe.log").read_text()
    assert not (res.path / "snapshots").exists()
    fresh = oracle.capture({"type": "Adam", "base_lr": 0.1, "lr_policy": "sigmoid", "gamma": -1, "max_iter": 4},
                           "3x2", None, tmp_path / "fresh", install=caffe)
    assert fresh.refused and json.loads((fresh.path / "config.json").read_text())["caffe_exit"] == fresh.caffe_exit != 0
    unknown = oracle.capture({"type": "Adamax", "max_iter": 2}, "3x2", None, tmp_path / "unknown", install=caffe)
    assert unknown.refused and "Adamax" in unknown.fatal


SPECIAL_RUN = dict(solver={"type": "SGD", "base_lr": 1, "lr_policy": "fixed", "max_iter": 5},
                   blobs="6x3:lr_b=1,4x2:nobias",
                   gradients={"special": list(oracle.GRAD_SPECIALS), "rate": 0.25}, seed=7)


def _diffs_equal_gradients(folder: Path) -> list[bool]:
    """Per iteration and blob: is the snapshot diff the recorded gradient, bit for bit?

    With SGD, base_lr 1, lr_mult 1, no momentum and no decay, Caffe's diff
    after the update is local_rate * gradient = the gradient itself.
    """
    out = []
    with np.load(folder / "gradients.npz") as z:
        for k in range(5):
            blobs = params_by_name(read_caffemodel(folder / "snapshots" / f"run_iter_{k + 1}.caffemodel"))
            for name, b in blobs.items():
                out.append(_bits(b.diff) == _bits(z[f"grad/{k}/0/{name}"]))
    return out


@pytest.mark.oracle
def test_fresh_capture_layout_and_exact_gradients(caffe, tmp_path):
    """The generator's gradients (with zeros, subnormals, huge, NaN, Inf) are exactly what Caffe's solver sees."""
    res = oracle.capture(out_dir=tmp_path / "fresh", install=caffe, **SPECIAL_RUN)
    assert res.caffe_exit == 0 and res.iterations == 5
    assert {p.name for p in res.path.iterdir()} == CAPTURE_FILES
    cfg = json.loads((res.path / "config.json").read_text())
    assert cfg["seed"] == 7 and cfg["blas"] == "openblas" and cfg["caffe_exit"] == 0
    assert cfg["layers"] == [{"D": 6, "O": 3, "lr_b": 1}, {"D": 4, "O": 2, "bias": False}]
    assert cfg["gradients"]["special"] == list(oracle.GRAD_SPECIALS)
    prov = cfg["provenance"]
    assert prov["blas_package"].startswith("libopenblas0-pthread ") and prov["date"] and "cpu_flags" in prov
    with np.load(res.path / "gradients.npz") as z:
        keys = set(z.files)
        vals = np.concatenate([z[k].ravel() for k in z.files if k.startswith("grad/")])
    assert keys == {"init/ip0/0", "init/ip0/1", "init/ip1/0"} | {
        f"grad/{k}/0/{b}" for k in range(5) for b in ("ip0/0", "ip0/1", "ip1/0")}
    assert np.isnan(vals).any() and np.isinf(vals).any() and (vals == 0).any()
    assert all(_diffs_equal_gradients(res.path))
    assert "solver_mode: CPU" in (res.path / "solver.prototxt").read_text()
    with pytest.raises(InputError, match="not empty"):
        oracle.capture(out_dir=res.path, install=caffe, **SPECIAL_RUN)


@pytest.mark.oracle
def test_momentum_zero_keeps_inf_history_with_reference_blas(caffe, tmp_path):
    """Oracle fact: Caffe's history update is sscal then saxpy; with momentum 0, OpenBLAS 0.3.13's
    sscal writes zeros, reference BLAS and ATLAS multiply (0*Inf = NaN), so an Inf gradient poisons
    the next iterations' update only with those two."""
    by_blas = {}
    for blas in ("openblas", "reference", "atlas"):
        res = oracle.capture(out_dir=tmp_path / blas, install=caffe, blas=blas, **SPECIAL_RUN)
        by_blas[blas] = _diffs_equal_gradients(res.path)
    assert all(by_blas["openblas"])
    assert not all(by_blas["reference"]) and by_blas["reference"] == by_blas["atlas"]


@pytest.mark.oracle
def test_resumed_run_continues_exactly(caffe, tmp_path):
    """Resuming from run_iter_K.solverstate on the continuation rows gives the straight run's bits."""
    res = oracle.capture({"type": "Adam", "base_lr": 0.01, "lr_policy": "poly", "power": 2.0, "max_iter": 8,
                          "momentum": 0.9, "iter_size": 2, "weight_decay": 0.01},
                         "6x3,4x2:nobias", None, tmp_path / "resumed", seed=3, resume_at=3, install=caffe)
    assert res.caffe_exit == 0 and res.resume_exit == 0
    cfg = json.loads((res.path / "config.json").read_text())
    r = cfg["resume"]
    assert r["at"] == 3 and r["first_row"] == 6 and r["from"] == "snapshots/run_iter_3.solverstate"
    assert r["caffe_exit"] == 0 and "--snapshot=snapshots/run_iter_3.solverstate" in r["command"]
    for f in ("solver", "net", "source", "h5", "log"):
        assert (res.path / r[f]).is_file()
    straight, resumed = _snapshots(res.path), _snapshots(res.path, "resumed")
    assert sorted(resumed) == sorted(f"resumed_iter_{k}.{s}" for k in range(4, 9) for s in ("caffemodel", "solverstate"))
    for key, value in resumed.items():
        assert value == straight[key.replace("resumed_", "run_")], key
    assert "Resuming from snapshots/run_iter_3.solverstate" in (res.path / "caffe_resume.log").read_text()
    again = oracle.capture_like(res.path, tmp_path / "again", install=caffe)
    assert again.resume_exit == 0
    assert _snapshots(again.path) == straight and _snapshots(again.path, "resumed") == resumed


@pytest.mark.oracle
def test_capture_from_user_gradients_matches_fixture(caffe, tmp_path):
    """A fixture's gradients.npz fed back as a user's stream (solver from its solver.prototxt) reproduces its run."""
    src = FIXTURES / "caffe-runs" / "sgd-multistep-itersize"
    res = oracle.capture(src / "solver.prototxt", _config(src)["layers"], src / "gradients.npz", tmp_path / "npz",
                         seed=1, install=caffe)
    assert (res.path / "solver.prototxt").read_text() == (src / "solver.prototxt").read_text()
    assert _snapshots(res.path) == _snapshots(src)
    assert json.loads((res.path / "config.json").read_text())["gradients"]["npz"] == "gradients.npz"


@pytest.mark.oracle
def test_capture_command(caffe, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAFFE_HARNESS_CAFFE", str(caffe.prefix))
    out = tmp_path / "cli"
    argv = ["capture", str(out), "--type", "Nesterov", "--lr-policy", "multistep", "--base-lr", "0.05",
            "--gamma", "0.5", "--stepvalue", "2,4", "--momentum", "0.9", "--layers", "5x2,3x3:nobias:lr_w=0.5",
            "--iters", "5", "--seed", "9", "--grad-special", "zeros,huge", "--blas", "atlas", "--resume-at", "2"]
    assert cli_main(argv) == 0
    assert "captured 5 iteration(s), blas=atlas, resumed at 2" in capsys.readouterr().out
    text = (out / "solver.prototxt").read_text()
    assert 'type: "Nesterov"' in text and "stepvalue: 2\nstepvalue: 4\n" in text and "random_seed: 9" in text
    assert cli_main(argv) == 2  # OUT not empty
    assert "not empty" in capsys.readouterr().err
    assert cli_main(argv + ["--force"]) == 0
    assert cli_main(["capture", "--like", str(out), str(tmp_path / "like")]) == 0
    assert _snapshots(tmp_path / "like") == _snapshots(out)
    assert json.loads((tmp_path / "like" / "config.json").read_text())["blas"] == "atlas"
    assert cli_main(["capture", str(tmp_path / "no"), "--type", "SGD", "--lr-policy", "sigmoid", "--gamma", "-1"]) == 1
    assert "caffe refused (exit -6): Check failed" in capsys.readouterr().err
    assert cli_main(["capture", "--like", str(out), str(tmp_path / "x"), "--iters", "3"]) == 2
