"""The port protocol: specs, in-process runners, the cmd: file protocol, the C and torch ports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from harness.errors import CaffeRefusal
from harness.ports import Port, Unsupported
from harness.ports.base import InProcessRunner, PortSpecError, load_port, normalize_output
from harness.ports.cmd import CmdRunner, read_outputs, write_inputs
from harness.ports.conformance import check, evaluate, load_corpus, load_trace

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "fixtures" / "caffe-runs"
ALL_RUNS = sorted((ROOT / "fixtures").glob("caffe-runs*"))


@pytest.fixture(scope="module")
def sgd_step():
    return load_trace(RUNS / "sgd-step")


@pytest.fixture(scope="module")
def adam_step():
    return load_trace(RUNS / "adam-step")


# ---------------------------------------------------------------------------
# in-process ports
# ---------------------------------------------------------------------------
class Frozen:
    """A port that never moves the weights (a minimal, wrong, well-formed port)."""

    def supports(self, config):
        return True if config.type == "SGD" else f"only SGD, not {config.type}"

    def init(self, config, params, history, iter, current_step):
        self.params = {k: np.array(v) for k, v in params.items()}

    def step(self, passes):
        return {"params": self.params}


class Broken(Frozen):
    def __init__(self, mode):
        self.mode = mode

    def init(self, config, params, history, iter, current_step):
        super().init(config, params, history, iter, current_step)
        if self.mode == "unsupported":
            raise Unsupported("cannot resume this history")
        if self.mode == "refuse":
            raise CaffeRefusal("Unknown learning rate policy: x", when="first-update")

    def step(self, passes):
        name = next(iter(self.params))
        if self.mode == "crash":
            raise ZeroDivisionError("boom")
        if self.mode == "missing-blob":
            return {"params": {name: self.params[name]}}
        if self.mode == "wrong-shape":
            return {"params": {k: np.zeros(v.size + 1, np.float32) for k, v in self.params.items()}}
        if self.mode == "not-a-mapping":
            return [1, 2]
        if self.mode == "unknown-key":
            return {"params": self.params, "weights": 1}
        if self.mode == "bad-history":
            return {"params": self.params, "history": [np.zeros(1, np.float32)]}
        return {"params": self.params}


def test_frozen_port_fails_with_the_first_divergence(sgd_step):
    run = InProcessRunner(Frozen(), "frozen").run(sgd_step)
    assert run.status == "ok" and len(run.outputs) == len(sgd_step.iterations)
    r = evaluate("sgd-step", sgd_step, run)
    assert r.result == "FAIL" and r.fields == ("params",)
    assert r.message.startswith("iter 0 params ip0/0[0]: expected ") and r.message.endswith(" ulp)")


def test_supports_reason_makes_the_trace_unsupported(adam_step):
    r = evaluate("adam-step", adam_step, InProcessRunner(Frozen(), "frozen").run(adam_step))
    assert (r.result, r.message) == ("unsupported", "only SGD, not Adam")
    assert not r.failed


@pytest.mark.parametrize(
    "mode, result, message",
    [
        ("crash", "ERROR", "step() of iteration 0 raised ZeroDivisionError: boom"),
        ("missing-blob", "ERROR", "iteration 0: 'params' has no blob 'ip0/1'"),
        ("wrong-shape", "ERROR", "iteration 0: params['ip0/0'] has shape (22,), expected (3, 7)"),
        ("not-a-mapping", "ERROR", "iteration 0: step returned list, expected a mapping with 'params'"),
        ("unknown-key", "ERROR", "iteration 0: step returned unknown key(s) weights"),
        ("bad-history", "ERROR", "iteration 0: 'history' has 1 blobs, expected 5 (SGD, 5 learnable blobs)"),
        ("unsupported", "unsupported", "cannot resume this history"),
        ("refuse", "FAIL", "the port refused settings Caffe accepts: Unknown learning rate policy: x"),
    ],
)
def test_misbehaving_ports_are_reported_not_raised(mode, result, message, sgd_step):
    r = evaluate("sgd-step", sgd_step, InProcessRunner(Broken(mode), mode).run(sgd_step))
    assert (r.result, r.message) == (result, message)


def test_port_protocol_is_runtime_checkable():
    assert isinstance(Frozen(), Port)
    assert not isinstance(object(), Port)


def test_normalize_output_rounds_to_float32_and_reshapes(sgd_step):
    cfg = sgd_step.config
    params = {b.name: np.arange(b.count, dtype=np.float64) for b in cfg.blobs}
    out = normalize_output({"params": params, "lr": 0.1, "current_step": np.int64(2)}, cfg)
    assert all(a.dtype == np.float32 and a.shape == b.shape for a, b in zip(out.params.values(), cfg.blobs))
    assert out.lr == float(np.float32(0.1)) and out.current_step == 2 and out.diff is None


def test_port_cannot_alter_the_trace(sgd_step):
    class Vandal(Frozen):
        def init(self, config, params, history, iter, current_step):
            super().init(config, params, history, iter, current_step)
            for v in params.values():
                v[...] = 7

        def step(self, passes):
            for p in passes:
                for v in p.values():
                    v[...] = 7
            return {"params": self.params}

    before = {k: v.copy() for k, v in sgd_step.init_params.items()}
    g0 = sgd_step.iterations[0].grads[0]["ip0/0"].copy()
    InProcessRunner(Vandal(), "vandal").run(sgd_step)
    assert all(np.array_equal(before[k], sgd_step.init_params[k]) for k in before)
    assert np.array_equal(g0, sgd_step.iterations[0].grads[0]["ip0/0"])


# ---------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------
def test_py_spec_loads_a_module_attribute_or_factory(tmp_path, monkeypatch, sgd_step):
    (tmp_path / "myport.py").write_text(textwrap.dedent("""
        from harness.ports.variants import variant_port
        PORT = variant_port("caffe")
        def make():
            return variant_port("no-fma")
        class Klass:
            def supports(self, config): return "no"
            def init(self, *a): pass
            def step(self, passes): return {}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert evaluate("t", sgd_step, load_port("py:myport:PORT").run(sgd_step)).result == "pass"
    assert evaluate("t", sgd_step, load_port("py:myport:make").run(sgd_step)).result == "FAIL"
    assert evaluate("t", sgd_step, load_port(f"py:{tmp_path / 'myport.py'}:Klass").run(sgd_step)).result == "unsupported"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bogus", "unknown port spec 'bogus'"),
        ("py:nomodule_xyz:PORT", "py:nomodule_xyz:PORT: cannot import nomodule_xyz"),
        ("py:json:nothing", "py:json:nothing: json has no attribute 'nothing'"),
        ("py:json", "expected py:MODULE:ATTR or py:FILE.py:ATTR"),
        ("py:/no/such/file.py:X", "no such file /no/such/file.py"),
        ("py:json:__doc__", "is neither a port nor a factory of ports"),
        ("variant:nope", "unknown variant 'nope'"),
        ("cmd:", "cmd: needs a command"),
        ("cmd:'unbalanced", "cannot split the command line"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, message):
    with pytest.raises(PortSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_port(spec)


def test_reference_port_passes_every_capture():
    report = check(load_port("reference"), load_corpus(ALL_RUNS), diagnose_failures=False)
    counts = report.counts()
    assert report.ok and counts["pass"] == 68 and counts["refused-ok"] == 6, counts


def test_the_unflagged_emulation_passes_the_golden_corpus():
    report = check(load_port("variant:caffe"), load_corpus([ROOT / "golden"]), diagnose_failures=False)
    counts = report.counts()
    assert report.ok and counts["unsupported"] == 0 and counts["pass"] >= 245, counts


# ---------------------------------------------------------------------------
# the cmd: protocol
# ---------------------------------------------------------------------------
def test_inputs_layout(tmp_path, sgd_step):
    m = write_inputs(sgd_step, tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text()) == m
    assert m["format"] == "caffe-harness-port" and m["version"] == 1 and m["blas"] == "openblas"
    assert m["iterations"] == 16 and m["iter_size"] == 1 and m["start"] == {"iter": 0, "current_step": 0, "history": False}
    assert [b["name"] for b in m["blobs"]] == ["ip0/0", "ip0/1", "ip1/0", "ip2/0", "ip2/1"]
    raw = np.fromfile(tmp_path / "grads" / "3" / "0" / "0.bin", dtype="<f4").reshape(3, 7)
    assert np.array_equal(raw, sgd_step.iterations[3].grads[0]["ip0/0"])
    init = np.fromfile(tmp_path / "init" / "params" / "4.bin", dtype="<f4")
    assert np.array_equal(init, sgd_step.init_params["ip2/1"])
    txt = dict(line.split(" ", 1) for line in (tmp_path / "manifest.txt").read_text().splitlines())
    assert txt["type"] == "SGD" and txt["lr_policy"] == "step" and txt["blobs"] == "5"
    assert np.float32(float(txt["base_lr"])) == np.float32(sgd_step.config.base_lr)
    assert txt["stepvalue"] == "0" and txt["average_loss"] == "1" and txt["solver_mode"] == "CPU"
    assert txt["solver_type"] == "-" and txt["type_set"] == "1"
    assert (tmp_path / "out").is_dir() and json.loads((tmp_path / "solver.json").read_text())["type"] == "SGD"


PY_PORT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import numpy as np
    d = Path(sys.argv[-1])
    mode = sys.argv[1]
    m = json.loads((d / "manifest.json").read_text())
    if mode == "unsupported":
        (d / "out" / "status.txt").write_text("unsupported no SGD here\\n"); sys.exit(0)
    if mode == "crash":
        print("something went wrong", file=sys.stderr); sys.exit(3)
    if mode == "sleep":
        time.sleep(30)
    for k in range(m["iterations"]):
        for b in m["blobs"]:
            w = np.fromfile(d / "init" / "params" / f"{b['index']}.bin", dtype="<f4")
            out = d / "out" / str(k) / "params"
            out.mkdir(parents=True, exist_ok=True)
            if mode == "short" and k == 2 and b["index"] == 1:
                w = w[:-1]
            if mode == "npy":
                np.save(out / f"{b['index']}.npy", w.astype(np.float32))
            else:
                w.astype("<f4").tofile(out / f"{b['index']}.bin")
""")


@pytest.fixture
def py_port(tmp_path):
    p = tmp_path / "port.py"
    p.write_text(PY_PORT)
    return p


@pytest.mark.parametrize(
    "mode, result, message",
    [
        ("frozen", "FAIL", "iter 0 params ip0/0[0]"),
        ("npy", "FAIL", "iter 0 params ip0/0[0]"),
        ("unsupported", "unsupported", "no SGD here"),
        ("crash", "ERROR", "exited with status 3: something went wrong"),
        ("short", "ERROR", "has 8 bytes, expected 12 (3 float32 for iteration 2 params of ip0/1)"),
    ],
)
def test_cmd_port_results(mode, result, message, py_port, sgd_step):
    runner = load_port(f"cmd:{sys.executable} {py_port} {mode}")
    r = evaluate("sgd-step", sgd_step, runner.run(sgd_step))
    assert r.result == result and message in r.message, r.message


def test_cmd_port_timeout(py_port, sgd_step):
    run = CmdRunner(f"{sys.executable} {py_port} sleep", timeout=0.5).run(sgd_step)
    assert (run.status, run.message) == ("error", "timed out after 0.5 s")


def test_cmd_port_missing_command(sgd_step):
    run = load_port("cmd:/no/such/port-binary").run(sgd_step)
    assert (run.status, run.message) == ("error", "command not found: /no/such/port-binary")


def test_cmd_dir_placeholder_and_env(tmp_path, sgd_step):
    script = tmp_path / "p.sh"
    script.write_text('#!/bin/sh\n[ "$1" = "$CAFFE_HARNESS_PORT_DIR" ] && echo "refused Caffe says no" > "$1/out/status.txt"\n')
    script.chmod(0o755)
    run = load_port(f"cmd:{script} {{dir}} extra").run(sgd_step)
    assert (run.status, run.message) == ("refused", "Caffe says no")


def test_read_outputs_names_the_missing_file(tmp_path, sgd_step):
    (tmp_path / "0" / "params").mkdir(parents=True)
    run = read_outputs(sgd_step, tmp_path)
    assert run.status == "error" and run.message == f"the port wrote no {tmp_path}/0/params/0.bin (iteration 0 params of ip0/0)"


# ---------------------------------------------------------------------------
# the C example port
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def c_port(tmp_path_factory):
    gcc = shutil.which("gcc") or shutil.which("cc")
    assert gcc, "the C port test needs gcc (Debian: apt-get install gcc)"
    exe = tmp_path_factory.mktemp("c-port") / "sgd"
    src = ROOT / "examples" / "c-port" / "sgd.c"
    subprocess.run([gcc, "-O2", "-ffp-contract=off", "-std=c11", "-Wall", "-Werror", "-o", str(exe), str(src), "-lm"], check=True)
    return exe


def test_c_port_is_bit_exact_on_every_sgd_capture(c_port):
    corpus = [(tid, t) for tid, t in load_corpus(ALL_RUNS)
              if t.config.type == "SGD" or tid in ("adam-step", "atlas/adam-inv", "adam-sigmoid-gamma-negative")]
    report = check(load_port(f"cmd:{c_port}"), corpus)
    by = {r.id: r for r in report.results}
    assert report.ok, [(r.id, r.message) for r in report.results if r.failed]
    assert sum(r.result == "pass" for r in report.results) == 19  # 11 OpenBLAS, 4 reference BLAS, 4 ATLAS
    assert by["sgd-inv-clip-large"].result == "pass" and by["atlas/sgd-inv-clip"].result == "pass"
    assert by["adam-step"].result == "unsupported" and "only the SGD solver" in by["adam-step"].message
    assert by["sgd-sigmoid-gamma-negative"].result == "refused-ok"
    assert by["sgd-sigmoid-gamma-negative"].message == "refused: Check failed: this->param_.gamma() >= 0 (-0.5 vs. 0)"
    assert by["adam-sigmoid-gamma-negative"].result == "refused-ok"


def test_c_port_is_bit_exact_on_the_golden_corpus(c_port):
    # the OpenBLAS SGD traces (the fixtures test covers the other builds) and every refusal
    corpus = [(tid, t) for tid, t in load_corpus([ROOT / "golden"])
              if (t.config.type == "SGD" and t.blas == "openblas") or t.refusal is not None]
    report = check(load_port(f"cmd:{c_port}"), corpus, diagnose_failures=False)
    assert report.ok, [(r.id, r.message) for r in report.results if r.failed]
    counts = report.counts()
    assert counts["pass"] >= 50 and counts["FAIL"] == counts["ERROR"] == 0, counts
    by = {r.id: r for r in report.results}
    assert by["average-loss0"].message == ("refused: Check failed: param_.average_loss() >= 1 (0 vs. 1) "
                                           "average_loss should be non-negative.")
    assert by["gpu-mode"].message == "refused: Cannot use GPU in CPU-only Caffe: check mode."


# ---------------------------------------------------------------------------
# the PyTorch adapter
# ---------------------------------------------------------------------------
def test_torch_port_is_a_careful_translation():
    pytest.importorskip("torch", reason="the PyTorch adapter needs torch (pip install 'caffe-harness[torch]')")
    from harness.ports.torch_port import lr_factor

    corpus = [(tid, t) for tid, t in load_corpus([RUNS]) if tid in ("sgd-step", "sgd-fixed", "sgd-step-l1", "adam-fixed", "nesterov-fixed")]
    report = check(load_port("torch"), corpus)
    by = {r.id: r for r in report.results}
    assert by["sgd-step-l1"].result == "unsupported" and "L1" in by["sgd-step-l1"].message
    for tid in ("sgd-step", "sgd-fixed", "adam-fixed", "nesterov-fixed"):
        assert by[tid].result == "FAIL"
        assert "lr" not in by[tid].message  # the rates agree with Caffe's log at print precision
    sgd = next(g for g in report.diagnosis.groups if g.solver == "SGD")
    assert sgd.exact and sgd.exact[0][0] == "lr-outside-history", sgd.text
    nesterov = next(g for g in report.diagnosis.groups if g.solver == "Nesterov")
    assert nesterov.exact == [("nesterov-pytorch",)], nesterov.text
    t = dict(corpus)["sgd-step"]
    assert [lr_factor(t.config, k) for k in (0, 4, 5, 10)] == [1.0, 1.0, 0.5, 0.25]


def test_torch_spec_without_torch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(PortSpecError, match="PyTorch is not installed"):
        load_port("torch")
