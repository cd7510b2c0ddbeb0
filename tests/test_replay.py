"""harness.replayer and `caffe-harness replay`: verdicts, first divergence, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.compare import Tolerance
from harness.io.blobs import read_caffemodel, write_caffemodel
from harness.replayer import find_runs, replay

FIX = Path(__file__).resolve().parent.parent / "fixtures"
RUN_DIRS = [d for name in ("caffe-runs", "caffe-runs-refblas", "caffe-runs-atlas") for d in sorted((FIX / name).iterdir())]


@pytest.mark.parametrize("run", RUN_DIRS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_run_replays_exact(run):
    (res,) = replay(run)
    assert res.status == "exact", res.message
    assert res.max_ulp == 0 and res.compared > 0


@pytest.mark.parametrize("run", sorted((FIX / "caffe-runs-rejected").iterdir()), ids=lambda p: p.name)
def test_rejected_runs_are_refused_as_caffe(run):
    (res,) = replay(run)
    assert res.status == "refused" and res.message.startswith("Check failed")


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def test_altered_snapshot_is_located(tmp_path, capsys):
    run = _copy(FIX / "caffe-runs" / "adam-step", tmp_path)
    snap = run / "snapshots" / "run_iter_4.caffemodel"
    weights = read_caffemodel(snap)
    w = weights["ip1"][0].data
    w.reshape(-1)[3] = np.nextafter(w.reshape(-1)[3], np.float32(np.inf), dtype=np.float32)
    write_caffemodel(snap, weights, with_diff=True)
    (res,) = replay(run)
    assert res.status == "mismatch"
    d = res.divergence
    assert (d.iter, d.stage, d.blob, d.index, d.ulps) == (3, "params", "ip1/0", 3, 1.0)
    assert main(["replay", str(run)]) == 1
    out = capsys.readouterr().out
    assert "iter 3 params ip1/0[3]" in out and "(1 ulp)" in out and "MISMATCH" in out
    # a one-ULP tolerance accepts it and says so
    (res,) = replay(run, tolerance=Tolerance(max_ulp=1))
    assert res.status == "within-tolerance" and res.max_ulp == 1


def test_altered_log_lr_is_located(tmp_path):
    run = _copy(FIX / "caffe-runs" / "sgd-step", tmp_path)
    log = run / "caffe.log"
    text = log.read_text()
    assert "Iteration 5, lr = 0.01\n" in text
    log.write_text(text.replace("Iteration 5, lr = 0.01\n", "Iteration 5, lr = 0.0100001\n"))
    (res,) = replay(run)
    assert res.status == "mismatch"
    assert (res.divergence.iter, res.divergence.stage) == (5, "lr")


def test_profile_override_shows_fma_matters():
    # the OpenBLAS build fuses; replaying its run with separate rounding must diverge
    (res,) = replay(FIX / "caffe-runs" / "sgd-step", profile="separate-rounding")
    assert res.status == "mismatch" and res.profile == "separate-rounding"


def test_json_and_names(capsys):
    code = main(["replay", str(FIX / "caffe-runs-refblas"), "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["ok"]
    assert {r["name"] for r in data["runs"]} >= {"sgd-step", "adam-inv"}
    assert all(r["profile"] == "separate-rounding" and r["status"] == "exact" for r in data["runs"])


def test_find_runs_names_keep_builds_apart():
    names = [n for _, _, n in find_runs([FIX])]
    assert "caffe-runs/sgd-step" in names and "caffe-runs-atlas/sgd-step" in names


@pytest.mark.parametrize("args,needle", [
    (["replay", "/nonexistent/run"], "no such file"),
    (["replay", str(FIX / "caffe-runs" / "sgd-step"), "--tolerance", "x"], "--tolerance"),
    (["replay", str(FIX / "formats")], "holds no capture"),
])
def test_bad_input_exit_2(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_summary_matrix(capsys):
    assert main(["replay", str(FIX / "caffe-runs-refblas"), "--summary", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "10 runs: 10 exact, 0 refused as Caffe refused, 0 within tolerance, 0 mismatched"
    sgd = next(line for line in out.splitlines() if line.startswith("SGD "))
    assert sgd.split()[-1] == "4/4"
