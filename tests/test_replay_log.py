"""caffe-harness replay-log: every fixture log agrees with the reference; a
changed digit, a missing MultiStep line, a wrong clipping scale or fatal line
is caught at its file:line; resumes and logs that start mid-run; exports.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.commands.replay_log import check_log
from harness.logs import read_runs

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "fixtures"
V09 = FIX / "logs" / "synthetic-v0.9.log"
LOGS = sorted(
    p for p in list(FIX.glob("caffe-runs*/*/caffe.log")) + list(FIX.glob("training/*/*.log")) + list(FIX.glob("logs/*.log"))
    if p != V09
)
MULTISTEP = FIX / "caffe-runs" / "sgd-multistep" / "caffe.log"
CLIP = FIX / "caffe-runs" / "sgd-inv-clip" / "caffe.log"
TRAINING = FIX / "training" / "sgd-multistep"


def _id(p: Path) -> str:
    return str(p.relative_to(FIX))


def replay(capsys, *args) -> tuple[int, str, str]:
    code = main(["replay-log", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", LOGS, ids=_id)
def test_every_fixture_log_agrees(path, capsys):
    code, out, err = replay(capsys, path)
    assert (code, err) == (0, ""), out
    assert "result: all " in out


def test_v09_log_with_its_solver(capsys):
    code, out, _ = replay(capsys, V09, "--solver", V09.with_name("synthetic-v0.9.solver.prototxt"))
    assert code == 0 and "12 lr" in out


def test_v09_log_without_a_solver_is_bad_input(capsys):
    code, out, err = replay(capsys, V09)
    assert code == 2 and out == ""
    assert err == (f"caffe-harness: error: {V09}:1: the log starts without Caffe's 'Initializing solver from "
                   "parameters' block: pass --solver\n")


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines))
    return p


def _change_digit(text: str) -> str:
    """Change the last digit of the value after 'lr = ' (1 <-> 2, else +1)."""
    head, _, val = text.rpartition("lr = ")
    i = max(k for k, ch in enumerate(val) if ch.isdigit() and (k == 0 or val[k - 1] != "e"))
    d = int(val[i])
    return head + "lr = " + val[:i] + str((d + 1) % 10 if d != 9 else 8) + val[i + 1 :]


ALTERED = [
    FIX / "caffe-runs" / p / "caffe.log"
    for p in ("sgd-multistep", "sgd-inv", "sgd-exp", "adam-poly", "nesterov-sigmoid", "rmsprop-step", "sgd-fixed")
] + [TRAINING / "caffe_resume.log", FIX / "training" / "adam-hdf5" / "caffe.log", FIX / "logs" / "real-overflow.log"]


@pytest.mark.parametrize("path", ALTERED, ids=_id)
def test_a_changed_digit_in_an_lr_line_is_caught_at_its_line(path, tmp_path, capsys):
    src = path.parent
    dst = tmp_path / src.name
    shutil.copytree(src, dst)  # keeps snapshots next to the log (resumes read them)
    lines = _lines(dst / path.name)
    lr_lines = [i for i, ln in enumerate(lines) if "] Iteration " in ln and ", lr = " in ln]
    k = lr_lines[len(lr_lines) // 3]
    old = lines[k]
    if old.endswith("lr = inf"):
        k = lr_lines[1]
        old = lines[k]
    lines[k] = _change_digit(old)
    assert lines[k] != old
    p = _write(dst, path.name, lines)
    code, out, _ = replay(capsys, p)
    assert code == 1
    assert f"result: DISAGREE, first at {p}:{k + 1}: Iteration " in out
    js = json.loads(replay(capsys, p, "--format", "json")[1])
    assert js["ok"] is False and js["first_disagreement"]["line"] == k + 1 and js["first_disagreement"]["kind"] == "lr"


def test_every_lr_line_is_compared(tmp_path):
    """Each lr line of a run, changed alone, is caught (nothing is skipped)."""
    lines = _lines(MULTISTEP)
    for k, ln in enumerate(lines):
        if ", lr = " not in ln:
            continue
        changed = list(lines)
        changed[k] = _change_digit(ln)
        res = check_log(_write(tmp_path, "one.log", changed))
        assert not res.ok and res.first.line == k + 1 and res.first.kind == "lr"


def test_print_precision_is_exact(tmp_path):
    """0.00054 is what Caffe prints; 0.000540001 or 0.00054000 are other texts of other floats."""
    lines = _lines(MULTISTEP)
    k = next(i for i, ln in enumerate(lines) if ln.endswith("Iteration 11, lr = 0.00054"))
    for bad in ("0.000540001", "0.000539999", "5.41e-04"):
        lines2 = list(lines)
        lines2[k] = lines[k].replace("0.00054", bad)
        assert not check_log(_write(tmp_path, "p.log", lines2)).ok, bad
    lines2 = list(lines)
    lines2[k] = lines[k].replace("0.00054", "5.4e-04")  # the same float, another spelling
    assert check_log(_write(tmp_path, "p.log", lines2)).ok


def test_a_missing_multistep_line_is_caught(tmp_path, capsys):
    lines = [ln for ln in _lines(MULTISTEP) if "MultiStep Status: Iteration 7" not in ln]
    p = _write(tmp_path, "ms.log", lines)
    code, out, _ = replay(capsys, p)
    k = next(i for i, ln in enumerate(lines) if ln.endswith("Iteration 7, lr = 0.0018"))
    assert code == 1
    assert (f"first at {p}:{k + 1}: no 'MultiStep Status: Iteration 7, step = 2' line, but the reference "
            "advances current_step at iteration 7") in out


def test_a_multistep_line_at_the_wrong_iteration_is_caught(tmp_path):
    lines = _lines(MULTISTEP)
    k = next(i for i, ln in enumerate(lines) if "MultiStep Status: Iteration 7" in ln)
    lines[k] = lines[k].replace("Iteration 7, step = 2", "Iteration 7, step = 3")
    res = check_log(_write(tmp_path, "ms.log", lines))
    assert res.first.line == k + 1 and "the reference gives step = 2" in res.first.message


@pytest.mark.parametrize("change, why", [
    (("by scale factor 0.128416", "by scale factor 0.128417"), "scale factor 0.128417 but fl(0.5 / norm)"),
    (("(L2 norm 3.89359 > 0.5)", "(L2 norm 3.89369 > 0.5)"), "scale factor 0.128416 but fl(0.5 / norm)"),
    (("> 0.5) by", "> 0.6) by"), "clipping threshold 0.6 but clip_gradients is 0.5"),
    (("(L2 norm 3.89359 > 0.5) by scale factor 0.128416", "(L2 norm 0.4 > 0.5) by scale factor 1.25"),
     "does not exceed clip_gradients 0.5"),
])
def test_a_wrong_clipping_line_is_caught(tmp_path, change, why):
    lines = _lines(CLIP)
    k = next(i for i, ln in enumerate(lines) if change[0] in ln)
    lines[k] = lines[k].replace(*change)
    res = check_log(_write(tmp_path, "clip.log", lines))
    assert not res.ok and res.first.line == k + 1 and res.first.kind == "clipping"
    assert why in res.first.message


def test_clipping_without_clip_gradients_is_caught(tmp_path):
    lines = [ln for ln in _lines(CLIP) if not ln.startswith("clip_gradients")]
    res = check_log(_write(tmp_path, "clip.log", lines))
    assert res.first.kind == "clipping" and "clipping is off" in res.first.message


def test_a_wrong_lr_policy_line_is_caught(tmp_path):
    lines = [ln.replace("Learning Rate Policy: multistep", "Learning Rate Policy: step") for ln in _lines(MULTISTEP)]
    res = check_log(_write(tmp_path, "p.log", lines))
    assert res.first.kind == "lr_policy" and res.first.message == (
        "Learning Rate Policy: step but the solver has 'multistep'")


def test_another_solver_disagrees(tmp_path, capsys):
    solver = tmp_path / "solver.prototxt"
    solver.write_text((MULTISTEP.parent / "solver.prototxt").read_text().replace("gamma: 0.3", "gamma: 0.25"))
    code, out, _ = replay(capsys, MULTISTEP, "--solver", solver)
    assert code == 1 and "Iteration 3, lr = 0.006 but the reference gives 0.005" in out
    assert replay(capsys, MULTISTEP, "--solver", MULTISTEP.parent / "solver.prototxt")[0] == 0


# -- resumes -------------------------------------------------------------------


def test_resume_reads_the_solverstate_next_to_the_log():
    [rc] = check_log(TRAINING / "caffe_resume.log").runs
    assert (rc.start_iter, rc.current_step) == (30, 1)
    assert rc.start == f"solverstate {TRAINING / 'snapshots' / 'train_iter_30.solverstate'}"


def test_resume_without_its_solverstate_is_inferred(tmp_path):
    p = tmp_path / "resume.log"
    shutil.copy(TRAINING / "caffe_resume.log", p)
    [rc] = check_log(p).runs
    assert (rc.start_iter, rc.current_step, rc.disagreements) == (30, 1, 0)
    assert rc.start == "inferred from train_iter_30.solverstate (file not found)"


def test_concatenated_run_and_resume(tmp_path, capsys):
    p = tmp_path / "both.log"
    p.write_bytes((TRAINING / "caffe.log").read_bytes() + (TRAINING / "caffe_resume.log").read_bytes())
    code, out, _ = replay(capsys, p)
    assert code == 0 and "2 runs" in out
    res = check_log(p)
    assert [(r.start_iter, r.current_step) for r in res.runs] == [(0, 0), (30, 1)]
    # the resumed run's lr after its MultiStep advance is checked too
    lines = _lines(p)
    k = max(i for i, ln in enumerate(lines) if "Iteration 45, lr = " in ln)
    lines[k] = _change_digit(lines[k])
    res = check_log(_write(tmp_path, "both2.log", lines))
    assert res.first.line == k + 1


def test_resumed_multistep_state_matters(tmp_path, monkeypatch):
    """The resumed run starts at 30 with current_step 1. From current_step 0,
    multistep (one advance per call) would advance at 30 and print a MultiStep
    Status line the log does not have."""
    from harness.commands import replay_log

    p = tmp_path / "resume.log"
    text = (TRAINING / "caffe_resume.log").read_text()
    p.write_text(text.replace("Resuming from snapshots/train_iter_30.solverstate", "Resuming from snapshots/x.solverstate"))
    [rc] = check_log(p).runs
    assert (rc.start_iter, rc.current_step, rc.disagreements) == (30, 1, 0)
    assert rc.start == "inferred from the first logged iteration"
    monkeypatch.setattr(replay_log, "_start", lambda run, cfg, d: (30, 0, "wrong"))
    res = check_log(p)
    k = next(i for i, ln in enumerate(text.split("\n")) if "Iteration 30, lr = 0.005" in ln)
    assert res.first.line == k + 1 and res.first.message == (
        "no 'MultiStep Status: Iteration 30, step = 1' line, but the reference advances current_step at iteration 30")


@pytest.mark.parametrize("first_iter, step", [(5, 1), (8, 2), (12, 3)])
def test_log_starting_mid_run(tmp_path, capsys, first_iter, step):
    """A log whose head is lost: the solver comes from --solver, the multistep
    state is what the run had reached at its first logged iteration."""
    lines = _lines(MULTISTEP)
    k = next(i for i, ln in enumerate(lines) if f"] Iteration {first_iter} (" in ln)
    p = _write(tmp_path, "tail.log", lines[k:])
    code, out, _ = replay(capsys, p, "--solver", MULTISTEP.parent / "solver.prototxt")
    assert code == 0, out
    [rc] = check_log(p, solver=str(MULTISTEP.parent / "solver.prototxt")).runs
    assert (rc.start_iter, rc.current_step) == (first_iter, step)


# -- refusals --------------------------------------------------------------------


def test_rejected_runs_agree_with_the_predicted_refusal(capsys):
    path = FIX / "caffe-runs-rejected" / "adam-sigmoid-gamma-negative" / "caffe.log"
    code, out, _ = replay(capsys, path)
    assert code == 0 and "Caffe refused as predicted: Check failed: this->param_.gamma() >= 0 (-0.5 vs. 0)" in out


def test_a_different_fatal_message_is_caught(tmp_path):
    path = FIX / "caffe-runs-rejected" / "sgd-sigmoid-gamma-negative" / "caffe.log"
    lines = [ln.replace("(-0.5 vs. 0)", "(-0.4 vs. 0)") for ln in _lines(path)]
    res = check_log(_write(tmp_path, "f.log", lines))
    assert res.first.kind == "refusal" and res.first.line == 221


def test_a_run_the_reference_would_refuse_is_caught(tmp_path):
    lines = [ln.replace('lr_policy: "multistep"', 'lr_policy: "multistepx"').replace("Policy: multistep", "Policy: multistepx")
             for ln in _lines(MULTISTEP)]
    res = check_log(_write(tmp_path, "r.log", lines))
    assert res.first.kind == "refusal"
    assert "Unknown learning rate policy: multistepx" in res.first.message


def test_fatal_regularization(capsys):
    code, out, _ = replay(capsys, FIX / "logs" / "real-fatal-regularization.log")
    assert code == 0 and "Caffe refused as predicted: Unknown regularization type: L3" in out


# -- bad input ---------------------------------------------------------------------


@pytest.mark.parametrize("content, problem", [
    (b"", "empty file: not a Caffe training log"),
    (b"hello\nworld\n", "not a Caffe training log"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\n", "binary data (NUL bytes)"),
])
def test_bad_input_exits_2(tmp_path, capsys, content, problem):
    p = tmp_path / "bad.log"
    p.write_bytes(content)
    code, out, err = replay(capsys, p)
    assert code == 2 and out == "" and problem in err and err.startswith(f"caffe-harness: error: {p}")
    assert "Traceback" not in err


def test_truncated_log_exits_2(tmp_path, capsys):
    data = MULTISTEP.read_bytes()
    p = tmp_path / "cut.log"
    p.write_bytes(data[: data.rindex(b"lr = 0.00054") + 9])
    code, out, err = replay(capsys, p)
    assert code == 2 and "last line has no end (truncated log?)" in err


def test_nothing_to_check_exits_2(tmp_path, capsys):
    lines = [ln for ln in _lines(MULTISTEP) if ", lr = " not in ln and "MultiStep" not in ln]
    code, out, err = replay(capsys, _write(tmp_path, "nolr.log", lines))
    assert code == 2 and "nothing to check" in err


def test_a_broken_parameter_block_exits_2(tmp_path, capsys):
    lines = [ln.replace("momentum: 0.9", "momentum: fast") for ln in _lines(MULTISTEP)]
    p = _write(tmp_path, "b.log", lines)
    code, out, err = replay(capsys, p)
    assert code == 2 and err.startswith(f"caffe-harness: error: {p}:8:11: ") and "the log's solver parameters" in err


# -- exports -------------------------------------------------------------------------


def test_csv_export(tmp_path, capsys):
    out_csv = tmp_path / "series.csv"
    code, _, _ = replay(capsys, FIX / "training" / "adam-hdf5" / "caffe.log", "--csv", out_csv)
    assert code == 0
    rows = list(csv.reader(out_csv.open()))
    assert rows[0] == ["run", "iter", "lr", "loss", "train#0:loss", "test0#0:accuracy", "test0#1:loss", "test0:loss"]
    [run] = read_runs(FIX / "training" / "adam-hdf5" / "caffe.log")
    its = sorted(set(run.lr.iter) | set(run.loss.iter) | set(run.tests.iter))
    assert [int(r[1]) for r in rows[1:]] == its
    first = dict(zip(rows[0], rows[1]))
    assert float(first["lr"]) == run.lr.value[0] and float(first["loss"]) == run.loss.value[0]
    row10 = next(dict(zip(rows[0], r)) for r in rows[1:] if r[1] == "10")
    assert float(row10["test0#0:accuracy"]) == run.outputs[next(k for k in run.outputs if k.name == "accuracy")].value[0]


def test_csv_of_two_runs(tmp_path, capsys):
    p = tmp_path / "both.log"
    p.write_bytes((TRAINING / "caffe.log").read_bytes() + (TRAINING / "caffe_resume.log").read_bytes())
    out_csv = tmp_path / "s.csv"
    assert replay(capsys, p, "--csv", out_csv)[0] == 0
    runs = [r[0] for r in csv.reader(out_csv.open())][1:]
    assert runs[0] == "1" and runs[-1] == "2" and runs == sorted(runs)


def test_plot_export(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    png = tmp_path / "p.png"
    assert replay(capsys, MULTISTEP, "--plot", png)[0] == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = replay(capsys, MULTISTEP, "--plot", tmp_path / "p.png")
    assert code == 2
    assert err == "caffe-harness: error: --plot needs matplotlib: pip install 'caffe-harness[plot]'\n"
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("seed", range(12))
def test_sparse_schedule_equals_the_dense_one(seed):
    """schedule_at (any iterations, no dense array) gives the bits of
    lr_schedule/current_steps over every iteration from the start."""
    import numpy as np

    from harness.commands.replay_log import schedule_at
    from harness.config import SolverConfig
    from harness.lr import current_steps, lr_schedule

    rng = np.random.default_rng(seed)
    policy = ["multistep", "multistep", "step", "inv", "exp", "poly", "sigmoid", "fixed"][seed % 8]
    sv = tuple(sorted(int(x) for x in rng.integers(0, 60, size=int(rng.integers(0, 6)))))
    if seed % 3 == 0 and sv:
        sv = sv + (sv[-1],)  # a repeated stepvalue: advances one call later
    cfg = SolverConfig(base_lr=0.1, lr_policy=policy, gamma=0.5 if policy != "exp" else 0.99, power=0.75,
                       stepsize=7, stepvalue=sv, max_iter=200)
    start = int(rng.integers(0, 30))
    cs0 = int(current_steps(cfg, start)[-1]) if (policy == "multistep" and start) else 0
    dense_it = np.arange(start, 120)
    dense = lr_schedule(cfg, dense_it, current_step=cs0)
    dense_cs = current_steps(cfg, dense_it, current_step=cs0)
    its = np.sort(rng.choice(dense_it, size=25, replace=False))
    rates, steps, advances = schedule_at(cfg, its, start, cs0)
    assert rates.view(np.uint32).tolist() == dense[its - start].view(np.uint32).tolist()
    if policy in ("multistep", "step"):
        assert steps.tolist() == dense_cs[its - start].tolist()
    if policy == "multistep":
        before = np.concatenate([[cs0], dense_cs[:-1]])
        want = {int(i): int(s) for i, s in zip(dense_it, dense_cs) if s != before[i - start]}
        assert {k: v for k, v in advances.items() if k < 120} == want
