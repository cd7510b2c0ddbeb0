"""`caffe-harness inspect`: tables per file, JSON, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.commands import inspect as inspect_cmd
from harness.io.blobs import Blob, read_caffemodel, write_caffemodel

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ROOT / "fixtures" / "formats"
ADAM = ROOT / "fixtures" / "caffe-runs" / "adam-exp"


def _run(capsys, *argv):
    code = main(["inspect", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_caffemodel_table(capsys):
    path = ADAM / "snapshots" / "run_iter_3.caffemodel"
    code, out, err = _run(capsys, path)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{path}: caffemodel (binary), 7 layers, 5 blobs"
    assert lines[1].split() == ["blob", "shape", "count", "min", "max", "mean", "NaN", "Inf"]
    names = [l.split()[0] + (" diff" if " diff " in l else "") for l in lines[2:]]
    assert names == [n for b in ("ip0/0", "ip0/1", "ip1/0", "ip2/0", "ip2/1") for n in (b, f"{b} diff")]
    w = read_caffemodel(path)["ip0"][0].data
    row = lines[2].split()
    assert row[:3] == ["ip0/0", "3x7", "21"]
    assert row[3:6] == [f"{w.min():.6g}", f"{w.max():.6g}", f"{w.astype(np.float64).mean():.6g}"]
    # aligned: every row has the same width up to the Inf column
    assert len({len(l) for l in lines[1:]}) == 1


def test_solverstate_and_hdf5(capsys):
    code, out, _ = _run(
        capsys,
        ADAM / "snapshots" / "run_iter_3.solverstate",
        FORMATS / "hdf5-adam" / "run_iter_2.solverstate.h5",
        FORMATS / "hdf5-sgd-nodiff" / "run_iter_1.caffemodel.h5",
    )
    assert code == 0
    blocks = out.split("\n\n")
    assert len(blocks) == 3
    assert blocks[0].splitlines()[0].endswith(
        'solverstate (binary), iter 3, current_step 0, 10 history blobs, learned_net "snapshots/run_iter_3.caffemodel"'
    )
    assert blocks[1].splitlines()[0].endswith(
        'solverstate (hdf5), iter 2, current_step 0, 10 history blobs, learned_net "snapshots/run_iter_2.caffemodel.h5"'
    )
    assert [l.split()[0] for l in blocks[0].splitlines()[2:]] == [f"history/{i}" for i in range(10)]
    assert "caffemodel (hdf5), 7 layers, 5 blobs" in blocks[2] and " diff" not in blocks[2]


def test_solver_and_net_prototxt(capsys):
    code, out, _ = _run(capsys, ADAM / "solver.prototxt", ADAM / "net.prototxt")
    assert code == 0
    solver, net = out.split("\n\n")
    rows = {l.split()[0]: l.split(None, 1)[1] for l in solver.splitlines()[2:]}
    assert rows["type"] == '"Adam"' and rows["base_lr"] == "0.02" and rows["solver_mode"] == "CPU"
    assert rows["delta"] == "1e-08"
    assert net.splitlines()[0].endswith('net prototxt "inject", 7 layers, 5 learnable blobs (TRAIN)')
    assert "0: lr_mult 1.5 decay_mult 1, 1: lr_mult 0 decay_mult 1" in net


def test_v1_net_is_shown_upgraded(capsys):
    code, out, _ = _run(capsys, FORMATS / "v1" / "net.prototxt")
    assert code == 0 and "InnerProduct" in out and "INNER_PRODUCT" not in out


def test_refused_net_exits_1(capsys):
    code, out, _ = _run(capsys, FORMATS / "nets" / "share-lr-mismatch" / "net.prototxt")
    assert code == 1
    assert out.rstrip().endswith("Caffe refuses this net at start: Shared param 'w' has mismatched lr_mult.")


def test_json_with_nan_and_inf(tmp_path, capsys):
    data = np.array([[1.0, np.nan, -np.inf], [np.inf, 2.0, -3.0]], dtype=np.float32)
    write_caffemodel(tmp_path / "m.caffemodel", {"a": [Blob(data, np.full(2 * 3, np.nan, np.float32).reshape(2, 3))]}, with_diff=True)
    code, out, _ = _run(capsys, "--format", "json", tmp_path / "m.caffemodel")
    assert code == 0
    doc = json.loads(out)
    (f,) = doc["files"]
    assert (f["kind"], f["format"], f["blob_count"]) == ("caffemodel", "binary", 1)
    a0, a0diff = f["blobs"]
    assert a0 == {"name": "a/0", "shape": [2, 3], "count": 6, "min": -3.0, "max": 2.0, "mean": 0.0, "nan": 1, "inf": 2}
    assert a0diff["name"] == "a/0 diff" and a0diff["nan"] == 6 and a0diff["min"] is None
    code, out, _ = _run(capsys, tmp_path / "m.caffemodel")
    row = out.splitlines()[2].split()
    assert row == ["a/0", "2x3", "6", "-3", "2", "0", "1", "2"]
    assert out.splitlines()[3].split()[-5:] == ["-", "-", "-", "6", "0"]


BAD = [
    ("truncated", FORMATS / "bad" / "truncated.caffemodel", "truncated: field 100 at byte 392"),
    ("truncated-state", FORMATS / "bad" / "truncated.solverstate", "truncated: field 3 at byte 506"),
    ("corrupt", FORMATS / "bad" / "corrupt.solverstate", "not a Caffe binary protobuf file (corrupt: invalid wire type 7 at byte 2)"),
    ("garbage", FORMATS / "bad" / "garbage.caffemodel", "not a Caffe binary protobuf file"),
    ("empty", FORMATS / "bad" / "empty.caffemodel", "file is empty"),
    ("empty-prototxt", FORMATS / "bad" / "empty.prototxt", "file is empty"),
    ("wrong-kind-hdf5", ADAM / "inject.h5", "HDF5 file is not a Caffe snapshot"),
    ("wrong-kind-npz", ADAM / "gradients.npz", "not a Caffe binary protobuf file"),
    ("length-mismatch", FORMATS / "bad" / "length-mismatch.caffemodel", "blob ip0/0: 20 data values for shape 3x7 (count 21)"),
    ("non-utf8", FORMATS / "bad" / "nonutf8.prototxt", "3:16: not UTF-8 text (byte 0xe9)"),
    ("typo", FORMATS / "bad" / "typo.prototxt", "3:1: unknown field 'momentun' in SolverParameter (did you mean 'momentum'?)"),
    ("missing", FORMATS / "bad" / "no-such.caffemodel", "no such file"),
]


@pytest.mark.parametrize("path,problem", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_exits_2_with_one_line(capsys, path, problem):
    code, out, err = _run(capsys, ADAM / "init.caffemodel", path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"caffe-harness: error: {path}")
    assert problem in err


def test_typo_in_net_is_reported_as_net_error(tmp_path, capsys):
    (tmp_path / "n.prototxt").write_text('name: "n"\nlayer {\n  name: "a"\n  tpye: "ReLU"\n}\n')
    code, _, err = _run(capsys, tmp_path / "n.prototxt")
    assert code == 2
    assert err.strip().endswith("n.prototxt:4:3: unknown field 'tpye' in LayerParameter (did you mean 'type'?)")


def test_public_api():
    assert set(inspect_cmd.__all__) == {"add_parser", "run", "inspect_file", "blob_stats"}
    for name in inspect_cmd.__all__:
        assert getattr(inspect_cmd, name).__doc__, name
