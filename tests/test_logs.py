"""harness.logs: the streaming parser of `caffe train` logs.

Every real log in fixtures/ parses with the record counts an independent
line-by-line count gives; read_runs' bulk path equals the per-line path on
every log and at every chunk size; formats of other releases and forks;
bad input is an InputError naming file:line.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import struct
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as hst

from harness import logs
from harness.errors import InputError
from harness.logs import (
    Fatal,
    GradientClipping,
    LearningRate,
    LogEnd,
    Loss,
    NetName,
    NetOutput,
    OutputKey,
    Snapshot,
    SolverParams,
    StoppedEarly,
    parse_log,
    read_runs,
)

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
REAL_LOGS = sorted(
    list(FIX.glob("caffe-runs*/*/caffe.log"))
    + list(FIX.glob("training/*/*.log"))
    + list(FIX.glob("logs/real-*.log"))
)
SYNTHETIC_LOGS = sorted(FIX.glob("logs/synthetic-*.log"))
ALL_LOGS = REAL_LOGS + SYNTHETIC_LOGS
MULTISTEP = FIX / "caffe-runs" / "sgd-multistep" / "caffe.log"
TRAINING = FIX / "training" / "sgd-multistep"


def _id(p: Path) -> str:
    return str(p.relative_to(FIX))


# ---------------------------------------------------------------------------
# An independent count of what each log holds (plain string tests per line)
# ---------------------------------------------------------------------------

_LOC = re.compile(r"(\S*(?:solver|caffe)\.cpp):\d+\] (.*)$")


def naive_counts(path: Path) -> Counter:
    c = Counter()
    for line in path.read_text(errors="replace").split("\n"):
        if line.startswith("F") and re.match(r"F\d{4} ", line):
            c["Fatal"] += 1
            continue
        m = _LOC.search(line)
        if not m:
            continue
        msg = m.group(2)
        bare = re.sub(r"^\s*\[\d+\]\s*", "", msg)
        if ", lr = " in msg:
            c["LearningRate"] += 1
        elif "net output #" in msg or msg.startswith("Test score #"):
            c["NetOutput"] += 1
        elif "loss = " in msg and bare.startswith("Iteration "):
            c["Loss"] += 1
        elif "Testing net" in msg:
            c["Testing"] += 1
        elif msg.startswith("MultiStep Status"):
            c["MultiStepStatus"] += 1
        elif msg.startswith("Gradient clipping"):
            c["GradientClipping"] += 1
        elif msg.startswith("Snapshotting "):
            c["Snapshot"] += 1
        elif msg.startswith("Test loss: "):
            c["TestLoss"] += 1
        elif "Restoring previous solver status" in msg or msg.startswith("Resuming from "):
            c["Restore"] += 1
        elif bare.startswith("Solving "):
            c["NetName"] += 1
        elif msg.startswith("Learning Rate Policy"):
            c["LrPolicy"] += 1
        elif msg.startswith("Initializing solver from parameters"):
            c["SolverParams"] += 1
        elif "Optimization stopped early." in msg:
            c["StoppedEarly"] += 1
        elif msg == "Optimization Done.":
            c["OptimizationDone"] += 1
    return c


@pytest.mark.parametrize("path", ALL_LOGS, ids=_id)
def test_every_fixture_log_parses_with_the_expected_record_counts(path):
    recs = list(parse_log(path))
    assert isinstance(recs[-1], LogEnd)
    assert recs[-1].line == path.read_bytes().count(b"\n")
    got = Counter(type(r).__name__ for r in recs[:-1])
    assert got == naive_counts(path)
    lines = [r.line for r in recs[:-1]]
    assert lines == sorted(lines)
    for r in recs:
        assert r.path == str(path)


@pytest.mark.parametrize("path", ALL_LOGS, ids=_id)
def test_record_lines_point_at_their_text(path):
    text = path.read_text(errors="replace").split("\n")
    for r in parse_log(path):
        if isinstance(r, LearningRate):
            assert f"Iteration {r.iter}, lr = {r.text}" in text[r.line - 1]
        elif isinstance(r, Fatal):
            assert text[r.line - 1].startswith("F") and r.message in text[r.line - 1]
        elif isinstance(r, SolverParams):
            assert "Initializing solver from parameters" in text[r.line - 1]
            assert r.text == "".join(t + "\n" for t in text[r.line : r.line + r.text.count("\n")])


# ---------------------------------------------------------------------------
# read_runs: the bulk path equals the per-line path
# ---------------------------------------------------------------------------


def _rec(r):
    """A record without its path (and without \r in a parameter block)."""
    if r is None:
        return None
    t = {f.name: getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "path"}
    if isinstance(r, SolverParams):
        t["text"] = t["text"].replace("\r", "")
    return type(r).__name__, sorted(t.items())


def _dump(runs) -> list:
    out = []
    for run in runs:
        d = {}
        for k, v in vars(run).items():
            if k == "path":
                continue
            if isinstance(v, logs.Record):
                d[k] = _rec(v)
            elif k == "snapshots":
                d[k] = [_rec(x) for x in v]
            elif isinstance(v, logs.Series):
                d[k] = (list(v.iter), [repr(x) for x in v.value], None if v.line is None else list(v.line))
            elif isinstance(v, logs.ClipSeries):
                d[k] = (list(v.iter), list(v.l2norm), list(v.clip_gradients), list(v.scale_factor), list(v.line))
            elif k in ("outputs", "test_loss"):
                d[k] = [(kk, list(s.iter), [repr(x) for x in s.value]) for kk, s in v.items()]  # in order
            elif k == "lr_extra":
                d[k] = sorted((kk, [repr(x) for x in a]) for kk, a in v.items())
            elif k == "loss_weights":
                d[k] = list(v.items())
            elif k == "final_loss":
                d[k] = None if v is None else (v[0], repr(v[1]))
            else:
                d[k] = v
        out.append(d)
    return out


#: read_runs' three ways through a chunk: the numba scanner (large files),
#: the regex bulk passes (small files), the per-line reference path
PATHS = ("scanner", "regex", "per-line")


def _runs(monkeypatch, path, how):
    """read_runs(path) forced through one of PATHS."""
    with monkeypatch.context() as m:
        for name in ("_SCAN_MIN", "_SCAN_MIN_LOADED"):
            m.setattr(logs, name, 0 if how == "scanner" else 1 << 62)
        if how == "per-line":
            m.setattr(logs, "_fast_chunk", lambda *a: False)
            m.setattr(logs, "_scan_chunk", lambda *a: False)
        return read_runs(path)


def _slow_runs(monkeypatch, path):
    return _runs(monkeypatch, path, "per-line")


@pytest.mark.parametrize("how", PATHS[:2])
@pytest.mark.parametrize("path", ALL_LOGS, ids=_id)
def test_bulk_path_equals_per_line_path(path, how, monkeypatch):
    assert _dump(_runs(monkeypatch, path, how)) == _dump(_slow_runs(monkeypatch, path))


@pytest.mark.parametrize("chunk", [97, 1000, 4096])
@pytest.mark.parametrize("path", [MULTISTEP, TRAINING / "caffe.log", FIX / "logs" / "real-overflow.log",
                                  FIX / "caffe-runs" / "sgd-inv-clip" / "caffe.log"], ids=_id)
def test_chunk_boundaries_change_nothing(path, chunk, monkeypatch):
    want = _dump(read_runs(path))
    monkeypatch.setattr(logs, "_CHUNK", chunk)
    for how in PATHS:
        assert _dump(_runs(monkeypatch, path, how)) == want, how
    assert [r for r in parse_log(path)][-1].line == path.read_bytes().count(b"\n")


def test_large_files_take_the_scanner(monkeypatch):
    taken = []
    scan = logs._scan_chunk
    monkeypatch.setattr(logs, "_scan_chunk", lambda *a: taken.append(1) or scan(*a))
    size = MULTISTEP.stat().st_size
    monkeypatch.setattr(logs, "_SCAN_MIN_LOADED", size + 1)
    monkeypatch.delitem(sys.modules, "numba", raising=False)
    monkeypatch.setattr(logs, "_SCAN_MIN", size + 1)
    read_runs(MULTISTEP)
    assert not taken  # a small log: numba is not even imported for it
    monkeypatch.setattr(logs, "_SCAN_MIN", size)
    read_runs(MULTISTEP)
    assert taken == [1]


def test_numba_loaded_lowers_the_scanner_threshold(monkeypatch):
    import numba  # noqa: F401

    assert logs._use_scanner(logs._SCAN_MIN_LOADED) and not logs._use_scanner(logs._SCAN_MIN_LOADED - 1)
    monkeypatch.delitem(sys.modules, "numba")
    assert logs._use_scanner(logs._SCAN_MIN) and not logs._use_scanner(logs._SCAN_MIN - 1)


def test_lines_of_a_parameter_block_are_no_records(tmp_path, monkeypatch):
    """A fatal-looking line inside the block is block text on every path."""
    lines = MULTISTEP.read_text().split("\n")
    lines.insert(5, "F1123 19:06:55.790000  7839 main.py:3] boom")
    p = tmp_path / "block.log"
    p.write_text("\n".join(lines))
    runs = [_dump(_runs(monkeypatch, p, how)) for how in PATHS]
    assert runs[0] == runs[1] == runs[2]
    [run] = read_runs(p)
    assert run.fatal is None and "main.py:3] boom" in run.params.text


def test_read_runs_matches_the_records(monkeypatch):
    """read_runs' series are the parse_log records, grouped."""
    for path in ALL_LOGS:
        recs = list(parse_log(path))
        runs = read_runs(path)
        assert len(runs) == max(1, sum(isinstance(r, SolverParams) for r in recs))
        lr = [(r.iter, r.lr, r.line) for r in recs if isinstance(r, LearningRate)]
        got = [t for run in runs for t in zip(run.lr.iter, run.lr.value, run.lr.line)]
        assert [(a, repr(b), c) for a, b, c in got] == [(a, repr(b), c) for a, b, c in lr], path
        clip = [(r.l2norm, r.scale_factor, r.line) for r in recs if isinstance(r, GradientClipping)]
        got = [t for run in runs for t in zip(run.clipping.l2norm, run.clipping.scale_factor, run.clipping.line)]
        assert got == clip
        n_out = sum(isinstance(r, NetOutput) for r in recs)
        assert sum(len(s) for run in runs for s in run.outputs.values()) == n_out


# ---------------------------------------------------------------------------
# What the real logs hold
# ---------------------------------------------------------------------------


def test_caffe_1_0_multistep_run():
    [run] = read_runs(MULTISTEP)
    assert run.params is not None and run.params.line == 2
    assert 'lr_policy: "multistep"' in run.params.text
    assert run.net_name == "inject" and run.lr_policy == "multistep"
    assert list(run.lr.iter) == list(range(16))
    assert run.lr.line[0] == 223
    assert list(run.lr.value[:3]) == [0.02, 0.02, 0.02] and run.lr.value[3] == 0.006
    assert list(run.multistep.iter) == [3, 7, 11] and list(run.multistep.value) == [1, 2, 3]
    assert list(run.loss.iter) == list(range(17))
    assert run.final_loss == (16, -92.4213)
    assert len(run.outputs) == 9
    key = OutputKey("train", 0, 8, "z2")
    assert run.outputs[key].value[0] == 9.21845 and run.loss_weights[key] == 1.0
    assert len(run.snapshots) == 32
    assert run.snapshots[0] == Snapshot(str(MULTISTEP), 224, "model", "binaryproto", "snapshots/run_iter_1.caffemodel")
    assert run.done and run.complete and run.fatal is None and not run.resumed
    first_loss = next(r for r in parse_log(MULTISTEP) if isinstance(r, Loss))
    assert (first_loss.iter, first_loss.loss, first_loss.iter_per_s, first_loss.lapse, first_loss.display) == (
        0, 9.5643, 5.16989e21, 0.0, 1)


def test_parameter_block_gives_the_solver():
    from harness.io.solver import load_solver

    [run] = read_runs(MULTISTEP)
    cfg = run.config()
    ref = load_solver(MULTISTEP.parent / "solver.prototxt", check=False, with_net=False)
    for f in ("type", "base_lr", "lr_policy", "gamma", "stepvalue", "max_iter", "momentum", "weight_decay"):
        assert getattr(cfg, f) == getattr(ref, f), f


def test_a_typo_in_the_parameter_block_is_reported_at_its_log_line(tmp_path):
    p = tmp_path / "caffe.log"
    p.write_text(MULTISTEP.read_text().replace("momentum: 0.9\n", "momentun: 0.9\n", 1))
    [run] = read_runs(p)
    with pytest.raises(InputError, match=r"caffe\.log:8:1: unknown field 'momentun'"):
        run.config()


def test_rejected_run_has_the_fatal_line():
    path = FIX / "caffe-runs-rejected" / "sgd-sigmoid-gamma-negative" / "caffe.log"
    [run] = read_runs(path)
    assert run.fatal == Fatal(str(path), 221, "sgd_solver.cpp:61", "Check failed: this->param_.gamma() >= 0 (-0.5 vs. 0)")
    assert not run.done and not run.complete and len(run.lr) == 0


def test_concatenated_runs_and_caffe_train_snapshot_resume(tmp_path):
    p = tmp_path / "both.log"
    first = (TRAINING / "caffe.log").read_bytes()
    p.write_bytes(first + (TRAINING / "caffe_resume.log").read_bytes())
    a, b = read_runs(p)
    n = first.count(b"\n")
    assert a.first_line == 2 and a.last_line == n + 1 and b.first_line == n + 2
    assert not a.resumed and b.resumed
    assert b.restore.file == "snapshots/train_iter_30.solverstate" and b.restore.location == "caffe.cpp:235"
    assert b.lr.iter[0] == 30 and a.lr.iter[-1] == 55
    assert b.lr.line[0] > n


def test_hdf5_snapshots():
    snaps = [r for r in parse_log(FIX / "training" / "adam-hdf5" / "caffe.log") if isinstance(r, Snapshot)]
    assert {(s.kind, s.format) for s in snaps} == {("model", "hdf5"), ("solverstate", "hdf5")}
    assert snaps[1].file == "snapshots/train_iter_10.solverstate.h5"


def test_test_phase_outputs_and_test_loss():
    [run] = read_runs(FIX / "training" / "adam-hdf5" / "caffe.log")
    assert list(run.tests.iter) == [10, 20, 30, 40]
    assert set(run.test_loss) == {0} and list(run.test_loss[0].iter) == [10, 20, 30, 40]
    acc = run.outputs[OutputKey("test", 0, 0, "accuracy")]
    assert list(acc.iter) == [10, 20, 30, 40] and run.loss_weights[OutputKey("test", 0, 0, "accuracy")] is None
    assert run.loss_weights[OutputKey("test", 0, 1, "loss")] == 1.0


def test_stopped_early():
    recs = list(parse_log(FIX / "logs" / "real-stopped.log"))
    assert any(isinstance(r, StoppedEarly) for r in recs)
    [run] = read_runs(FIX / "logs" / "real-stopped.log")
    assert run.stopped_early and run.complete
    assert run.snapshots[-1].file.endswith("_iter_%d.solverstate" % (run.lr.iter[-1] + 1))


def test_nan_and_inf_values_are_floats():
    [run] = read_runs(FIX / "logs" / "real-overflow.log")
    assert run.lr.value[-2] == math.inf and run.lr.value[41] == 1e38
    assert math.isnan(run.loss.value[-1]) and math.isnan(run.final_loss[1])
    assert math.copysign(1.0, run.final_loss[1]) == -1.0  # "-nan"
    assert math.isnan(run.outputs[OutputKey("train", 0, 0, "loss")].value[-1])
    assert run.done  # the abort after "Optimization Done." is only foreign lines
    lrs = [r for r in parse_log(FIX / "logs" / "real-overflow.log") if isinstance(r, LearningRate)]
    assert lrs[-1].text == "inf"


def test_gradient_clipping_lines():
    path = FIX / "caffe-runs" / "sgd-inv-clip" / "caffe.log"
    clips = [r for r in parse_log(path) if isinstance(r, GradientClipping)]
    assert len(clips) == 16
    assert (clips[0].l2norm, clips[0].clip_gradients, clips[0].scale_factor) == (3.89359, 0.5, 0.128416)
    [run] = read_runs(path)
    assert list(run.clipping.iter) == list(range(16))  # each right after its lr line


def test_rc2_format():
    path = FIX / "logs" / "synthetic-rc2.log"
    [run] = read_runs(path)
    assert list(run.loss.iter) == [0, 10, 20, 30, 40]
    assert list(run.outputs[OutputKey("train", 0, 0, "loss")].iter) == [0, 10, 20, 30]
    assert run.final_loss == (40, 0.62)
    assert {s.format for s in run.snapshots} == {""}
    assert list(run.multistep.iter) == [15, 30]


def test_v09_format():
    path = FIX / "logs" / "synthetic-v0.9.log"
    recs = list(parse_log(path))
    assert logs.Testing(str(path), 11, 20, 0) in recs
    scores = [r for r in recs if isinstance(r, NetOutput)]
    assert scores[0] == NetOutput(str(path), 12, "test", 0, "", 0.6)
    [run] = read_runs(path)
    assert run.params is None and run.net_name == "LeNet" and run.first_line == 1
    assert list(run.lr.iter) == list(range(5, 61, 5))
    assert list(run.outputs[OutputKey("test", 0, 1, "")].iter) == [20, 40, 60]


def test_nvcaffe_format():
    path = FIX / "logs" / "synthetic-nvcaffe.log"
    lrs = [r for r in parse_log(path) if isinstance(r, LearningRate)]
    assert set(lrs[0].extra) == {"m", "lrm", "wd", "gs"} and lrs[0].extra["m"] == 0.9
    [run] = read_runs(path)
    assert run.lr_policy == "poly" and run.net_name == "ResNet-50"
    assert list(run.lr_extra) == ["m", "lrm", "wd", "gs"] and len(run.lr_extra["gs"]) == len(run.lr)
    assert list(run.loss.iter) == [0, 1, 2, 20, 40, 60]
    assert list(run.outputs[OutputKey("train", 0, 0, "loss")].iter) == [0, 1, 2, 20, 40, 60]
    assert run.test_loss[0].iter[0] == 20


@pytest.mark.parametrize("fields", ["m = 0.9", "m = 0.9, gs = 1", "m = 0.9, wd = 0.0005, gs = 1",
                                    "m = 0.9, lrm = 0.1, wd = 0.0005, gs = 1"])
def test_every_nvcaffe_lr_line_release(tmp_path, fields):
    p = tmp_path / "nv.log"
    p.write_text(f"I0101 00:00:00.000000  1 sgd_solver.cpp:180] [0] Iteration 3, lr = 0.01, {fields}\n")
    [rec] = [r for r in parse_log(p) if isinstance(r, LearningRate)]
    assert rec.lr == 0.01 and rec.extra == {k: float(v) for k, v in (f.split(" = ") for f in fields.split(", "))}


def test_glog_year_prefix_and_crlf(tmp_path):
    text = MULTISTEP.read_text()
    p = tmp_path / "year.log"
    p.write_text(re.sub(r"^([IWEF])1123 ", r"\g<1>20261123 ", text, flags=re.M))
    q = tmp_path / "crlf.log"
    q.write_bytes(text.replace("\n", "\r\n").encode())
    want = _dump(read_runs(MULTISTEP))
    for path in (p, q):
        assert _dump(read_runs(path)) == want


def test_foreign_lines_are_ignored_and_counted(tmp_path):
    rng = random.Random(5)
    foreign = [
        "Log file created at: 2026/11/23 19:06:55",
        "W1123 19:06:55.790000  7840 data_layer.cpp:73] Restarting data prefetching from start.",
        "epoch 3: loss = 1.5, lr = 0.1 (from my own script)",
        "I1123 19:06:55.790000  7840 train.py:12] Iteration 5, lr = 0.7",
        "    Train net output #0: z0 = 1 (not glog)",
        "",
    ]
    lines = MULTISTEP.read_text().split("\n")[:-1]
    out = []
    added = 0
    for i, ln in enumerate(lines):
        out.append(ln)
        # not inside the parameter block (lines 3..25): it ends at the next glog line
        if i > 30 and rng.random() < 0.5:
            out.append(rng.choice(foreign))
            added += 1
    p = tmp_path / "mixed.log"
    p.write_text("\n".join(out) + "\n")
    want = _dump(read_runs(MULTISTEP))
    got = _dump(read_runs(p))
    for a, b in zip(got, want):
        for k in ("last_line", "lr", "multistep", "clipping", "tests", "params", "snapshots", "lr_policy_line"):
            a.pop(k), b.pop(k)
    assert got == want
    assert [r.lr for r in parse_log(p) if isinstance(r, LearningRate)] == list(read_runs(MULTISTEP)[0].lr.value)
    end = list(parse_log(p))[-1]
    assert end.other_lines == list(parse_log(MULTISTEP))[-1].other_lines + added


# ---------------------------------------------------------------------------
# Bad input: an InputError naming file:line, never a traceback or a misread
# ---------------------------------------------------------------------------


def _both(path):
    """parse_log and read_runs raise the same InputError."""
    with pytest.raises(InputError) as a:
        list(parse_log(path))
    with pytest.raises(InputError) as b:
        read_runs(path)
    assert str(a.value) == str(b.value)
    return str(a.value)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.log"
    p.write_bytes(b"")
    assert _both(p) == f"{p}: empty file: not a Caffe training log"


def test_missing_file(tmp_path):
    assert _both(tmp_path / "nope.log") == f"{tmp_path / 'nope.log'}: no such file"


def test_truncated_last_line(tmp_path):
    data = MULTISTEP.read_bytes()
    p = tmp_path / "cut.log"
    cut = data.rindex(b"lr = 0.00054") + len(b"lr = 0.000")
    p.write_bytes(data[:cut])
    n = data[:cut].count(b"\n") + 1
    msg = _both(p)
    assert msg.startswith(f"{p}:{n}: last line has no end (truncated log?)")


def test_cut_at_a_line_end_is_an_incomplete_run(tmp_path):
    data = MULTISTEP.read_bytes()
    p = tmp_path / "killed.log"
    p.write_bytes(data[: data.index(b"Iteration 9 (")].rsplit(b"\n", 1)[0] + b"\n")
    [run] = read_runs(p)
    assert not run.complete and run.lr.iter[-1] == 8


def test_binary_garbage(tmp_path):
    rng = random.Random(1)
    p = tmp_path / "garbage.bin"
    p.write_bytes(bytes(rng.randrange(256) for _ in range(5000)) + b"\x00\n")
    assert "binary data (NUL bytes): not a text log" in _both(p)


def test_nul_bytes_in_a_log(tmp_path):
    data = MULTISTEP.read_bytes()
    i = data.index(b"Iteration 5 (")
    p = tmp_path / "nul.log"
    p.write_bytes(data[:i] + b"\x00" * 64 + data[i:])
    n = data[:i].count(b"\n") + 1
    assert _both(p) == f"{p}:{n}: binary data (NUL bytes): not a text log"


def test_text_without_newlines(tmp_path):
    p = tmp_path / "one.log"
    p.write_bytes(b"x" * 100)
    assert "last line has no end" in _both(p)


def test_log_of_another_program(tmp_path):
    p = tmp_path / "pip.log"
    p.write_text(
        "Collecting numpy\n  Downloading numpy-2.0.whl (19.5 MB)\nInstalling collected packages: numpy\n"
        "I1123 19:06:55.790000  7840 server.cc:12] Iteration 5, lr = 0.7\n"
        "F1123 19:06:55.790000  7840 server.cc:14] Check failed: ok\n"
    )
    assert _both(p) == (f"{p}: not a Caffe training log: none of its 5 lines is a Caffe solver line "
                        "(expected glog lines such as 'solver.cpp:239] Iteration 0 (...), loss = ...')")


def test_caffe_test_log_is_not_a_training_log(tmp_path):
    p = tmp_path / "test.log"
    p.write_text(
        "I1123 19:06:55.790000  7840 caffe.cpp:275] Use CPU.\n"
        "I1123 19:06:55.790000  7840 caffe.cpp:304] Batch 0, loss = 1.5\n"
        "I1123 19:06:55.790000  7840 caffe.cpp:309] Loss: 1.5\n"
    )
    assert "not a Caffe training log" in _both(p)


def test_caffe_dying_before_training_is_a_caffe_log(tmp_path):
    p = tmp_path / "early.log"
    p.write_text("F1123 19:06:55.790000  7840 upgrade_proto.cpp:1111] Check failed: ReadProtoFromTextFile(...)\n"
                 "*** Check failure stack trace: ***\n")
    [run] = read_runs(p)
    assert run.fatal.location == "upgrade_proto.cpp:1111" and run.params is None


_LR = "I1123 19:06:55.791132  7839 sgd_solver.cpp:112] "


@pytest.mark.parametrize("line", [
    "Iteration 2, lr = 0.02 (warmup)",
    "Iteration 2, lr = 0.02, momentum = 0.9",
    "Iteration 2, lr = 0x1p-4",
    "Iteration 2, lr = 1_000",
    "Iteration 2, lr = 0.02;",
    "Iteration 2 (1 iter/s, 0s/1 iters), loss = 1.5 ok",
    "Iteration two, lr = 0.02",
    "    Train net output #0: z0 = 1.5 (* 1 = 1.5 loss) x",
    "MultiStep Status: Iteration 3, step = one",
    "Gradient clipping: scaling down gradients (L2 norm 3 > 0.5) by scale factor 0.166667 now",
], ids=lambda s: s[:40])
def test_unsupported_variants_are_refused_not_misread(tmp_path, line):
    data = MULTISTEP.read_text().split("\n")
    data[248] = _LR + line  # line 249 is "Iteration 2, lr = 0.02"
    p = tmp_path / "variant.log"
    p.write_text("\n".join(data))
    msg = _both(p)
    assert msg.startswith(f"{p}:249: unsupported variant of ")
    assert line[:20] in msg or "fields" in msg


def test_unsupported_variant_in_a_large_log_is_found_at_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "_CHUNK", 2048)
    data = MULTISTEP.read_text().split("\n")
    data[400] = data[400].replace("Train net output #2: z0 = ", "Train net output #2: z0 == ")
    p = tmp_path / "variant.log"
    p.write_text("\n".join(data))
    assert _both(p).startswith(f"{p}:401: unsupported variant of a Caffe solver line")


def test_iteration_beyond_int_is_refused(tmp_path):
    p = tmp_path / "big.log"
    p.write_text(_LR + "Iteration 99999999999, lr = 0.1\n")
    assert _both(p) == f"{p}:1: iteration 99999999999 does not fit Caffe's int"


def test_parse_log_streams(tmp_path, monkeypatch):
    """The first records come before the file is read to its end."""
    monkeypatch.setattr(logs, "_CHUNK", 4096)
    p = tmp_path / "big.log"
    data = MULTISTEP.read_bytes()
    p.write_bytes(data + b"x" * 100)  # a cut last line: the error comes only at the end
    it = parse_log(p)
    first = [next(it) for _ in range(3)]
    assert isinstance(first[0], SolverParams) and isinstance(first[1], NetName)
    with pytest.raises(InputError, match="last line has no end"):
        list(it)


def _outcome(fn, dump=_dump):
    try:
        return "ok", dump(fn())
    except InputError as e:
        return "error", str(e)


@pytest.mark.parametrize("seed", range(40))
def test_bulk_and_per_line_paths_agree_on_mangled_logs(tmp_path, monkeypatch, seed):
    """Shuffle, drop, duplicate and damage lines of real logs: both paths give
    the same runs or the same error, at any chunk size."""
    rng = random.Random(seed)
    sources = [MULTISTEP, TRAINING / "caffe.log", FIX / "logs" / "real-overflow.log",
               FIX / "caffe-runs" / "sgd-inv-clip" / "caffe.log", FIX / "logs" / "synthetic-nvcaffe.log",
               FIX / "logs" / "synthetic-rc2.log", TRAINING / "caffe_resume.log"]
    lines = []
    for src in rng.sample(sources, 2):
        lines += src.read_text().split("\n")[:-1]
    damages = [
        lambda ln: ln,
        lambda ln: ln.replace(" = ", " == ", 1),
        lambda ln: ln.replace("solver.cpp", "solverx.cpp", 1),
        lambda ln: ln[: len(ln) // 2],
        lambda ln: ln + " x",
        lambda ln: ln.replace("0.", "nan", 1),
        lambda ln: "    " + ln,
        lambda ln: ln.replace("Train net output #", "Train net output #1", 1),
    ]
    if seed % 2:  # damage that leaves no unsupported line: both paths must parse
        damages = [damages[0], damages[2], damages[6], lambda ln: ln.replace("] ", "]  ", 1)]
    rate = 0.06 if seed % 2 else 0.003
    out = []
    for ln in lines:
        r = rng.random()
        if r < 0.02:
            continue
        if r < 0.04:
            out.append(ln)
        if rng.random() < rate:
            ln = rng.choice(damages)(ln)
        out.append(ln)
    if rng.random() < 0.3:
        rng.shuffle(out)
    p = tmp_path / "mangled.log"
    p.write_text("\n".join(out) + "\n")
    monkeypatch.setattr(logs, "_CHUNK", rng.choice([512, 3000, 1 << 20]))
    fast = _outcome(lambda: _runs(monkeypatch, p, "regex"))
    slow = _outcome(lambda: _slow_runs(monkeypatch, p))
    assert fast == slow
    assert _outcome(lambda: _runs(monkeypatch, p, "scanner")) == slow
    records = _outcome(lambda: list(parse_log(p)), dump=lambda recs: [_rec(r) for r in recs])
    assert records[0] == fast[0] and (fast[0] == "ok" or records[1] == fast[1])


# ---------------------------------------------------------------------------
# The numba scanner: every event it parses is the regex's record
# ---------------------------------------------------------------------------

_EVENT_KIND = {  # scanner event -> _REC kind
    "EV_DISPLAY": logs.K_LOSS,
    "EV_SHORT_LOSS": logs.K_SLOSS,
    "EV_OUTPUT": logs.K_OUT,
    "EV_LR": logs.K_LR,
    "EV_CLIP": logs.K_CLIP,
}


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


def _scanner_vs_regex(buf: bytes) -> Counter:
    """Scan ``buf`` and check every event against ``_REC`` on its line:
    the candidate lines are the per-line path's, a bulk event is the
    regex's record with the same numbers (bit for bit, unless left to
    float()). Returns the count of event kinds and of numbers left."""
    from harness.kernels import logscan as ks

    names = {getattr(ks, n): n for n in _EVENT_KIND}
    ev = logs._scan_events(buf, 0)
    n = int(ev.counts[ks.C_EVENTS])
    assert ev.counts[ks.C_STATUS] == ks.ST_OK
    assert ev.counts[ks.C_SOLVER] == buf.count(b"solver.cpp:")
    assert ev.counts[ks.C_LINES] == buf.count(b"\n")
    starts = [int(x) for x in ev.start[:n]]
    assert starts == logs._line_starts(buf, 0, len(buf))
    seen = Counter()
    for i, ls in enumerate(starts):
        le = buf.find(b"\n", ls)
        assert ev.line[i] == buf.count(b"\n", 0, ls)
        kind = int(ev.kind[i])
        if kind == ks.EV_RARE:
            seen["EV_RARE"] += 1
            continue
        seen[names[kind]] += 1
        m = logs._REC.match(buf, ls, le)
        text = buf[ls:le]
        assert m is not None and logs._KIND_BY_GROUP[m.lastindex] == _EVENT_KIND[names[kind]], text
        assert logs._KIND_OF_EVENT[kind] == _EVENT_KIND[names[kind]]
        g = m.group
        if kind == ks.EV_DISPLAY:
            assert g(logs._LS_PS) is not None
            want = [g(logs._LS_V)]
            assert ev.ival[i] == int(g(logs._LS_IT))
        elif kind == ks.EV_SHORT_LOSS:
            want = [g(logs._SL_V)]
            assert ev.ival[i] == int(g(logs._SL_IT))
        elif kind == ks.EV_LR:
            assert not g(logs._LR_X)
            want = [g(logs._LR_V)]
            assert ev.ival[i] == int(g(logs._LR_IT))
        elif kind == ks.EV_CLIP:
            want = [g(logs._CL_N), g(logs._CL_C), g(logs._CL_S)]
        else:
            assert g(logs._OUT_PH) == b"Train"
            k = int(ev.key[i])
            assert buf[ev.kstart[k] : ev.kend[k]] == g(logs._OUT_K) + b": " + g(logs._OUT_NAME), text
            assert bool(ev.flags[i] & ks.F_WEIGHT) == (g(logs._OUT_W) is not None), text
            want = [g(logs._OUT_V)] + ([g(logs._OUT_W)] if g(logs._OUT_W) is not None else [])
        if ev.flags[i] & ks.F_PYFLOAT:
            seen["float()"] += 1
            continue
        got = [ev.v0[i], ev.v1[i], ev.v2[i]][: len(want)]
        assert [_bits(x) for x in got] == [_bits(float(w)) for w in want], text
    return seen


def test_scanner_events_are_the_regex_records_on_every_fixture_log():
    seen = Counter()
    for path in ALL_LOGS:
        seen += _scanner_vs_regex(path.read_bytes())
    # the fixtures hold every shape, and nan/inf/1e+38 (left to float())
    assert set(seen) == {"EV_DISPLAY", "EV_SHORT_LOSS", "EV_OUTPUT", "EV_LR", "EV_CLIP", "EV_RARE", "float()"}


_G = "I1123 19:06:55.791132  7839 "
_SHAPES = [
    _G + "solver.cpp:239] Iteration {i} ({v} iter/s, {v}s/{i} iters), loss = {v}",
    _G + "solver.cpp:327] Iteration {i}, loss = {v}",
    _G + "solver.cpp:258]     Train net output #{i}: {name} = {v}",
    _G + "solver.cpp:258]     Train net output #{i}: {name} = {v} (* {v} = {v} loss)",
    _G + "sgd_solver.cpp:112] Iteration {i}, lr = {v}",
    _G + "sgd_solver.cpp:99] Gradient clipping: scaling down gradients (L2 norm {v} > {v}) by scale factor {v}",
]
#: numbers as Caffe prints them (%g) and the awkward ones
VALUES = ["1e-05", "-2.32449e-30", "4.32297e+12", "0", "-0", "nan", "-nan", "inf", "-inf", "+inf", "0.02",
          "9.21845", "-92.4213", "1e+38", "3.40282e+38", "1.17549e-38", "5.16989e+21", "1e22", "1e23", "1e-22",
          "1e-23", "123456789012345", "1234567890123456", "9007199254740993", "0.1", "1.", ".5", "00012",
          "0e999", "-0.0e-5", "1e", "1e+", "e5", ".", "-", "nanx", "infinity", "1.5.3", "0x10", "1_0", "NaN"]


def _shape_lines(rng: random.Random, values, n: int) -> list[str]:
    out = []
    for _ in range(n):
        shape = rng.choice(_SHAPES)
        text = re.sub(r"\{(\w+)\}", lambda m: {
            "i": rng.choice(["0", "7", "2147483647", "2147483648", "99999999999", "012"]),
            "v": rng.choice(values),
            "name": rng.choice(["loss", "z0", "", "a=b", "\u00e9", "x:y"]),
        }[m.group(1)], shape)
        out.append(text)
    return out


def _mutate(rng: random.Random, s: str) -> str:
    alphabet = " ()=:#.-+e0123456789naif]\r*/sFTl"
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        i = rng.randrange(len(s) + 1)
        op = rng.randrange(4)
        if op == 0:
            s = s[:i] + s[i + 1 :]
        elif op == 1:
            s = s[:i] + rng.choice(alphabet) + s[i:]
        elif op == 2:
            s = s[:i] + rng.choice(alphabet) + s[i + 1 :]
        else:
            j = rng.randrange(len(s) + 1)
            s = s[:i] + s[min(i, j) : max(i, j)] + s[i:]
    return s


@pytest.mark.parametrize("seed", range(4))
def test_scanner_events_are_the_regex_records_on_mutated_lines(seed):
    rng = random.Random(seed)
    lines = [_mutate(rng, s) for s in _shape_lines(rng, VALUES, 3000)]
    lines += ["caffe.cpp:1] " + s for s in lines[:50]] + ["F" + s for s in lines[50:100]]
    rng.shuffle(lines)
    seen = _scanner_vs_regex(("\n".join(lines) + "\n").encode())
    assert seen["EV_RARE"] > 100 and seen["float()"] > 100 and min(seen[k] for k in _EVENT_KIND) > 40


@given(hst.lists(hst.one_of(
    hst.floats(allow_nan=True, allow_infinity=True).map(lambda x: f"{x:g}"),
    hst.floats(allow_nan=False, allow_infinity=False).map(repr),
    hst.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: f"{x:.6g}"),
    hst.text(alphabet="0123456789.-+einaf", max_size=10),
), min_size=1, max_size=8), hst.randoms(use_true_random=False))
def test_scanner_numbers_are_floats(values, rng):
    """Any token where a number goes: the scanner's value is float()'s, bit
    for bit, or left to float(), or the line is not a bulk line."""
    _scanner_vs_regex(("\n".join(_shape_lines(rng, values, 24)) + "\n").encode())


@pytest.mark.parametrize("text, bits, left", [
    ("1e-05", _bits(1e-05), False),
    ("4.32297e+12", _bits(4.32297e12), False),
    ("-2.32449e-30", None, True),  # |decimal exponent| > 22: float()
    ("0", _bits(0.0), False),
    ("-0", _bits(-0.0), False),
    ("nan", _bits(float("nan")), False),
    ("-nan", _bits(float("-nan")), False),
    ("inf", _bits(math.inf), False),
    ("-inf", _bits(-math.inf), False),
    ("0.000123456", _bits(0.000123456), False),
    ("123456789012345", _bits(123456789012345.0), False),
    ("1234567890123456", None, True),  # 16 significant digits: float()
], ids=lambda x: x if isinstance(x, str) else None)
def test_scanner_number_values(text, bits, left):
    from harness.kernels import logscan as ks

    ev = logs._scan_events(f"{_LR}Iteration 2, lr = {text}\n".encode(), 0)
    assert ev.counts[ks.C_EVENTS] == 1 and ev.kind[0] == ks.EV_LR
    assert bool(ev.flags[0] & ks.F_PYFLOAT) == left
    if not left:
        assert _bits(ev.v0[0]) == bits


def test_nan_signs_reach_the_series(tmp_path, monkeypatch):
    text = MULTISTEP.read_text()
    text = re.sub(r"(Iteration \d+, lr = )0\.02\n", r"\g<1>-nan\n", text, count=1)
    text = re.sub(r"(Train net output #0: z0 = )\S+", r"\g<1>-nan", text, count=1)
    p = tmp_path / "nan.log"
    p.write_text(text)
    for how in PATHS:
        [run] = _runs(monkeypatch, p, how)
        assert _bits(run.lr.value[0]) == _bits(float("-nan")), how
        assert _bits(run.outputs[OutputKey("train", 0, 0, "z0")].value[0]) == _bits(float("-nan")), how


@pytest.mark.parametrize("seed", range(6))
def test_paths_agree_on_logs_of_awkward_numbers(tmp_path, monkeypatch, seed):
    """A real log with its numbers replaced by the awkward ones (some are
    not numbers: then every path refuses the log alike)."""
    rng = random.Random(seed)
    good = [v for v in VALUES if logs._NUM_RE.fullmatch(v.encode())]
    pool = good if seed % 2 else VALUES
    num = re.compile(r"(?<=[ (])(?<!step = )(?<!Iteration )-?\d+(?:\.\d+)?(?:e[-+]\d+)?(?=[ )\n])")  # not an int field
    text = num.sub(lambda m: rng.choice(pool) if rng.random() < 0.3 else m.group(0), MULTISTEP.read_text())
    p = tmp_path / "awkward.log"
    p.write_text(text)
    monkeypatch.setattr(logs, "_CHUNK", rng.choice([700, 1 << 20]))
    want = _outcome(lambda: _slow_runs(monkeypatch, p))
    assert want[0] == ("ok" if seed % 2 else "error")
    for how in PATHS[:2]:
        assert _outcome(lambda: _runs(monkeypatch, p, how)) == want, how


def test_scanner_key_table_full_takes_the_regex_path(monkeypatch):
    monkeypatch.setattr(logs, "_SCAN_KEYS", 4)  # MULTISTEP has 9 train outputs
    taken = []
    fast = logs._fast_chunk
    monkeypatch.setattr(logs, "_fast_chunk", lambda *a: taken.append(1) or fast(*a))
    assert _dump(_runs(monkeypatch, MULTISTEP, "scanner")) == _dump(_slow_runs(monkeypatch, MULTISTEP))
    assert taken == [1]


def test_output_names_equal_after_decoding_are_one_series(tmp_path, monkeypatch):
    """Keys are byte spans in the scanner; b'\\xff' and b'\\xfe' both decode
    to U+FFFD and '#01' is index 1: one OutputKey, values in line order."""
    head = _G.encode() + b"solver.cpp:258]     Train net output #"
    lines = [_G.encode() + b"solver.cpp:239] Iteration 0 (1 iter/s, 0s/1 iters), loss = 1"]
    for i, k in enumerate([b"1: \xff", b"01: \xfe", b"1: \xff", b"2: a"]):
        lines.append(head + k + b" = %d" % i)
    p = tmp_path / "keys.log"
    p.write_bytes(b"\n".join(lines) + b"\n")
    runs = [_dump(_runs(monkeypatch, p, how)) for how in PATHS]
    assert runs[0] == runs[1] == runs[2]
    [run] = read_runs(p)
    assert list(run.outputs[OutputKey("train", 0, 1, "\ufffd")].value) == [0, 1, 2]


def test_scanner_needs_no_per_line_fallback_on_caffe_logs(tmp_path, monkeypatch):
    """Speed, not results: Caffe's own lines (also with CRLF ends) are all
    scanner shapes or rare lines; only NVCaffe's take the per-line path."""
    crlf = tmp_path / "crlf.log"
    crlf.write_bytes(MULTISTEP.read_bytes().replace(b"\n", b"\r\n"))
    slow = []
    per_line = logs._slow_chunk
    monkeypatch.setattr(logs, "_slow_chunk", lambda *a: slow.append(1) or per_line(*a))
    monkeypatch.setattr(logs, "_SCAN_MIN", 0)
    monkeypatch.setattr(logs, "_SCAN_MIN_LOADED", 0)
    for path in ALL_LOGS + [crlf]:
        slow.clear()
        read_runs(path)
        assert bool(slow) == (path.name == "synthetic-nvcaffe.log"), path


def test_scanner_event_arrays_grow_for_short_lines():
    """The first try has room for a candidate every 32 bytes; 2-byte F lines
    need the second, one slot per line."""
    from harness.kernels import logscan as ks

    buf = b"x\n" * 10 + b"F\n" * 3000
    ev = logs._scan_events(buf, 4)
    assert ev.counts[ks.C_STATUS] == ks.ST_OK and ev.counts[ks.C_EVENTS] == 3000
    assert ev.counts[ks.C_LINES] == 3008 and list(ev.line[:2]) == [8, 9] and ev.start[0] == 20
