"""``harness.audit`` and ``caffe-harness audit``: snapshot sequences checked without gradients.

- every real-Caffe snapshot sequence in ``fixtures/caffe-runs*/`` passes every row;
- a deliberately altered value (data, diff, history, current_step, iter,
  a NaN, a frozen blob) is reported with its invariant, file, blob and
  flat index; a wrong profile or solver fails too;
- the gradient witness finds a gradient for every element the reference
  kernels produce (zeros, subnormals, huge values, lr 0) and finds none for
  most altered histories;
- chunking does not change a report (the streaming readers themselves are
  tested in ``test_io_blobs.py``);
- the check kernels of ``harness.kernels.audit`` are cached only against the
  ``kernels/update.py`` they import (the pin is current);
- bad input (corrupt files, another net, duplicate iterations) is one
  ``InputError`` line, exit 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness import audit as A
from harness.kernels import audit as KA
from harness.cli import main
from harness.errors import InputError
from harness.io.blobs import read_caffemodel, read_solverstate, write_caffemodel, write_solverstate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RUNS = sorted(FIXTURES.glob("caffe-runs*/*/snapshots"))
PROFILE_OF_BLAS = {"openblas": "caffe-openblas", "reference": "separate-rounding", "atlas": "separate-rounding"}
OTHER_PROFILE = {"caffe-openblas": "separate-rounding", "separate-rounding": "caffe-openblas"}
#: an altered history must leave no gradient for at least this share of elements
MIN_DETECTION = 0.5


def _run_id(snapdir: Path) -> str:
    blas = json.loads((snapdir.parent / "config.json").read_text())["blas"]
    return f"{blas}/{snapdir.parent.name}"


def _profile(run: Path) -> str:
    return PROFILE_OF_BLAS[json.loads((run / "config.json").read_text())["blas"]]


def _copy_run(name: str, tmp_path: Path, iters=None) -> Path:
    """Copy a caffe-runs fixture (solver, net, the snapshots of ``iters``) into tmp_path."""
    src = FIXTURES / "caffe-runs" / name
    dst = tmp_path / name
    (dst / "snapshots").mkdir(parents=True)
    for f in ("solver.prototxt", "net.prototxt", "config.json"):
        shutil.copy(src / f, dst / f)
    for f in (src / "snapshots").iterdir():
        k = A._iter_of_name(f.name)
        if iters is None or k in iters:
            shutil.copy(f, dst / "snapshots" / f.name)
    return dst


# ---------------------------------------------------------------------------
# real Caffe sequences
# ---------------------------------------------------------------------------


def test_fixture_runs_exist():
    assert len(RUNS) >= 60


@pytest.mark.parametrize("snapdir", RUNS, ids=_run_id)
def test_every_fixture_sequence_passes(snapdir):
    run = snapdir.parent
    report = A.audit([snapdir], solver=run / "solver.prototxt", profile=_profile(run))
    assert report.ok, report.format_text()
    rows = {r.id: r for r in report.invariants}
    # the rows that apply to every such run really checked something
    for key in ("iter-matches-name", "current-step", "history-layout", "finite", "update-applied", "gradient-witness"):
        assert rows[key].status == "pass", (key, report.format_text())
    assert rows["update-applied"].cases == len(report.snapshots) - 1
    solver_row = {"SGD": "sgd-diff-is-history", "Nesterov": "nesterov-step", "Adam": "adam-step"}.get(report.solver_type)
    if solver_row:
        assert rows[solver_row].status == "pass"


@pytest.mark.parametrize("name", ["nesterov-fixed", "adam-exp", "sgd-inv"])
def test_wrong_profile_fails(name):
    run = FIXTURES / "caffe-runs" / name
    report = A.audit([run / "snapshots"], solver=run / "solver.prototxt", profile="separate-rounding")
    assert not report.ok


def test_without_solver_the_solver_rows_are_skipped():
    report = A.audit([FIXTURES / "caffe-runs" / "adam-exp" / "snapshots" / "run"])
    assert report.ok and report.solver_type is None
    rows = {r.id: r for r in report.invariants}
    for key in ("current-step", "frozen-data", "adam-step", "gradient-witness"):
        assert rows[key].status == "skipped" and rows[key].skipped == "needs --solver"
    assert rows["update-applied"].status == "pass"
    assert rows["history-layout"].status == "pass"


def test_hdf5_sequence_passes():
    d = FIXTURES / "formats" / "hdf5-adam"
    report = A.audit([d], solver=d / "solver.prototxt")
    assert report.ok, report.format_text()
    assert report.row("adam-step").values > 0 and report.row("gradient-witness").values > 0


def test_hdf5_without_diff_skips_the_diff_rows():
    d = FIXTURES / "formats" / "hdf5-sgd-nodiff"
    report = A.audit([d], solver=d / "solver.prototxt")
    assert report.ok
    assert report.row("sgd-diff-is-history").skipped == "the caffemodels have no diff (snapshot_diff off)"


def test_non_consecutive_snapshots_check_what_they_can():
    snaps = FIXTURES / "caffe-runs" / "sgd-step" / "snapshots"
    report = A.audit([snaps / "run_iter_2.solverstate", snaps / "run_iter_7.solverstate"],
                     solver=snaps.parent / "solver.prototxt")
    assert report.ok
    assert report.row("update-applied").skipped == "no two snapshots one iteration apart"
    assert report.row("frozen-data").status == "pass"
    assert report.row("sgd-diff-is-history").status == "pass"


def test_wrong_rate_fails_the_witness(tmp_path):
    from harness.io.solver import load_solver

    run = FIXTURES / "caffe-runs" / "adagrad-fixed"
    cfg = load_solver(run / "solver.prototxt", weights=run / "init.caffemodel")
    report = A.audit([run / "snapshots"], solver=cfg.replace(base_lr=cfg.base_lr * 1.5))
    assert report.row("gradient-witness").status == "fail"


# ---------------------------------------------------------------------------
# altered snapshots
# ---------------------------------------------------------------------------


def _alter_model(path: Path, blob: str, field: str, index: int, change) -> None:
    layer, i = blob.rsplit("/", 1)
    m = read_caffemodel(path)
    arr = getattr(m[layer][int(i)], field).reshape(-1)
    arr[index] = change(arr[index])
    write_caffemodel(path, m, with_diff=True)


def _alter_state(path: Path, slot: int | None = None, index: int = 0, change=None, **fields) -> None:
    s = read_solverstate(path)
    if slot is not None:
        h = s.history[slot].reshape(-1)
        h[index] = change(h[index])
    for k, v in fields.items():
        setattr(s, k, v)
    write_solverstate(path, s)


def _up(x):
    return np.nextafter(x, np.float32(np.inf))


def _scale(x):
    return np.float32(x * np.float32(1.25) + np.float32(1e-3))


ALTERATIONS = [
    # id, run, iter, where ("data"/"diff"/history slot), blob, index, invariant, reported file
    ("sgd-data-1ulp", "sgd-step", 5, "data", "ip0/0", 4, "update-applied", "run_iter_5.caffemodel"),
    ("sgd-diff", "sgd-step", 5, "diff", "ip1/0", 2, "sgd-diff-is-history", "run_iter_5.caffemodel"),
    ("sgd-history", "sgd-step", 5, 2, "ip1/0", 3, "sgd-diff-is-history", "run_iter_5.solverstate"),
    ("nesterov-history", "nesterov-fixed", 6, 1, "ip0/1", 1, "nesterov-step", "run_iter_6.solverstate"),
    ("adagrad-history", "adagrad-fixed", 6, 0, "ip0/0", 7, "gradient-witness", "run_iter_6.solverstate"),
    ("adagrad-diff", "adagrad-step", 6, "diff", "ip2/0", 5, "gradient-witness", "run_iter_6.solverstate"),
    ("rmsprop-history", "rmsprop-exp", 9, 3, "ip2/0", 0, "gradient-witness", "run_iter_9.solverstate"),
    ("adadelta-history1", "adadelta-fixed", 4, 1, "ip0/1", 2, "gradient-witness", "run_iter_4.solverstate"),
    ("adadelta-history2", "adadelta-fixed", 4, 6, "ip0/1", 2, "gradient-witness", "run_iter_4.solverstate"),
    ("adam-m", "adam-exp", 6, 2, "ip1/0", 8, "adam-step", "run_iter_6.solverstate"),
    ("adam-v", "adam-exp", 6, 6, "ip0/1", 0, "gradient-witness", "run_iter_6.solverstate"),
    ("adam-diff", "adam-exp", 6, "diff", "ip2/0", 11, "adam-step", "run_iter_6.caffemodel"),
    ("frozen-blob", "adam-exp", 6, "data", "ip2/1", 1, "frozen-data", "run_iter_6.caffemodel"),
]


@pytest.mark.parametrize("case", ALTERATIONS, ids=[c[0] for c in ALTERATIONS])
def test_an_altered_value_is_reported_with_file_blob_and_index(case, tmp_path):
    _, name, k, where, blob, index, invariant, reported = case
    run = _copy_run(name, tmp_path, iters={k - 1, k, k + 1})
    snaps = run / "snapshots"
    clean = A.audit([snaps], solver=run / "solver.prototxt")
    assert clean.ok, clean.format_text()
    if isinstance(where, int):
        _alter_state(snaps / f"run_iter_{k}.solverstate", where, index, _scale)
    else:
        _alter_model(snaps / f"run_iter_{k}.caffemodel", blob, where, index, _up if where == "data" else _scale)
    report = A.audit([snaps], solver=run / "solver.prototxt")
    assert not report.ok and report.exit_code == 1
    row = report.row(invariant)
    assert row.status == "fail", report.format_text()
    first = row.failures[0]
    assert (first.blob, first.index) == (blob, index), str(first)
    assert reported in (Path(first.file).name + " " + first.message), str(first)
    assert f"run_iter_{k}" in Path(first.file).name
    assert f"FAIL {invariant}: run_iter_{k}" in report.format_text()


def test_nan_is_reported_by_finite(tmp_path):
    run = _copy_run("sgd-step", tmp_path, iters={3, 4})
    _alter_model(run / "snapshots" / "run_iter_4.caffemodel", "ip2/0", "data", 6, lambda x: np.float32("nan"))
    report = A.audit([run / "snapshots"], solver=run / "solver.prototxt")
    f = report.row("finite").failures[0]
    assert (Path(f.file).name, f.blob, f.field, f.index) == ("run_iter_4.caffemodel", "ip2/0", "data", 6)
    assert report.row("update-applied").status == "fail"


def test_current_step_is_checked_against_the_policy(tmp_path):
    run = _copy_run("sgd-multistep", tmp_path, iters={7, 8, 9})
    assert read_solverstate(run / "snapshots" / "run_iter_8.solverstate").current_step == 2
    _alter_state(run / "snapshots" / "run_iter_8.solverstate", current_step=1)
    report = A.audit([run / "snapshots"], solver=run / "solver.prototxt")
    row = report.row("current-step")
    assert row.status == "fail" and row.failed_cases == 1
    assert "current_step is 1" in row.failures[0].message and "leaves 2" in row.failures[0].message


def test_iter_must_match_the_file_name(tmp_path):
    run = _copy_run("sgd-step", tmp_path, iters={3, 4})
    _alter_state(run / "snapshots" / "run_iter_4.solverstate", iter=40)
    report = A.audit([run / "snapshots"])
    row = report.row("iter-matches-name")
    assert row.status == "fail"
    assert Path(row.failures[0].file).name == "run_iter_4.solverstate"
    assert "holds iter 40, its name says 4" in row.failures[0].message


def test_wrong_solver_type_fails_history_layout():
    run = FIXTURES / "caffe-runs"
    report = A.audit([run / "sgd-step" / "snapshots"], solver=run / "adam-exp" / "solver.prototxt")
    assert report.row("history-layout").status == "fail"
    assert "Adam keeps 2 x 5" in report.row("history-layout").failures[0].message


# ---------------------------------------------------------------------------
# the gradient witness against the reference kernels
# ---------------------------------------------------------------------------


def _gradients(rng, n):
    g = (rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-30, 12, n)).astype(np.float32)
    g[rng.random(n) < 0.05] = 0
    g[rng.random(n) < 0.02] = np.float32(1e-42)  # subnormal
    return g


def _one_update(typ, rng, n, lr, profile):
    from harness.kernels import update as K
    from harness.reference import get_profile

    p = get_profile(profile)
    f32, one = np.float32, np.float32(1)
    pro = (one, one, 0, f32(0))
    mu, delta, rho, b1, b2 = f32(0.9), f32(1e-8), f32(0.95), f32(0.9), f32(0.999)
    w = rng.standard_normal(n).astype(f32)
    h = _gradients(rng, n) if typ == "SGD" else np.abs(_gradients(rng, n))
    h2 = np.abs(_gradients(rng, n))
    hp, h2p, d = h.copy(), h2.copy(), _gradients(rng, n)
    fz = (p.fused, p.zero_fill)
    if typ == "SGD":
        K.sgd_update(w, d, h, *pro, lr, mu, *fz)
        code, c = KA.W_SGD, (mu, f32(0), f32(0), f32(0))
    elif typ == "AdaGrad":
        K.adagrad_update(w, d, h, *pro, lr, delta, *fz)
        code, c = KA.W_ADAGRAD, (delta, f32(0), f32(0), f32(0))
    elif typ == "RMSProp":
        K.rmsprop_update(w, d, h, *pro, lr, rho, one - rho, delta, *fz)
        code, c = KA.W_RMSPROP, (delta, one - rho, rho, f32(0))
    elif typ == "AdaDelta":
        K.adadelta_update(w, d, h, h2, *pro, lr, mu, one - mu, delta, *fz)
        code, c = KA.W_ADADELTA, (delta, one - mu, mu, f32(0))
    else:
        K.adam_update(w, d, h, h2, *pro, lr, b1, one - b1, b2, one - b2, delta, *fz)
        code, c = KA.W_ADAM, (one - b1, b1, one - b2, b2)

    def witness(h_k):
        out = np.empty(n, np.int8)
        with np.errstate(all="ignore"):
            KA.witness(code, d, h_k, hp, h2, h2p, lr, *c, *fz, out)
        return out

    return h, witness


WITNESS_CASES = [(t, p, lr) for t in ("SGD", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
                 for p in ("caffe-openblas", "separate-rounding") for lr in (0.01, 1.0, 0.0, 3.5)]


@pytest.mark.parametrize("typ,profile,lr", WITNESS_CASES, ids=[f"{t}-{p}-lr{lr}" for t, p, lr in WITNESS_CASES])
def test_witness_finds_the_gradient_of_every_reference_update(typ, profile, lr):
    rng = np.random.default_rng(WITNESS_CASES.index((typ, profile, lr)))
    h, witness = _one_update(typ, rng, 2000, np.float32(lr), profile)
    out = witness(h)
    assert np.count_nonzero(out == KA.WITNESS_FAILED) == 0
    assert np.count_nonzero(out == KA.WITNESS_OK) == out.size


@pytest.mark.parametrize("typ", ["AdaGrad", "RMSProp", "AdaDelta", "Adam"])
def test_witness_rejects_altered_histories(typ):
    rng = np.random.default_rng(7)
    h, witness = _one_update(typ, rng, 3000, np.float32(0.01), "caffe-openblas")
    altered = (h.view(np.int32) + 1000).view(np.float32)
    out = witness(altered)
    assert np.count_nonzero(out == KA.WITNESS_FAILED) >= MIN_DETECTION * out.size


def test_check_kernels_are_cached_against_this_update_py():
    # numba's cache keys a function on its own file only: kernels/audit.py pins the update.py it imports
    import hashlib

    from harness.kernels import update as KU

    current = hashlib.sha256(Path(KU.__file__).read_bytes()).hexdigest()
    assert KA._UPDATE_SHA256 == current, (
        f"harness/kernels/update.py changed: once these tests pass, set _UPDATE_SHA256 = {current!r} in "
        "harness/kernels/audit.py (until then its kernels compile afresh in every process)"
    )
    assert KA.CACHE is True


# ---------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------


def test_chunking_does_not_change_the_report():
    run = FIXTURES / "caffe-runs" / "rmsprop-step"
    a = A.audit([run / "snapshots"], solver=run / "solver.prototxt")
    b = A.audit([run / "snapshots"], solver=run / "solver.prototxt", chunk=3)
    assert a.to_dict() == b.to_dict()


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


def test_bad_files_are_input_errors(tmp_path):
    bad = FIXTURES / "formats" / "bad"
    for name, text in [("truncated.solverstate", "truncated"), ("corrupt.solverstate", "wire type 7")]:
        with pytest.raises(InputError, match=text) as e:
            A.audit([bad / name])
        assert e.value.path.endswith(name)
    with pytest.raises(InputError, match="is a caffemodel: give the .solverstate"):
        A.audit([bad / "garbage.caffemodel"])
    d = tmp_path / "s"
    d.mkdir()
    shutil.copy(FIXTURES / "caffe-runs" / "adam-exp" / "snapshots" / "run_iter_1.solverstate", d)
    shutil.copy(bad / "length-mismatch.caffemodel", d / "run_iter_1.caffemodel")
    with pytest.raises(InputError, match=r"blob ip0/0: 20 data values for shape 3x7 \(count 21\)"):
        A.audit([d])
    (d / "run_iter_1.caffemodel").unlink()
    with pytest.raises(InputError, match="its caffemodel is missing"):
        A.audit([d])


def test_sequence_errors(tmp_path):
    snaps = FIXTURES / "caffe-runs" / "sgd-step" / "snapshots"
    with pytest.raises(InputError, match="given twice"):
        A.audit([snaps / "run_iter_2.solverstate", snaps])
    with pytest.raises(InputError, match="no such file, folder or snapshot prefix"):
        A.audit([snaps / "nope"])
    with pytest.raises(InputError, match="no <prefix>_iter_N.solverstate files"):
        A.audit([tmp_path])
    d = tmp_path / "dup"
    d.mkdir()
    for f in ("run_iter_3.solverstate", "run_iter_3.caffemodel"):
        shutil.copy(snaps / f, d / f)
        shutil.copy(snaps / f, d / f.replace("run", "other"))
    with pytest.raises(InputError, match="holds snapshots of 2 prefixes"):
        A.audit([d])
    with pytest.raises(InputError, match="holds iter 3 like .*a duplicate snapshot iteration"):
        A.audit([d / "run_iter_3.solverstate", d / "other_iter_3.solverstate"])


def test_snapshots_of_another_net_are_refused(tmp_path):
    run = _copy_run("sgd-step", tmp_path, iters={3, 4})
    m = read_caffemodel(run / "snapshots" / "run_iter_4.caffemodel")
    m["ip1"][0].data = m["ip1"][0].data.reshape(5, 2)
    m["ip1"][0].diff = m["ip1"][0].diff.reshape(5, 2)
    write_caffemodel(run / "snapshots" / "run_iter_4.caffemodel", m, with_diff=True)
    with pytest.raises(InputError, match=r"blob ip1/0 has shape 5x2, but 2x5 in run_iter_3.caffemodel: a snapshot of another net"):
        A.audit([run / "snapshots"])
    other = FIXTURES / "caffe-runs" / "adam-exp" / "snapshots" / "run_iter_5.solverstate"
    with pytest.raises(InputError, match="has 10 history blobs, run_iter_3.solverstate has 5"):
        A.audit([run / "snapshots" / "run_iter_3.solverstate", other])


# ---------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------


def test_cli_exit_codes_and_formats(tmp_path, capsys):
    run = FIXTURES / "caffe-runs" / "nesterov-step"
    assert main(["audit", str(run / "snapshots"), "--solver", str(run / "solver.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "nesterov-step" in out and "all invariants hold" in out
    assert main(["audit", str(run / "snapshots" / "run"), "--solver", str(run / "solver.prototxt"),
                 "--profile", "separate-rounding", "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["type"] == "Nesterov"
    row = {r["id"]: r for r in doc["invariants"]}["nesterov-step"]
    assert row["status"] == "fail" and row["failures"][0]["file"].endswith(".caffemodel")
    assert row["failures"][0]["expected_bits"].startswith("0x")
    assert main(["audit", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("caffe-harness: error: ") and err.count("\n") == 1


def test_public_api():
    for name in A.__all__:
        assert hasattr(A, name), name
    assert set(A.SOLVER_INVARIANTS) <= set(A.INVARIANTS)
