"""Caffe's weight and solver-state files: real snapshots, round trips, bad files; whole and streaming readers."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from harness.errors import InputError
from harness.io import blobs
from harness.io.blobs import (
    Blob,
    SolverStateData,
    blob_to_array,
    params_by_name,
    read_caffemodel,
    read_solverstate,
    scan_caffemodel,
    scan_solverstate,
    snapshot_kind,
    write_caffemodel,
    write_solverstate,
)
from harness.io.prototxt import parse_text
from harness.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
FORMATS = FIXTURES / "formats"
RUNS = sorted(p for p in ROOT.glob("fixtures/caffe-runs*/*") if (p / "snapshots").is_dir())
ADAM = ROOT / "fixtures" / "caffe-runs" / "adam-exp"
TWO_SLOTS = ("AdaDelta", "Adam")


def _iter_of(path: Path) -> int:
    return int(re.search(r"_iter_(\d+)\.", path.name).group(1))


def _expected_current_step(solver, k: int) -> int:
    """current_step after iteration k-1, as Caffe's GetLearningRate advances it."""
    if solver.lr_policy == "step":
        return (k - 1) // solver.stepsize
    step = 0
    if solver.lr_policy == "multistep":
        for it in range(k):
            if step < len(solver.stepvalue) and it >= solver.stepvalue[step]:
                step += 1
    return step


# -- every real snapshot ----------------------------------------------------------


@pytest.mark.parametrize("run", RUNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_snapshot_reads(run):
    solver = parse_text(run / "solver.prototxt", caffe_pb2.SolverParameter)
    slots = 2 if solver.type in TWO_SLOTS else 1
    states = sorted((run / "snapshots").glob("*.solverstate"), key=_iter_of)
    assert len(states) == solver.max_iter
    for state_path in states:
        k = _iter_of(state_path)
        weights = read_caffemodel(state_path.with_suffix(".caffemodel"))
        params = [b for bs in weights.values() for b in bs]
        assert params and all(b.data.dtype == np.float32 for b in params)
        assert all((b.diff is not None) == solver.snapshot_diff for b in params)
        state = read_solverstate(state_path)
        assert state.iter == k
        assert state.current_step == _expected_current_step(solver, k)
        assert state.learned_net == f"snapshots/run_iter_{k}.caffemodel"
        assert len(state.history) == slots * len(params)
        assert [h.shape for h in state.history] == [b.data.shape for b in params] * slots
        assert all(h.dtype == np.float32 for h in state.history)


def test_net_order_and_layers_without_blobs():
    w = read_caffemodel(ADAM / "snapshots" / "run_iter_3.caffemodel")
    assert list(w) == ["inject", "ip0", "s0", "ip1", "s1", "ip2", "s2"]
    assert [b.shape for b in w["ip0"]] == [(3, 7), (3,)] and w["s0"] == []
    assert list(params_by_name(w)) == ["ip0/0", "ip0/1", "ip1/0", "ip2/0", "ip2/1"]


def test_init_caffemodel_matches_gradients_npz_init():
    w = params_by_name(read_caffemodel(ADAM / "init.caffemodel"))
    with np.load(ADAM / "gradients.npz") as npz:
        for name, blob in w.items():
            np.testing.assert_array_equal(blob.data, npz[f"init/{name}"])


# -- HDF5 written by real Caffe ------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2])
def test_caffe_hdf5_snapshots_equal_its_binary_snapshots(k):
    h5 = read_caffemodel(FORMATS / "hdf5-adam" / f"run_iter_{k}.caffemodel.h5")
    binary = read_caffemodel(ADAM / "snapshots" / f"run_iter_{k}.caffemodel")
    assert sorted(h5) == sorted(binary) and list(h5) == sorted(h5)  # HDF5: name order
    for name, bs in binary.items():
        assert len(h5[name]) == len(bs)
        for a, b in zip(h5[name], bs):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.diff, b.diff)
    hs = read_solverstate(FORMATS / "hdf5-adam" / f"run_iter_{k}.solverstate.h5")
    bs = read_solverstate(ADAM / "snapshots" / f"run_iter_{k}.solverstate")
    assert (hs.iter, hs.current_step, hs.learned_net) == (k, 0, f"snapshots/run_iter_{k}.caffemodel.h5")
    assert len(hs.history) == len(bs.history) == 10
    for a, b in zip(hs.history, bs.history):
        np.testing.assert_array_equal(a, b)


def test_caffe_hdf5_without_diff():
    w = read_caffemodel(FORMATS / "hdf5-sgd-nodiff" / "run_iter_1.caffemodel.h5")
    assert [b.diff for bs in w.values() for b in bs] == [None] * 5
    assert len(read_solverstate(FORMATS / "hdf5-sgd-nodiff" / "run_iter_1.solverstate.h5").history) == 5


# -- legacy 4-D V1 caffemodel ------------------------------------------------------------


def test_legacy_v1_caffemodel_reads_as_caffe_loads_it():
    legacy = read_caffemodel(FORMATS / "v1" / "legacy.caffemodel")
    assert [b.shape for b in legacy["ip0"]] == [(1, 1, 3, 7), (1, 1, 1, 3)]  # Caffe's FromProto: 4-D
    upgraded = read_caffemodel(FORMATS / "v1" / "legacy.upgraded.caffemodel")  # Caffe's upgrade tool output
    loaded = read_caffemodel(FORMATS / "v1" / "loaded" / "run_iter_1.caffemodel")  # what Caffe's net then held
    for name, bs in legacy.items():
        for a, b, c in zip(bs, upgraded[name], loaded[name]):
            np.testing.assert_array_equal(a.data, b.data)
            np.testing.assert_array_equal(a.data.reshape(c.data.shape), c.data)


# -- protobuf details ----------------------------------------------------------------


def test_double_data_is_preferred_like_caffe():
    msg = caffe_pb2.BlobProto(data=[9.0, 9.0], double_data=[0.1, 1e-50])
    msg.shape.dim.extend([2])
    got = blob_to_array(msg, source="x.caffemodel", name="l/0")
    np.testing.assert_array_equal(got, np.array([0.1, 1e-50]).astype(np.float32))
    assert got.dtype == np.float32
    assert blob_to_array(msg, name="l/0", field="diff") is None


def test_legacy_dims_take_precedence_over_shape():
    msg = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=1, data=[1, 2])
    msg.shape.dim.extend([2])
    assert blob_to_array(msg).shape == (1, 1, 2, 1)


@pytest.mark.parametrize(
    "kwargs,problem",
    [
        (dict(data=[1.0, 2.0], dims=[3]), "blob l/0: 2 data values for shape 3 (count 3)"),
        (dict(data=[1.0, 2.0, 3.0], diff=[1.0], dims=[3]), "blob l/0: 1 diff values for shape 3 (count 3)"),
        (dict(double_data=[1.0], dims=[2]), "blob l/0: 1 double_data values for shape 2 (count 2)"),
        (dict(data=[], dims=[2, -1]), "blob l/0: negative dimension in shape 2x-1"),
    ],
    ids=["data", "diff", "double", "negative"],
)
def test_blob_length_mismatch(kwargs, problem):
    dims = kwargs.pop("dims")
    msg = caffe_pb2.BlobProto(**kwargs)
    msg.shape.dim.extend(dims)
    with pytest.raises(InputError) as e:
        blob_to_array(msg, source="m.caffemodel", name="l/0", field="diff" if "diff" in kwargs else "data")
    assert str(e.value) == f"m.caffemodel: {problem}"


def test_both_layer_forms_are_refused(tmp_path):
    net = caffe_pb2.NetParameter()
    net.layer.add(name="a")
    net.layers.add(name="b")
    (tmp_path / "m.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(InputError, match="both 'layer' and V1 'layers'"):
        read_caffemodel(tmp_path / "m.caffemodel")


# -- round trips ---------------------------------------------------------------------


def _weights(with_diff: bool) -> dict[str, list[Blob]]:
    rng = np.random.default_rng(7)
    def blob(*shape):
        d = rng.standard_normal(shape).astype(np.float32)
        return Blob(d, (d * 0.5 - 1).astype(np.float32) if with_diff else None)
    w = {"data": [], "conv1": [blob(4, 3, 2, 2), blob(4)], "ip": [blob(5, 16)], "bn": [blob(4), blob(4), blob(1)]}
    w["ip"][0].data[0, :3] = [np.nan, np.inf, -0.0]
    return w


@pytest.mark.parametrize("suffix", [".caffemodel", ".caffemodel.h5"])
@pytest.mark.parametrize("with_diff", [False, True], ids=["data", "data+diff"])
def test_caffemodel_round_trip(tmp_path, suffix, with_diff):
    w = _weights(with_diff=True)
    path = tmp_path / f"m{suffix}"
    write_caffemodel(path, w, with_diff=with_diff, name="net")
    back = read_caffemodel(path)
    assert (list(back) if suffix == ".caffemodel" else sorted(back)) == (list(w) if suffix == ".caffemodel" else sorted(w))
    for name, bs in w.items():
        assert len(back[name]) == len(bs)
        for a, b in zip(bs, back[name]):
            np.testing.assert_array_equal(a.data.view(np.uint32), b.data.view(np.uint32))  # bits, NaN and -0 too
            if with_diff:
                np.testing.assert_array_equal(a.diff, b.diff)
            else:
                assert b.diff is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind


def test_binary_caffemodel_is_loadable_layout():
    # one `layer { name blobs { data diff shape } }` per entry, as Caffe's CopyTrainedLayersFrom expects
    w = read_caffemodel(ADAM / "init.caffemodel")
    raw_ours = caffe_pb2.NetParameter()
    import tempfile, os
    with tempfile.TemporaryDirectory() as tmp:
        write_caffemodel(os.path.join(tmp, "x.caffemodel"), w, name="inject")
        raw_ours.ParseFromString(Path(tmp, "x.caffemodel").read_bytes())
    theirs = caffe_pb2.NetParameter.FromString((ADAM / "init.caffemodel").read_bytes())
    assert [(l.name, len(l.blobs)) for l in raw_ours.layer] == [(l.name, len(l.blobs)) for l in theirs.layer]
    for a, b in zip(raw_ours.layer, theirs.layer):
        for x, y in zip(a.blobs, b.blobs):
            assert x.SerializeToString() == y.SerializeToString()


def test_solverstate_binary_is_byte_identical_to_caffes(tmp_path):
    for src in sorted((ADAM / "snapshots").glob("*.solverstate"))[:3]:
        state = read_solverstate(src)
        write_solverstate(tmp_path / "s.solverstate", state)
        assert (tmp_path / "s.solverstate").read_bytes() == src.read_bytes()


def test_solverstate_hdf5_has_caffes_layout(tmp_path):
    caffe_file = FORMATS / "hdf5-adam" / "run_iter_2.solverstate.h5"
    state = read_solverstate(caffe_file)
    ours = tmp_path / "run_iter_2.solverstate.h5"
    write_solverstate(ours, state)

    def layout(path):
        out = {}
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):
                    t = obj.id.get_type()
                    strpad = t.get_strpad() if isinstance(t, h5py.h5t.TypeStringID) else None
                    out[name] = (obj.shape, obj.dtype.str, strpad, obj[()].tobytes())
                else:
                    out[name] = "group"
            f.visititems(visit)
        return out

    assert layout(ours) == layout(caffe_file)


@pytest.mark.parametrize("suffix", [".solverstate", ".solverstate.h5"])
def test_solverstate_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(3)
    hist = [rng.standard_normal(s).astype(np.float32) for s in [(3, 7), (3,), (2, 5), ()]]
    state = SolverStateData(iter=12, current_step=2, learned_net="snap/x_iter_12.caffemodel", history=hist)
    write_solverstate(tmp_path / f"s{suffix}", state)
    back = read_solverstate(tmp_path / f"s{suffix}")
    assert (back.iter, back.current_step, back.learned_net) == (12, 2, "snap/x_iter_12.caffemodel")
    assert len(back.history) == 4
    for a, b in zip(hist, back.history):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a, b)


# -- bad input -----------------------------------------------------------------------

BAD = [
    ("empty.caffemodel", read_caffemodel, "file is empty"),
    ("truncated.caffemodel", read_caffemodel, "truncated: field 100 at byte 392 runs past the end of the file (415 bytes)"),
    ("truncated.solverstate", read_solverstate, "truncated: field 3 at byte 506 runs past the end of the file (526 bytes)"),
    ("corrupt.solverstate", read_solverstate, "not a Caffe binary protobuf file (corrupt: invalid wire type 7 at byte 2)"),
    ("garbage.caffemodel", read_caffemodel, "not a Caffe binary protobuf file (corrupt: field number 0 at byte 0)"),
    ("length-mismatch.caffemodel", read_caffemodel, "blob ip0/0: 20 data values for shape 3x7 (count 21)"),
    ("typo.prototxt", read_caffemodel, "is a text file (a prototxt?), expected a binary protobuf snapshot"),
    ("nonutf8.prototxt", read_solverstate, "is a text file (a prototxt?), expected a binary protobuf snapshot"),
]


@pytest.mark.parametrize("name,reader,problem", BAD, ids=[b[0] for b in BAD])
def test_bad_files(name, reader, problem):
    path = FORMATS / "bad" / name
    with pytest.raises(InputError) as e:
        reader(path)
    assert str(e.value) == f"{path}: {problem}"


WRONG_KIND = [
    (ADAM / "snapshots" / "run_iter_1.solverstate", read_caffemodel, "is a solver state (.solverstate), expected a caffemodel (net weights)"),
    (ADAM / "snapshots" / "run_iter_1.caffemodel", read_solverstate, "is a caffemodel (net weights), expected a solver state (.solverstate)"),
    (FORMATS / "hdf5-adam" / "run_iter_1.solverstate.h5", read_caffemodel, "is a solver state (.solverstate), expected a caffemodel (net weights)"),
    (FORMATS / "hdf5-adam" / "run_iter_1.caffemodel.h5", read_solverstate, "is a caffemodel (net weights), expected a solver state (.solverstate)"),
    (ADAM / "inject.h5", read_caffemodel, "HDF5 file is not a Caffe snapshot (no /data group, no iter/history; it holds c0, c1, c2, x0, x1, x2)"),
    (ADAM / "gradients.npz", read_caffemodel, "not a Caffe binary protobuf file (corrupt: field number 0 at byte 2)"),
]


@pytest.mark.parametrize("path,reader,problem", WRONG_KIND, ids=lambda v: getattr(v, "name", None) or getattr(v, "__name__", "msg"))
def test_wrong_kind_of_file(path, reader, problem):
    with pytest.raises(InputError) as e:
        reader(path)
    assert str(e.value) == f"{path}: {problem}"


def test_snapshot_kind():
    assert snapshot_kind(ADAM / "init.caffemodel") == "caffemodel"
    assert snapshot_kind(ADAM / "snapshots" / "run_iter_4.solverstate") == "solverstate"
    assert snapshot_kind(FORMATS / "hdf5-adam" / "run_iter_1.solverstate.h5") == "solverstate"


def test_truncated_hdf5(tmp_path):
    raw = (FORMATS / "hdf5-adam" / "run_iter_1.caffemodel.h5").read_bytes()
    (tmp_path / "t.caffemodel.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"t\.caffemodel\.h5: truncated or corrupt HDF5 file"):
        read_caffemodel(tmp_path / "t.caffemodel.h5")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_caffemodel(tmp_path / "nope.caffemodel")
    with pytest.raises(InputError, match="is a directory"):
        read_solverstate(tmp_path)


# ---------------------------------------------------------------------------
# streaming: the index reads what the whole readers read
# ---------------------------------------------------------------------------

MODELS = [
    FIXTURES / "caffe-runs" / "adam-exp" / "snapshots" / "run_iter_3.caffemodel",
    FIXTURES / "caffe-runs" / "adam-exp" / "init.caffemodel",
    FIXTURES / "formats" / "hdf5-adam" / "run_iter_2.caffemodel.h5",
    FIXTURES / "formats" / "hdf5-sgd-nodiff" / "run_iter_1.caffemodel.h5",
    FIXTURES / "formats" / "v1" / "legacy.caffemodel",
    FIXTURES / "formats" / "v1" / "legacy.upgraded.caffemodel",
]
STATES = [
    FIXTURES / "caffe-runs" / "adadelta-exp" / "snapshots" / "run_iter_5.solverstate",
    FIXTURES / "formats" / "hdf5-adam" / "run_iter_2.solverstate.h5",
    FIXTURES / "formats" / "hdf5-sgd-nodiff" / "run_iter_1.solverstate.h5",
]


def _bits(a):
    return None if a is None else np.asarray(a, np.float32).reshape(-1).view(np.uint32)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scan_caffemodel_reads_the_same_values(path):
    full = read_caffemodel(path)
    lazy = scan_caffemodel(path)
    assert list(full) == list(lazy)
    for layer, blobs in full.items():
        assert len(blobs) == len(lazy[layer])
        for b, r in zip(blobs, lazy[layer]):
            assert b.shape == r.shape
            for which in ("data", "diff"):
                want = getattr(b, which)
                assert (getattr(r, which) is None) == (want is None)
                if want is not None:
                    got = np.concatenate([r.read(which, a, min(a + 4, r.count)) for a in range(0, r.count, 4)])
                    assert np.array_equal(_bits(got), _bits(want))


@pytest.mark.parametrize("path", STATES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_scan_solverstate_reads_the_same_values(path):
    full = read_solverstate(path)
    lazy = scan_solverstate(path)
    assert (lazy.iter, lazy.current_step, lazy.learned_net) == (full.iter, full.current_step, full.learned_net)
    assert len(lazy.history) == len(full.history)
    for h, r in zip(full.history, lazy.history):
        assert r.shape == h.shape
        assert np.array_equal(_bits(r.read("data", 0, r.count)), _bits(h))


def test_double_data_and_unpacked_values_are_read(tmp_path):
    from harness.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    layer = net.layer.add()
    layer.name = "ip"
    b = layer.blobs.add()
    b.shape.dim.extend([2, 3])
    b.double_data.extend([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    b2 = layer.blobs.add()
    b2.shape.dim.extend([2])
    b2.data.extend([1.5, -2.5])
    raw = bytearray(net.SerializeToString())
    path = tmp_path / "x.caffemodel"
    path.write_bytes(bytes(raw))
    lazy = scan_caffemodel(path)
    assert np.array_equal(_bits(lazy["ip"][0].read("data", 0, 6)), _bits(np.float64([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])))
    # the same blob with its floats unpacked (one tag per value): decoded through protobuf
    unpacked = b"".join(bytes([0x2D]) + np.float32(v).tobytes() for v in (1.5, -2.5))
    blob = bytes([0x3A, 2, 0x08, 2]) + unpacked
    layer_msg = bytes([0x0A, 2]) + b"ip" + bytes([0x3A, len(blob)]) + blob
    path.write_bytes(bytes([0xA2, 0x06, len(layer_msg)]) + layer_msg)
    lazy = scan_caffemodel(path)
    assert np.array_equal(lazy["ip"][0].read("data", 0, 2), np.float32([1.5, -2.5]))


def test_chunked_compressed_hdf5_is_read_whole_per_blob(tmp_path):
    import h5py

    src = FIXTURES / "formats" / "hdf5-adam" / "run_iter_2.caffemodel.h5"
    dst = tmp_path / "run_iter_2.caffemodel.h5"
    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for group in ("data", "diff"):
            for layer in f[group]:
                for i in f[group][layer]:
                    g.create_dataset(f"{group}/{layer}/{i}", data=f[group][layer][i][()], chunks=True,
                                     compression="gzip")
    full = read_caffemodel(src)
    lazy = scan_caffemodel(dst)
    assert [k for k, v in full.items() if v] == list(lazy)
    for layer, refs in lazy.items():
        for b, r in zip(full[layer], refs):
            assert isinstance(r.data, blobs._Loaded)
            assert np.array_equal(_bits(r.read("data", 0, r.count)), _bits(b.data))
            assert np.array_equal(_bits(r.read("diff", 1, r.count)), _bits(b.diff)[1:])
            r.release()


def test_streaming_readers_refuse_bad_files():
    bad = FIXTURES / "formats" / "bad"
    with pytest.raises(InputError, match="file is empty"):
        scan_caffemodel(bad / "empty.caffemodel")
    with pytest.raises(InputError, match="is a solver state"):
        scan_caffemodel(FIXTURES / "caffe-runs" / "adam-exp" / "snapshots" / "run_iter_1.solverstate")
    with pytest.raises(InputError, match="is a text file"):
        scan_solverstate(FIXTURES / "caffe-runs" / "adam-exp" / "solver.prototxt")


STREAMING = {read_caffemodel: scan_caffemodel, read_solverstate: scan_solverstate}


@pytest.mark.parametrize("name,reader,problem", BAD, ids=[b[0] for b in BAD])
def test_bad_files_streaming(name, reader, problem):
    path = FORMATS / "bad" / name
    with pytest.raises(InputError) as e:
        STREAMING[reader](path)
    assert str(e.value) == f"{path}: {problem}"


@pytest.mark.parametrize("path,reader,problem", WRONG_KIND, ids=lambda v: getattr(v, "name", None) or getattr(v, "__name__", "msg"))
def test_wrong_kind_of_file_streaming(path, reader, problem):
    with pytest.raises(InputError) as e:
        STREAMING[reader](path)
    assert str(e.value) == f"{path}: {problem}"


def _h5_model(path, edit):
    """A copy of hdf5-adam's run_iter_2 caffemodel with ``edit(h5py.File)`` applied."""
    src = FORMATS / "hdf5-adam" / "run_iter_2.caffemodel.h5"
    path.write_bytes(src.read_bytes())
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(f, name, value):
    del f[name]
    f[name] = value


H5_LAYOUT = [
    ("layer-is-dataset", lambda f: _replace(f, "data/ip0", np.zeros(3, np.float32)),
     "/data/ip0 is a dataset, expected a group of blobs"),
    ("diff-layer-is-dataset", lambda f: _replace(f, "diff/ip0", np.zeros(3, np.float32)),
     "/diff/ip0 is a dataset, expected a group of blobs"),
    ("blob-not-numbered", lambda f: f["data/ip0"].move("1", "bias"), "/data/ip0/bias: expected datasets named 0, 1, 2, ..."),
    ("blob-is-group", lambda f: (f["data/ip0"].pop("1"), f["data/ip0"].create_group("1")),
     "/data/ip0/1 is a group, expected a dataset"),
    ("string-blob", lambda f: _replace(f, "data/ip0/1", np.array([b"a", b"b", b"c"])),
     "/data/ip0/1: unsupported HDF5 data type |S1 (Caffe reads float or integer)"),
    ("diff-shape", lambda f: _replace(f, "diff/ip0/0", np.zeros((7, 3), np.float32)),
     "blob ip0/0: data shape 3x7 differs from diff shape 7x3"),
]


@pytest.mark.parametrize("edit,problem", [c[1:] for c in H5_LAYOUT], ids=[c[0] for c in H5_LAYOUT])
def test_hdf5_layout_errors_are_the_same_for_both_readers(tmp_path, edit, problem):
    path = _h5_model(tmp_path / "m.caffemodel.h5", edit)
    for reader in (read_caffemodel, scan_caffemodel):
        with pytest.raises(InputError) as e:
            reader(path)
        assert str(e.value) == f"{path}: {problem}", reader.__name__


def test_hdf5_history_gap_is_the_same_for_both_readers(tmp_path):
    path = tmp_path / "s.solverstate.h5"
    path.write_bytes((FORMATS / "hdf5-adam" / "run_iter_2.solverstate.h5").read_bytes())
    with h5py.File(path, "r+") as f:
        del f["history/3"]
    for reader in (read_solverstate, scan_solverstate):
        with pytest.raises(InputError) as e:
            reader(path)
        assert str(e.value) == f"{path}: /history/3 is missing (9 history blobs)", reader.__name__


def test_public_api():
    assert set(blobs.__all__) == {
        "Blob", "SolverStateData", "blob_to_array", "read_caffemodel", "read_solverstate",
        "write_caffemodel", "write_solverstate", "params_by_name", "snapshot_kind",
        "BlobRef", "StateRef", "scan_caffemodel", "scan_solverstate",
    }
    for name in blobs.__all__:
        assert getattr(blobs, name).__doc__, name
