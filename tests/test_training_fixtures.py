"""fixtures/training/: real trainings (logs and snapshots) made by tools/make-training-fixtures.

Without Caffe: the committed runs are there and consistent -- snapshots
readable, named by their ``iter``, shaped as the net, consecutive ones
related by ``Net::Update``, resumed ones equal to the straight run's; logs
hold the expected line kinds at the expected iterations, with the lr values
of the solver's policy. Marked ``oracle``: re-running the tool with real Caffe
reproduces every log line (but time stamps and timings) and every snapshot
bit (skipped with the reason where Caffe is missing, failing under CI=true).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from harness.errors import OracleUnavailable
from harness.io.blobs import params_by_name, read_caffemodel, read_solverstate, write_caffemodel
from harness.io.solver import load_solver
from harness.lr import lr_schedule

ROOT = Path(__file__).resolve().parent.parent
TRAINING = ROOT / "fixtures" / "training"
TOOL = ROOT / "tools" / "make-training-fixtures"
#: the whole fixtures/training/ must stay small
SIZE_BUDGET_BYTES = 3 * 1024 * 1024


def _load_tool():
    loader = importlib.machinery.SourceFileLoader("make_training_fixtures", str(TOOL))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = mod  # dataclasses look their module up
    loader.exec_module(mod)
    return mod


tool = _load_tool()

# =============================================================================
# What each run must be (written out here, not taken from the tool)
# =============================================================================
#: learnable blobs of TinyConvNet in net order, and their shapes
BLOBS = {"conv1/0": (4, 1, 3, 3), "conv1/1": (4,), "ip1/0": (16, 36), "ip1/1": (16,), "ip2/0": (4, 16), "ip2/1": (4,)}

RUNS = {
    "sgd-multistep": dict(type="SGD", hdf5=False, snapshots=(10, 20, 30, 40, 50, 60), resume_at=30,
                          current_step={10: 0, 20: 0, 30: 1, 40: 1, 50: 2, 60: 2}, slots=1, frozen=()),
    "adam-hdf5": dict(type="Adam", hdf5=True, snapshots=(10, 20, 30, 40, 45), resume_at=30,
                      current_step={}, slots=2, frozen=()),
    "adadelta-itersize2": dict(type="AdaDelta", hdf5=False, snapshots=tuple(range(1, 21)), resume_at=None,
                               current_step={k: (k - 1) // 8 for k in range(1, 21)}, slots=2, frozen=("conv1/1",)),
    "sgd-consecutive": dict(type="SGD", hdf5=False, snapshots=tuple(range(1, 13)), resume_at=None,
                            current_step={}, slots=1, frozen=()),
}
RUN_IDS = list(RUNS)
CONSECUTIVE = ["adadelta-itersize2", "sgd-consecutive"]
RESUMED = [r for r in RUNS if RUNS[r]["resume_at"] is not None]

# one glog line: severity, date, time, thread, file:line] message
GLOG = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ (\S+:\d+)\] (.*)$")
LINE_KINDS = {
    "testing": re.compile(r"Iteration (\d+), Testing net \(#0\)$"),
    "test_loss": re.compile(r"Test loss: (\S+)$"),
    "test_accuracy": re.compile(r"    Test net output #0: accuracy = (\S+)$"),
    "test_output_loss": re.compile(r"    Test net output #1: loss = (\S+) \(\* 1 = (\S+) loss\)$"),
    "display": re.compile(r"Iteration (\d+) \(\S+ iter/s, \S+s/(\d+) iters\), loss = (\S+)$"),
    "train_output": re.compile(r"    Train net output #0: loss = (\S+) \(\* 1 = (\S+) loss\)$"),
    "multistep": re.compile(r"MultiStep Status: Iteration (\d+), step = (\d+)$"),
    "lr": re.compile(r"Iteration (\d+), lr = (\S+)$"),
    "clipping": re.compile(r"Gradient clipping: scaling down gradients \(L2 norm (\S+) > (\S+)\) by scale factor (\S+)$"),
    "snapshot_model": re.compile(r"Snapshotting to (binary proto|HDF5) file (\S+)$"),
    "snapshot_state": re.compile(r"Snapshotting solver state to (binary proto|HDF5) file (\S+)$"),
    "final_loss": re.compile(r"Iteration (\d+), loss = (\S+)$"),
    "resuming": re.compile(r"Resuming from (\S+)$"),
    "restoring_history": re.compile(r"SGDSolver: restoring history$"),
    "done": re.compile(r"Optimization Done\.$"),
}

# (log, first iteration, display, test iterations, multistep (iter, step), final loss iteration or None,
#  extra exact counts)
LOGS = {
    "sgd-multistep/caffe.log": dict(start=0, end=60, display=5, tests=(0, 20, 40, 60), multistep=((20, 1), (40, 2)),
                                    final=60, counts=dict(test_loss=0, resuming=0, restoring_history=0)),
    "sgd-multistep/caffe_resume.log": dict(start=30, end=60, display=5, tests=(40, 60), multistep=((40, 2),),
                                           final=60, counts=dict(test_loss=0, resuming=1, restoring_history=1)),
    "adam-hdf5/caffe.log": dict(start=0, end=45, display=4, tests=(10, 20, 30, 40), multistep=(), final=None,
                                counts=dict(test_loss=4, resuming=0, restoring_history=0, clipping=0)),
    "adam-hdf5/caffe_resume.log": dict(start=30, end=45, display=4, tests=(30, 40), multistep=(), final=None,
                                       counts=dict(test_loss=2, resuming=1, restoring_history=0, clipping=0)),
    "adadelta-itersize2/caffe.log": dict(start=0, end=20, display=2, tests=(0, 10, 20), multistep=(), final=20,
                                         counts=dict(test_loss=0, resuming=0, restoring_history=0, clipping=0)),
    "sgd-consecutive/caffe.log": dict(start=0, end=12, display=3, tests=(0, 6, 12), multistep=(), final=12,
                                      counts=dict(test_loss=0, resuming=0, restoring_history=0)),
}
#: logs of solvers with clip_gradients: clipping must fire, but not on every iteration
CLIPPED = [log for log in LOGS if log.startswith("sgd-")]


# =============================================================================
# Helpers
# =============================================================================
def _messages(path: Path) -> list[tuple[str, str]]:
    """(file:line, message) of every glog line of a log."""
    out = []
    for line in path.read_text().splitlines():
        m = GLOG.match(line)
        if m:
            out.append((m.group(2), m.group(3)))
    return out


def _kinds(path: Path) -> dict[str, list[re.Match]]:
    out: dict[str, list[re.Match]] = {k: [] for k in LINE_KINDS}
    for _, msg in _messages(path):
        for kind, rx in LINE_KINDS.items():
            m = rx.match(msg)
            if m:
                out[kind].append(m)
    return out


def _ext(run: str) -> str:
    return ".h5" if RUNS[run]["hdf5"] else ""


def _snap(run: str, prefix: str, k: int, kind: str) -> Path:
    return TRAINING / run / "snapshots" / f"{prefix}_iter_{k}.{kind}{_ext(run)}"


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _model(path: Path) -> dict:
    return params_by_name(read_caffemodel(path))


def _values(path: Path) -> dict[str, bytes]:
    """Every value of a snapshot as bytes (data/diff per blob; iter, current_step, history per state)."""
    if ".caffemodel" in path.name:
        return {f"{k} {f}": (b"" if getattr(b, f) is None else _bits(getattr(b, f)).tobytes()) + repr(b.shape).encode()
                for k, b in _model(path).items() for f in ("data", "diff")}
    st = read_solverstate(path)
    out = {"iter": str(st.iter).encode(), "current_step": str(st.current_step).encode()}
    out.update({f"history {i}": _bits(h).tobytes() + repr(h.shape).encode() for i, h in enumerate(st.history)})
    return out


# =============================================================================
# Files, data, the tool's texts
# =============================================================================
def test_size_budget():
    total = sum(p.stat().st_size for p in TRAINING.rglob("*") if p.is_file())
    assert 0 < total <= SIZE_BUDGET_BYTES, f"fixtures/training is {total} bytes"


def test_the_tool_lists_the_runs_of_this_table():
    assert [s.name for s in tool.RUNS] == RUN_IDS


@pytest.mark.parametrize("run", RUN_IDS)
def test_run_folder_holds_its_files(run):
    folder = TRAINING / run
    expected = {"solver.prototxt", "net.prototxt", "train.txt", "test.txt", "caffe.log", "run.json", "snapshots"}
    if RUNS[run]["resume_at"] is not None:
        expected |= {"solver_resume.prototxt", "caffe_resume.log"}
    assert {p.name for p in folder.iterdir()} == expected
    for split in ("train", "test"):
        listed = (folder / f"{split}.txt").read_text().split()
        assert listed == [f"../data/{split}.h5"] and (folder / listed[0]).is_file()


def test_data_is_the_seeded_problem():
    made = tool.make_data()
    for split, n in (("train", 240), ("test", 80)):
        with h5py.File(TRAINING / "data" / f"{split}.h5", "r") as f:
            assert set(f) == {"data", "label"}
            data, label = f["data"][...], f["label"][...]
        assert data.dtype == np.float32 and data.shape == (n, 1, 8, 8)
        assert label.dtype == np.float32 and label.shape == (n,)
        assert np.array_equal(_bits(data), _bits(made[split][0]))
        assert np.array_equal(_bits(label), _bits(made[split][1]))
        assert np.bincount(label.astype(int)).tolist() == [n // 4] * 4


def test_data_files_are_byte_reproducible(tmp_path):
    sums = tool.write_data(tmp_path)
    for name, digest in sums.items():
        assert hashlib.sha256((TRAINING / "data" / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("run", RUN_IDS)
def test_prototxts_are_the_tools(run):
    spec = next(s for s in tool.RUNS if s.name == run)
    folder = TRAINING / run
    assert (folder / "solver.prototxt").read_text() == tool.solver_prototxt(spec.solver_fields("snapshots/train"))
    assert (folder / "net.prototxt").read_text() == tool.net_prototxt(
        spec.train_batch, conv1_bias_lr_mult=spec.conv1_bias_lr_mult)
    if spec.resume_at is not None:
        assert (folder / "solver_resume.prototxt").read_text() == tool.solver_prototxt(
            spec.solver_fields("snapshots/resumed"))


@pytest.mark.parametrize("run", RUN_IDS)
def test_solver_loads_as_described(run):
    cfg = load_solver(TRAINING / run / "solver.prototxt")
    assert cfg.type == RUNS[run]["type"]
    assert [b.name for b in cfg.blobs] == list(BLOBS)
    assert [b.name for b in cfg.blobs if b.lr_mult == 0] == list(RUNS[run]["frozen"])


@pytest.mark.parametrize("run", RUN_IDS)
def test_run_json_records_the_run(run):
    rec = json.loads((TRAINING / run / "run.json").read_text())
    assert rec["run"] == run and rec["caffe_exit"] == 0 and rec["blas"] == "openblas"
    assert rec["provenance"]["openblas_num_threads"] == "1"
    assert rec["command"] == "caffe train --solver=solver.prototxt"
    for name, digest in rec["data"]["files"].items():
        assert hashlib.sha256((TRAINING / "data" / name).read_bytes()).hexdigest() == digest
    k = RUNS[run]["resume_at"]
    if k is None:
        assert "resume" not in rec
    else:
        assert rec["resume"]["caffe_exit"] == 0
        assert rec["resume"]["command"] == (f"caffe train --solver=solver_resume.prototxt "
                                            f"--snapshot=snapshots/train_iter_{k}.solverstate{_ext(run)}")


# =============================================================================
# Snapshots
# =============================================================================
@pytest.mark.parametrize("run", RUN_IDS)
def test_snapshots_are_the_named_iterations(run):
    r = RUNS[run]
    files = {p.name for p in (TRAINING / run / "snapshots").iterdir()}
    expected = set()
    series = [("train", r["snapshots"])]
    if r["resume_at"] is not None:
        series.append(("resumed", tuple(k for k in r["snapshots"] if k > r["resume_at"])))
    for prefix, iters in series:
        for k in iters:
            expected |= {_snap(run, prefix, k, "caffemodel").name, _snap(run, prefix, k, "solverstate").name}
            st = read_solverstate(_snap(run, prefix, k, "solverstate"))
            assert st.iter == k
            assert st.learned_net == f"snapshots/{prefix}_iter_{k}.caffemodel{_ext(run)}"
            assert st.current_step == r["current_step"].get(k, 0)
    assert files == expected


@pytest.mark.parametrize("run", RUN_IDS)
def test_snapshot_blobs_are_the_nets(run):
    slots = RUNS[run]["slots"]
    for state in sorted((TRAINING / run / "snapshots").glob(f"*.solverstate{_ext(run)}")):
        st = read_solverstate(state)
        model = _model(state.parent / Path(st.learned_net).name)
        assert {k: b.shape for k, b in model.items()} == BLOBS
        for k, b in model.items():
            assert b.diff is not None, f"{state.name}: {k} has no diff (snapshot_diff)"
            assert np.isfinite(b.data).all() and np.isfinite(b.diff).all()
        assert [h.shape for h in st.history] == list(BLOBS.values()) * slots
        assert all(np.isfinite(h).all() for h in st.history)


@pytest.mark.parametrize("run", CONSECUTIVE)
def test_consecutive_snapshots_follow_net_update(run):
    """data_k == fl(data_{k-1} - diff_k) bit for bit; SGD: diff_k == history_k; frozen blobs keep their data."""
    iters = RUNS[run]["snapshots"]
    prev = _model(_snap(run, "train", iters[0], "caffemodel"))
    first = prev
    for k in iters[1:]:
        cur = _model(_snap(run, "train", k, "caffemodel"))
        for name, b in cur.items():
            assert np.array_equal(_bits(b.data), _bits(prev[name].data - b.diff)), f"iter {k}: {name}"
        if RUNS[run]["type"] == "SGD":
            hist = read_solverstate(_snap(run, "train", k, "solverstate")).history
            for (name, b), h in zip(cur.items(), hist):
                assert np.array_equal(_bits(b.diff), _bits(h)), f"iter {k}: {name}"
        for name in RUNS[run]["frozen"]:
            assert np.array_equal(_bits(cur[name].data), _bits(first[name].data))
            assert not cur[name].diff.any()
        prev = cur
    moved = [name for name in BLOBS if name not in RUNS[run]["frozen"]
             and not np.array_equal(prev[name].data, first[name].data)]
    assert moved == [n for n in BLOBS if n not in RUNS[run]["frozen"]]


@pytest.mark.parametrize("run", RESUMED)
def test_resumed_snapshots_equal_the_straight_runs(run):
    r = RUNS[run]
    for k in (k for k in r["snapshots"] if k > r["resume_at"]):
        for kind in ("caffemodel", "solverstate"):
            assert _values(_snap(run, "resumed", k, kind)) == _values(_snap(run, "train", k, kind)), f"{kind} {k}"


# =============================================================================
# Logs
# =============================================================================
def _log_config(log: str):
    run, name = log.split("/")
    solver = "solver_resume.prototxt" if name == "caffe_resume.log" else "solver.prototxt"
    return run, load_solver(TRAINING / run / solver)


@pytest.mark.parametrize("log", list(LOGS))
def test_log_has_each_line_kind_where_expected(log):
    e = LOGS[log]
    run, cfg = _log_config(log)
    k = _kinds(TRAINING / log)
    display_iters = [i for i in range(e["start"], e["end"]) if i % e["display"] == 0]
    assert [int(m.group(1)) for m in k["display"]] == display_iters
    assert {int(m.group(2)) for m in k["display"]} == {e["display"]}
    assert len(k["train_output"]) == len(display_iters)
    assert [int(m.group(1)) for m in k["lr"]] == display_iters
    assert [int(m.group(1)) for m in k["testing"]] == list(e["tests"])
    assert len(k["test_accuracy"]) == len(k["test_output_loss"]) == len(e["tests"])
    assert [(int(m.group(1)), int(m.group(2))) for m in k["multistep"]] == list(e["multistep"])
    assert [int(m.group(1)) for m in k["final_loss"]] == ([e["final"]] if e["final"] is not None else [])
    assert len(k["done"]) == 2
    for kind, n in e["counts"].items():
        assert len(k[kind]) == n, kind


@pytest.mark.parametrize("log", list(LOGS))
def test_log_lr_values_follow_the_policy(log):
    """Every ``lr =`` line prints ``%g`` of the policy's float32 rate (resumes restore current_step)."""
    e = LOGS[log]
    run, cfg = _log_config(log)
    cs = 0
    if e["start"]:
        cs = read_solverstate(_snap(run, "train", e["start"], "solverstate")).current_step
    iters = np.arange(e["start"], e["end"])
    rates = dict(zip(iters.tolist(), lr_schedule(cfg, iters, current_step=cs)))
    printed = [(int(m.group(1)), m.group(2)) for m in _kinds(TRAINING / log)["lr"]]
    assert printed == [(i, "%g" % float(rates[i])) for i, _ in printed]


@pytest.mark.parametrize("log", list(LOGS))
def test_log_names_the_snapshots_it_wrote(log):
    run = log.split("/")[0]
    k = _kinds(TRAINING / log)
    fmt = "HDF5" if RUNS[run]["hdf5"] else "binary proto"
    models = [m.group(2) for m in k["snapshot_model"]]
    states = [m.group(2) for m in k["snapshot_state"]]
    assert {m.group(1) for m in k["snapshot_model"] + k["snapshot_state"]} == {fmt}
    assert [s.replace("solverstate", "caffemodel") for s in states] == models
    prefix = "resumed" if log.endswith("_resume.log") else "train"
    r = RUNS[run]
    iters = [k for k in r["snapshots"] if prefix == "train" or k > r["resume_at"]]
    assert states == [f"snapshots/{prefix}_iter_{i}.solverstate{_ext(run)}" for i in iters]
    assert all((TRAINING / run / f).is_file() for f in models + states)
    if prefix == "resumed":
        assert [m.group(1) for m in k["resuming"]] == [f"snapshots/train_iter_{r['resume_at']}.solverstate{_ext(run)}"]


@pytest.mark.parametrize("log", CLIPPED)
def test_clipping_fires_on_some_iterations(log):
    run, cfg = _log_config(log)
    clips = _kinds(TRAINING / log)["clipping"]
    e = LOGS[log]
    assert 0 < len(clips) < e["end"] - e["start"]
    for m in clips:
        assert m.group(2) == "%g" % cfg.clip_gradients and float(m.group(1)) > cfg.clip_gradients
        assert 0 < float(m.group(3)) < 1


@pytest.mark.parametrize("log", list(LOGS))
def test_display_loss_is_the_train_output_without_averaging(log):
    """With average_loss 1 the smoothed loss is the iteration's; with more, only the first display shows it."""
    run, cfg = _log_config(log)
    k = _kinds(TRAINING / log)
    shown = [m.group(3) for m in k["display"]]
    outputs = [m.group(1) for m in k["train_output"]]
    avg = int(dict(tool._run_by_name(run).solver).get("average_loss", 1))
    if avg == 1 and cfg.iter_size == 1:
        assert shown == outputs
    elif avg == 1:
        assert shown != outputs  # iter_size 2: the loss is the mean of both passes, the output the last pass's
    else:  # a display on the run's first iteration (fresh or resumed) has only one loss to average
        first_is_start = int(k["display"][0].group(1)) == LOGS[log]["start"]
        assert (shown[0] == outputs[0]) == first_is_start and shown != outputs


@pytest.mark.parametrize("log", [log for log in LOGS if LOGS[log]["start"] == 0])
def test_the_net_learns(log):
    """The last test beats the first: higher accuracy, lower loss."""
    k = _kinds(TRAINING / log)
    acc = [float(m.group(1)) for m in k["test_accuracy"]]
    loss = [float(m.group(1)) for m in k["test_output_loss"]]
    assert acc[-1] > acc[0] and loss[-1] < loss[0], (acc, loss)


# =============================================================================
# The tool's comparison and command line
# =============================================================================
def test_normalize_log_drops_only_what_varies():
    a = ("I1123 20:05:29.016150 26454 solver.cpp:239] Iteration 0 (1.9842e+16 iter/s, 0.001s/5 iters), loss = 1.37\n"
         "I1123 20:05:29.016161 26454 sgd_solver.cpp:112] Iteration 0, lr = 0.1\n")
    b = ("I0101 01:00:00.000001 7 solver.cpp:239] Iteration 0 (-2.3e-30 iter/s, 0s/5 iters), loss = 1.37\n"
         "I0101 01:00:00.000002 7 sgd_solver.cpp:112] Iteration 0, lr = 0.1\n")
    assert tool.normalize_log(a) == tool.normalize_log(b)
    assert tool.normalize_log(a) != tool.normalize_log(a.replace("loss = 1.37", "loss = 1.38"))
    assert tool.normalize_log(a) != tool.normalize_log(a.replace("5 iters", "4 iters"))
    assert tool.normalize_log(a) != tool.normalize_log(a.replace("I1123", "W1123"))


def test_compare_trees_finds_a_changed_bit_and_a_changed_loss(tmp_path):
    for name in ("data", "sgd-consecutive"):
        shutil.copytree(TRAINING / name, tmp_path / name)
    assert tool.compare_trees(TRAINING, tmp_path, ["sgd-consecutive"]) == []
    log = tmp_path / "sgd-consecutive" / "caffe.log"
    log.write_text(log.read_text().replace("Iteration 3, lr = 0.05", "Iteration 3, lr = 0.06"))
    snap = tmp_path / "sgd-consecutive" / "snapshots" / "train_iter_5.caffemodel"
    model = read_caffemodel(snap)
    model["ip2"][0].data.view(np.uint32)[0, 0] ^= 1
    write_caffemodel(snap, model, with_diff=True)
    diffs = tool.compare_trees(TRAINING, tmp_path, ["sgd-consecutive"])
    assert any(d.startswith("sgd-consecutive/caffe.log:") and "lr = 0.06" in d for d in diffs)
    assert any(d.startswith("sgd-consecutive/snapshots/train_iter_5.caffemodel: ip2/0 data") for d in diffs)


def test_tool_rejects_an_unknown_run(tmp_path, capsys):
    assert tool.main(["--only", "nope", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown run 'nope'" in err[0] and "sgd-multistep" in err[0]
    assert not any(tmp_path.iterdir())


# =============================================================================
# Real Caffe: the tool reproduces the fixtures
# =============================================================================
@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """A fresh generation of every run by real Caffe (about 7 s)."""
    from harness.oracle import find_caffe

    try:
        install = find_caffe()
    except OracleUnavailable as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"real Caffe is required under CI=true: {e}")
        pytest.skip(str(e))
    out = tmp_path_factory.mktemp("training")
    tool.make_all(out, install=install, log=lambda *a: None)
    return out


@pytest.mark.oracle
@pytest.mark.parametrize("run", RUN_IDS)
def test_regeneration_reproduces_logs_and_snapshots(regenerated, run):
    """Same lines but time stamps and timings, same snapshot bits, same texts and data."""
    new = regenerated / run
    logs = ["caffe.log"] + (["caffe_resume.log"] if RUNS[run]["resume_at"] is not None else [])
    for name in logs:
        old_lines = tool.normalize_log((TRAINING / run / name).read_text())
        new_lines = tool.normalize_log((new / name).read_text())
        assert new_lines == old_lines, name
        for kind in ("display", "train_output", "lr", "clipping", "test_accuracy", "test_output_loss", "final_loss"):
            old_k = [m.groups() for m in _kinds(TRAINING / run / name)[kind]]
            new_k = [m.groups() for m in _kinds(new / name)[kind]]
            if kind == "display":  # timings vary; iteration and loss do not
                old_k, new_k = [(g[0], g[2]) for g in old_k], [(g[0], g[2]) for g in new_k]
            assert new_k == old_k, (name, kind)
    old_snaps = sorted(p.name for p in (TRAINING / run / "snapshots").iterdir())
    assert sorted(p.name for p in (new / "snapshots").iterdir()) == old_snaps
    for name in old_snaps:
        a, b = TRAINING / run / "snapshots" / name, new / "snapshots" / name
        assert _values(b) == _values(a), name
        if not name.endswith(".h5"):
            assert b.read_bytes() == a.read_bytes(), name
    for name in ("solver.prototxt", "net.prototxt", "train.txt", "test.txt"):
        assert (new / name).read_bytes() == (TRAINING / run / name).read_bytes()
    assert tool.compare_trees(TRAINING, regenerated, [run]) == []
