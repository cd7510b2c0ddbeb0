"""harness.logs: the streaming parser of `caffe train` logs.

Every real log in fixtures/ parses with the record counts an independent
line-by-line count gives; read_runs' bulk path equals the per-line path on
every log and at every chunk size; formats of other releases and forks;
bad input is an InputError naming file:line.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from harness import logs
from harness.errors import InputError
from harness.logs import (
    Fatal,
    GradientClipping,
    LearningRate,
    LogEnd,
    Loss,
    MultiStepStatus,
    NetName,
    NetOutput,
    OptimizationDone,
    OutputKey,
    Restore,
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
                d[k] = sorted((kk, list(s.iter), [repr(x) for x in s.value]) for kk, s in v.items())
            elif k == "lr_extra":
                d[k] = sorted((kk, [repr(x) for x in a]) for kk, a in v.items())
            elif k == "loss_weights":
                d[k] = sorted(v.items())
            elif k == "final_loss":
                d[k] = None if v is None else (v[0], repr(v[1]))
            else:
                d[k] = v
        out.append(d)
    return out


def _slow_runs(monkeypatch, path):
    with monkeypatch.context() as m:
        m.setattr(logs, "_fast_chunk", lambda *a: False)
        return read_runs(path)


@pytest.mark.parametrize("path", ALL_LOGS, ids=_id)
def test_bulk_path_equals_per_line_path(path, monkeypatch):
    assert _dump(read_runs(path)) == _dump(_slow_runs(monkeypatch, path))


@pytest.mark.parametrize("chunk", [97, 1000, 4096])
@pytest.mark.parametrize("path", [MULTISTEP, TRAINING / "caffe.log", FIX / "logs" / "real-overflow.log",
                                  FIX / "caffe-runs" / "sgd-inv-clip" / "caffe.log"], ids=_id)
def test_chunk_boundaries_change_nothing(path, chunk, monkeypatch):
    want = _dump(read_runs(path))
    monkeypatch.setattr(logs, "_CHUNK", chunk)
    assert _dump(read_runs(path)) == want
    assert _dump(_slow_runs(monkeypatch, path)) == want
    assert [r for r in parse_log(path)][-1].line == path.read_bytes().count(b"\n")


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
    fast = _outcome(lambda: read_runs(p))
    slow = _outcome(lambda: _slow_runs(monkeypatch, p))
    assert fast == slow
    records = _outcome(lambda: list(parse_log(p)), dump=lambda recs: [_rec(r) for r in recs])
    assert records[0] == fast[0] and (fast[0] == "ok" or records[1] == fast[1])
