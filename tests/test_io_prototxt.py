"""Strict text protobuf reading: Caffe's refusals become one-line InputErrors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.errors import InputError
from harness.io import prototxt
from harness.io.prototxt import parse_text, parse_text_string
from harness.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
RUNS = sorted(p for p in ROOT.glob("fixtures/caffe-runs*/*") if (p / "solver.prototxt").is_file())

# (id, text, expected "line:col: problem" after the source)
BAD_SOLVERS = [
    ("typo", "base_lr: 0.1\nmomentun: 0.9\n", "2:1: unknown field 'momentun' in SolverParameter (did you mean 'momentum'?)"),
    ("unknown-no-hint", "zzz: 1\n", "1:1: unknown field 'zzz' in SolverParameter"),
    ("nested-typo", 'train_state { phase: TRAIN levle: 1 }', "1:28: unknown field 'levle' in NetState (did you mean 'level'?)"),
    ("bad-float", "base_lr: 0.1\n  momentum: abc\n", "2:13: couldn't parse float: abc"),
    ("unquoted-string", 'type: "SGD"\nlr_policy: fixed\n', "2:12: expected string but found: 'fixed'"),
    ("duplicate", "base_lr: 0.1 base_lr: 0.2", "1:23: field 'base_lr' of SolverParameter is given more than once (it is not repeated)"),
    ("bad-enum", "solver_mode: XPU", "1:14: unknown value XPU for SolverParameter.SolverMode"),
    ("int-as-float", "max_iter: 1e3", "1:11: couldn't parse integer: 1e3"),
    ("out-of-range", "max_iter: 99999999999", "1:11: value out of range: 99999999999"),
    ("unclosed", "train_state { phase: TRAIN\n", None),
]


@pytest.mark.parametrize("text,expected", [b[1:] for b in BAD_SOLVERS], ids=[b[0] for b in BAD_SOLVERS])
def test_bad_solver_text(text, expected):
    with pytest.raises(InputError) as e:
        parse_text_string(text, caffe_pb2.SolverParameter, source="s.prototxt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("s.prototxt:")
    if expected is not None:
        assert msg == f"s.prototxt:{expected}"


@pytest.mark.parametrize("run", RUNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_solver_and_net_files_parse(run):
    solver = parse_text(run / "solver.prototxt", caffe_pb2.SolverParameter)
    assert solver.net == "net.prototxt" and solver.snapshot == 1
    assert solver.type in ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
    net = parse_text(run / "net.prototxt", caffe_pb2.NetParameter)
    assert net.layer[0].type == "HDF5Data"


def test_floats_are_float32_like_caffe():
    s = parse_text_string("base_lr: 0.1 delta: 1e-8", caffe_pb2.SolverParameter)
    assert s.base_lr == float(np.float32(0.1)) and s.delta == float(np.float32(1e-8))


def test_allow_unknown_fields_skips_them():
    s = parse_text_string("base_lr: 0.5 foo { a: 1 } bar: 'x'", caffe_pb2.SolverParameter, allow_unknown_fields=True)
    assert s.base_lr == 0.5


def test_skip_unknown_blanks_only_accepted_fields_and_keeps_positions():
    text = (
        "layer {\n"
        '  name: "a" crop_param { axis: 2 offset: [1, 2] # } in a comment\n'
        '    note: "}" }\n'
        '  odd_param: "x" "y"; other_param: 3\n'
        '  type: "Crop"\n'
        "}\n"
        'layer { name: "b" typo: 1 }\n'
    )
    accepted = []

    def skip(message, field):
        accepted.append((message, field))
        return field.endswith("_param")

    with pytest.raises(InputError) as e:
        parse_text_string(text, caffe_pb2.NetParameter, source="n.prototxt", skip_unknown=skip)
    assert str(e.value) == "n.prototxt:7:19: unknown field 'typo' in LayerParameter (did you mean 'type'?)"
    assert accepted == [("LayerParameter", f) for f in ("crop_param", "odd_param", "other_param", "typo")]
    net = parse_text_string(text.replace("typo: 1", ""), caffe_pb2.NetParameter, skip_unknown=skip)
    assert [(l.name, l.type) for l in net.layer] == [("a", "Crop"), ("b", "")]


def test_empty_text_and_comment_only_text():
    with pytest.raises(InputError, match="text is empty"):
        parse_text_string(" \n", caffe_pb2.SolverParameter)
    with pytest.raises(InputError, match="sets no field of SolverParameter"):
        parse_text_string("# nothing\n", caffe_pb2.SolverParameter, source="c.prototxt")


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"", "e.prototxt: file is empty"),
        (b"  \n\n", "e.prototxt: file is empty"),
        (b"base_lr: 0.1\nlr_policy: \"fix\xe9d\"\n", "e.prototxt:2:16: not UTF-8 text (byte 0xe9); is this a binary file?"),
        (b"\x08\x01\x12\x00", "e.prototxt:1: contains NUL bytes; is this a binary file?"),
    ],
    ids=["empty", "blank", "latin-1", "binary"],
)
def test_bad_files(tmp_path, monkeypatch, content, expected):
    monkeypatch.chdir(tmp_path)
    Path("e.prototxt").write_bytes(content)
    with pytest.raises(InputError) as e:
        parse_text("e.prototxt", caffe_pb2.SolverParameter)
    assert str(e.value) == expected


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        parse_text(tmp_path / "nope.prototxt", caffe_pb2.SolverParameter)
    with pytest.raises(InputError, match="is a directory"):
        parse_text(tmp_path, caffe_pb2.SolverParameter)


def test_public_api():
    assert set(prototxt.__all__) == {"parse_text", "parse_text_string", "read_text_file"}
    for name in prototxt.__all__:
        assert getattr(prototxt, name).__doc__
