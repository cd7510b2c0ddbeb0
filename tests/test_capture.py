"""Captures (recorded real-Caffe runs) load into ``Trace``; bad captures are refused naming the file."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.errors import InputError
from harness.io import capture
from harness.io.capture import LR_PRECISION_LOG, find_captures, load_capture, read_log_facts
from harness.io.golden import read_golden, trace_differences, write_golden

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RUNS = [p for d in sorted(FIXTURES.glob("caffe-runs*")) for p in find_captures(d)]
RUN_IDS = [f"{p.parent.name}/{p.name}" for p in RUNS]


def _bits(a) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def test_every_fixture_family_is_found():
    families = {p.parent.name for p in RUNS}
    assert families == {"caffe-runs", "caffe-runs-refblas", "caffe-runs-atlas", "caffe-runs-rejected"}
    assert len(RUNS) >= 70


@pytest.mark.parametrize("run", RUNS, ids=RUN_IDS)
def test_fixture_capture_loads_and_converts(run, tmp_path):
    t = load_capture(run)
    cfg = t.config
    cj = json.loads((run / "config.json").read_text())
    nb = len(cfg.blobs)
    assert t.provenance["origin"] == "caffe" and t.blas == cj["blas"]
    assert t.provenance["lr_precision"] == LR_PRECISION_LOG
    assert list(t.init_params) == list(cfg.blob_names)
    with np.load(run / "gradients.npz") as z:
        for n, a in t.init_params.items():
            assert np.array_equal(_bits(a), _bits(z[f"init/{n}"]))
    assert [it.iter for it in t.iterations] == list(range(cfg.max_iter))
    for it in t.iterations:
        assert len(it.grads) == cfg.iter_size
    if run.parent.name == "caffe-runs-rejected":
        assert t.refusal and t.refusal_when in ("start", "first-update")
        assert all(it.params is None and it.history is None for it in t.iterations)
    else:
        assert t.refusal is None
        prev = t.init_params
        for it in t.iterations:
            assert len(it.history) == nb * cfg.history_slots
            assert it.current_step is not None and isinstance(it.lr, str)
            # Caffe's Update is data -= diff: each snapshot must follow from the previous one,
            # which pins every expected array to the right iteration.
            for n in cfg.blob_names:
                assert np.array_equal(_bits(prev[n] - it.diff[n]), _bits(it.params[n])), (it.iter, n)
            prev = it.params
    # ... and converts to a golden trace that reads back identically
    write_golden(t, tmp_path / "g")
    assert trace_differences(t, read_golden(tmp_path / "g")) == []


def test_itersize_passes_and_multipliers():
    t = load_capture(FIXTURES / "caffe-runs/sgd-multistep-itersize")
    assert t.config.iter_size == 2 and all(len(it.grads) == 2 for it in t.iterations)
    with np.load(FIXTURES / "caffe-runs/sgd-multistep-itersize/gradients.npz") as z:
        assert np.array_equal(_bits(t.iterations[7].grads[1]["ip1/0"]), _bits(z["grad/7/1/ip1/0"]))
    spec = {b.name: (b.shape, b.lr_mult, b.decay_mult) for b in t.config.blobs}
    assert spec == {
        "ip0/0": ((3, 7), 1.0, 1.0),
        "ip0/1": ((3,), 2.0, 0.0),
        "ip1/0": ((2, 5), 0.5, 2.0),
        "ip2/0": ((4, 3), 1.5, 1.0),
        "ip2/1": ((4,), 0.0, 1.0),
    }
    # multistep: stepvalue 3, 7, 11 -> current_step after iteration k, and the printed lr
    assert [it.current_step for it in t.iterations] == [0] * 3 + [1] * 4 + [2] * 4 + [3] * 5
    assert [it.lr for it in t.iterations[:4]] == ["0.02", "0.02", "0.02", "0.006"]


def test_two_slot_history():
    t = load_capture(FIXTURES / "caffe-runs/adam-step")
    assert t.config.history_slots == 2 and len(t.iterations[0].history) == 10
    assert t.iterations[0].history[5].shape == t.config.blobs[0].shape


def test_refusal_at_first_update():
    t = load_capture(FIXTURES / "caffe-runs-rejected/sgd-sigmoid-gamma-negative")
    assert t.refusal == "Check failed: this->param_.gamma() >= 0 (-0.5 vs. 0)"
    assert t.refusal_when == "first-update"
    assert t.provenance["refusal_at"] == "sgd_solver.cpp:61"


def _copy(tmp_path: Path, run: str = "caffe-runs/sgd-multistep-itersize") -> Path:
    d = tmp_path / Path(run).name
    shutil.copytree(FIXTURES / run, d)
    return d


def test_refusal_at_start(tmp_path):
    d = _copy(tmp_path, "caffe-runs-rejected/sgd-sigmoid-gamma-negative")
    log = (d / "caffe.log").read_text().splitlines(keepends=True)
    solving = next(i for i, line in enumerate(log) if "] Solving " in line)
    fatal = next(line for line in log if line.startswith("F"))
    (d / "caffe.log").write_text("".join(log[:solving]) + fatal)
    t = load_capture(d)
    assert t.refusal_when == "start"


def _make_resumed(d: Path, k: int = 8) -> None:
    """Lay out a resumed capture as harness/oracle.py records one, from a straight run's files.

    The continuation of a deterministic run equals the straight run's tail, so the
    straight run's snapshots stand in for the resumed run's.
    """
    (d / "solver_resume.prototxt").write_text(
        (d / "solver.prototxt").read_text().replace('snapshot_prefix: "snapshots/run"', 'snapshot_prefix: "snapshots/resumed"')
    )
    for j in range(k + 1, 17):
        for ext in ("caffemodel", "solverstate"):
            shutil.copy(d / f"snapshots/run_iter_{j}.{ext}", d / f"snapshots/resumed_iter_{j}.{ext}")
    log = (d / "caffe.log").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(log) if f"Iteration {k} (" in line)
    head = next(i for i, line in enumerate(log) if "] Solving " in line)
    (d / "caffe_resume.log").write_text("".join(log[: head + 1]) + "".join(log[cut:]))
    cj = json.loads((d / "config.json").read_text())
    cj["resume"] = {
        "at": k, "from": f"snapshots/run_iter_{k}.solverstate", "solver": "solver_resume.prototxt",
        "log": "caffe_resume.log", "snapshot_prefix": "snapshots/resumed", "caffe_exit": 0,
    }
    (d / "config.json").write_text(json.dumps(cj))


def test_resumed_capture_starts_from_the_snapshot(tmp_path):
    d = _copy(tmp_path)
    _make_resumed(d, 8)
    from harness.io.capture import capture_parts

    assert capture_parts(d) == ["run", "resume"]
    t = load_capture(d)  # the continuation by default
    full = load_capture(FIXTURES / "caffe-runs/sgd-multistep-itersize")
    assert (t.init_iter, t.init_current_step) == (8, full.iterations[7].current_step)
    assert t.provenance["capture_part"] == "resume"
    assert [it.iter for it in t.iterations] == list(range(8, 16))
    for n in t.config.blob_names:
        assert np.array_equal(_bits(t.init_params[n]), _bits(full.iterations[7].params[n]))
    assert all(np.array_equal(_bits(a), _bits(b)) for a, b in zip(t.init_history, full.iterations[7].history))
    assert trace_differences(type(t)(**{**t.__dict__, "iterations": full.iterations[8:]}), t) == []
    straight = load_capture(d, part="run")
    assert straight.init_iter == 0 and len(straight.iterations) == 16
    assert trace_differences(type(full)(**{**full.__dict__, "config": straight.config, "provenance": straight.provenance,
                                           "source": straight.source}), straight) == []


def test_resumed_capture_with_a_missing_state(tmp_path):
    d = _copy(tmp_path)
    _make_resumed(d, 8)
    (d / "snapshots/run_iter_8.solverstate").unlink()
    with pytest.raises(InputError, match="missing snapshot") as ei:
        load_capture(d)
    assert ei.value.path == os.fspath(d / "snapshots/run_iter_8.solverstate")
    with pytest.raises(InputError, match="no completed resumed run"):
        load_capture(FIXTURES / "caffe-runs/sgd-step", part="resume")


def test_log_facts(tmp_path):
    f = read_log_facts(FIXTURES / "caffe-runs/sgd-multistep-itersize/caffe.log")
    assert sorted(f.lr) == list(range(16)) and f.lr[14][0] == "0.00054"
    assert f.net_name == "inject" and f.fatal is None


def test_golden_keeps_log_text_of_lr(tmp_path):
    t = load_capture(FIXTURES / "caffe-runs/sgd-multistep-itersize")
    write_golden(t, tmp_path / "g")
    m = json.loads((tmp_path / "g/trace.json").read_text())
    assert m["iterations"][14]["lr"] == {"log_text": "0.00054", "f32_hex": "0x3a0d8ec9", "decimal": "0.00054"}
    assert read_golden(tmp_path / "g").iterations[14].lr == "0.00054"


# --------------------------------------------------------------------------
# bad captures: one-line InputError naming the file
# --------------------------------------------------------------------------
def _rewrite_npz(path: Path, fn) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    fn(arrays)
    np.savez(path, **arrays)


def _missing_snapshot(d):
    (d / "snapshots/run_iter_5.caffemodel").unlink()
    return "snapshots/run_iter_5.caffemodel", "missing snapshot of iteration 4"


def _wrong_iter(d):
    shutil.copy(d / "snapshots/run_iter_3.solverstate", d / "snapshots/run_iter_4.solverstate")
    return "snapshots/run_iter_4.solverstate", "iter is 3, expected 4"


def _npz_lacks_iteration(d):
    _rewrite_npz(d / "gradients.npz", lambda a: [a.pop(k) for k in list(a) if k.startswith("grad/5/")])
    return "gradients.npz", "no gradients for iteration 5"


def _npz_lacks_pass(d):
    _rewrite_npz(d / "gradients.npz", lambda a: a.pop("grad/5/1/ip2/1"))
    return "gradients.npz", "no array 'grad/5/1/ip2/1'"


def _npz_shape(d):
    _rewrite_npz(d / "gradients.npz", lambda a: a.update({"grad/2/0/ip0/0": a["grad/2/0/ip0/0"][:2]}))
    return "gradients.npz", r"grad/2/0/ip0/0: ip0/0 has shape \(2, 7\), expected \(3, 7\)"


def _npz_dtype(d):
    _rewrite_npz(d / "gradients.npz", lambda a: a.update({"grad/2/0/ip0/0": a["grad/2/0/ip0/0"].astype(np.float64)}))
    return "gradients.npz", "is float64, expected float32"


def _npz_stray_key(d):
    _rewrite_npz(d / "gradients.npz", lambda a: a.update({"weights": a["init/ip0/0"]}))
    return "gradients.npz", "unexpected array 'weights'"


def _npz_corrupt(d):
    (d / "gradients.npz").write_bytes((d / "gradients.npz").read_bytes()[:500])
    return "gradients.npz", "not a readable .npz"


def _init_mismatch(d):
    _rewrite_npz(d / "gradients.npz", lambda a: a.update({"init/ip1/0": a["init/ip1/0"] + np.float32(1)}))
    return "init.caffemodel", "blob ip1/0 differs from gradients.npz init/ip1/0"


def _truncated_snapshot(d):
    p = d / "snapshots/run_iter_2.caffemodel"
    p.write_bytes(p.read_bytes()[:-7])
    return "snapshots/run_iter_2.caffemodel", "truncated"


def _no_config_json(d):
    (d / "config.json").unlink()
    return "config.json", "missing file"


def _bad_config_json(d):
    (d / "config.json").write_text('{"blas": "openblas",')
    return "config.json", "bad JSON"


def _no_blas(d):
    cj = json.loads((d / "config.json").read_text())
    del cj["blas"]
    (d / "config.json").write_text(json.dumps(cj))
    return "config.json", "blas is None"


def _bad_lr(d):
    text = (d / "caffe.log").read_text().replace("Iteration 3, lr = 0.006", "Iteration 3, lr = 0.0o6")
    (d / "caffe.log").write_text(text)
    return "caffe.log", "expected 'lr = <float>', got 'lr = 0.0o6'"


def _not_a_log(d):
    (d / "caffe.log").write_text("hello\n")
    return "caffe.log", "not a Caffe training log"


def _crash_without_f_line(d):
    cj = json.loads((d / "config.json").read_text())
    cj["caffe_exit"] = -11
    (d / "config.json").write_text(json.dumps(cj))
    return "caffe.log", "exited with status -11"


def _history_count(d):
    shutil.copy(FIXTURES / "caffe-runs/adam-step/snapshots/run_iter_6.solverstate", d / "snapshots/run_iter_6.solverstate")
    return "snapshots/run_iter_6.solverstate", "10 history blobs, expected 5"


BAD = {
    "missing-snapshot": _missing_snapshot,
    "snapshot-wrong-iter": _wrong_iter,
    "npz-lacks-iteration": _npz_lacks_iteration,
    "npz-lacks-pass": _npz_lacks_pass,
    "npz-wrong-shape": _npz_shape,
    "npz-wrong-dtype": _npz_dtype,
    "npz-stray-key": _npz_stray_key,
    "npz-corrupt": _npz_corrupt,
    "init-disagrees": _init_mismatch,
    "truncated-snapshot": _truncated_snapshot,
    "no-config-json": _no_config_json,
    "bad-config-json": _bad_config_json,
    "no-blas": _no_blas,
    "bad-lr-in-log": _bad_lr,
    "not-a-log": _not_a_log,
    "crash-without-F-line": _crash_without_f_line,
    "history-count": _history_count,
}


@pytest.mark.parametrize("breakit", BAD.values(), ids=BAD.keys())
def test_bad_capture_is_refused_naming_the_file(tmp_path, breakit):
    d = _copy(tmp_path)
    fname, message = breakit(d)
    with pytest.raises(InputError, match=message) as ei:
        load_capture(d)
    assert Path(ei.value.path).resolve() == (d / fname).resolve(), str(ei.value)
    assert "\n" not in str(ei.value)


def test_not_a_capture(tmp_path):
    with pytest.raises(InputError, match="no such capture directory"):
        load_capture(tmp_path / "nope")
    with pytest.raises(InputError, match="solver.prototxt: missing file"):
        load_capture(tmp_path)


def test_public_api():
    for name in capture.__all__:
        obj = getattr(capture, name)
        assert name.isupper() or obj.__doc__, name
