"""Caffe's weight and solver-state files, binary protobuf and HDF5.

``.caffemodel``      a ``NetParameter`` whose layers carry their blobs
``.caffemodel.h5``   ``/data/<layer>/<i>`` (and ``/diff/<layer>/<i>`` when
                     Caffe snapshots with ``snapshot_diff``)
``.solverstate``     a ``SolverState``: ``iter``, ``learned_net``,
                     ``history`` blobs, ``current_step``
``.solverstate.h5``  datasets ``iter``, ``current_step`` (int, shape (1,)),
                     ``learned_net`` (string) and ``/history/<i>``

Readers decide binary or HDF5 from the file's content (Caffe sniffs
caffemodels the same way), writers from the ``.h5`` suffix, as Caffe names
them. Every bad file (missing, empty, truncated, corrupt, the other kind of
snapshot, a blob whose length does not match its shape) raises one
:class:`InputError` naming the file and, where known, the blob.

Blob shapes follow Caffe's ``Blob::FromProto``: ``shape`` when set, else the
legacy ``(num, channels, height, width)`` — always 4-D, as Caffe reshapes
(so a legacy InnerProduct weight reads as ``(1, 1, M, N)``); ``double_data``
wins over ``data`` when present. Values are float32, as Caffe's float build
holds them.

HDF5 caffemodels do not record the net's layer order: their layers come back
in HDF5's name order, the order Caffe itself iterates them in.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..proto import caffe_pb2

__all__ = [
    "Blob",
    "SolverStateData",
    "blob_to_array",
    "read_caffemodel",
    "read_solverstate",
    "write_caffemodel",
    "write_solverstate",
    "params_by_name",
    "snapshot_kind",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(eq=False)
class Blob:
    """One Caffe blob: ``data`` (float32, shaped) and ``diff`` (same shape, or None).

    ``data`` is None only for a weight-shared blob in an HDF5 caffemodel: Caffe
    stores a shared parameter's values once, under the layer that owns it, and
    writes only the diff for the others.
    """

    data: np.ndarray | None
    diff: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The blob's shape (from ``data``, else from ``diff``)."""
        a = self.data if self.data is not None else self.diff
        return () if a is None else tuple(int(d) for d in a.shape)

    @property
    def count(self) -> int:
        """Number of values (Caffe's ``count()``)."""
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(eq=False)
class SolverStateData:
    """A solver snapshot: ``iter``, ``current_step``, ``learned_net`` and ``history``.

    ``history`` holds the solver's history blobs in Caffe's order: one per
    learnable blob in net order, and for AdaDelta and Adam a second run of
    them (all first slots, then all second slots).
    """

    iter: int
    current_step: int = 0
    learned_net: str = ""
    history: list[np.ndarray] = field(default_factory=list)


# ---------------------------------------------------------------------------
# blobs
# ---------------------------------------------------------------------------


def _shape_of(msg, *, source, name) -> tuple[int, ...]:
    if msg.HasField("num") or msg.HasField("channels") or msg.HasField("height") or msg.HasField("width"):
        shape = (msg.num, msg.channels, msg.height, msg.width)
    else:
        shape = tuple(int(d) for d in msg.shape.dim)
    for d in shape:
        if d < 0:
            raise InputError(source, f"blob {name}: negative dimension in shape {_fmt_shape(shape)}")
    return shape


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "()"


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def blob_to_array(msg, *, source: str | os.PathLike = "<blob>", name: str = "?", field: str = "data") -> np.ndarray | None:
    """The float32 array of a ``BlobProto``'s ``data`` (or ``diff``), shaped as Caffe does.

    ``field`` is ``"data"`` or ``"diff"``; ``double_data``/``double_diff``
    are preferred when present, like Caffe's ``FromProto``. A diff that is
    absent gives None. A value count that differs from the shape's count
    raises :class:`InputError` naming ``source`` and the blob ``name``.
    """
    if field not in ("data", "diff"):
        raise ValueError(f"field must be 'data' or 'diff', got {field!r}")
    source = os.fspath(source)
    shape = _shape_of(msg, source=source, name=name)
    count = _count(shape)
    doubles = getattr(msg, "double_" + field)
    floats = getattr(msg, field)
    if len(doubles):
        values, kind = doubles, "double_" + field
    elif len(floats) or field == "data":
        values, kind = floats, field
    else:
        return None
    if len(values) != count:
        raise InputError(
            source, f"blob {name}: {len(values)} {kind} values for shape {_fmt_shape(shape)} (count {count})"
        )
    if kind.startswith("double_"):
        arr = np.asarray(values, dtype=np.float64).astype(np.float32)
    else:
        arr = np.asarray(values, dtype=np.float32)
    return arr.reshape(shape)


def _blob_from_proto(msg, *, source, name) -> Blob:
    return Blob(
        blob_to_array(msg, source=source, name=name, field="data"),
        blob_to_array(msg, source=source, name=name, field="diff"),
    )


def params_by_name(weights: Mapping[str, Sequence[Blob]]) -> dict[str, Blob]:
    """Flatten ``{layer: [blobs]}`` into ``{"<layer>/<index>": blob}`` in the same order."""
    out: dict[str, Blob] = {}
    for layer, blobs in weights.items():
        for i, b in enumerate(blobs):
            out[f"{layer}/{i}"] = b
    return out


# ---------------------------------------------------------------------------
# reading: sniffing and wire-level checks
# ---------------------------------------------------------------------------


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(path, "no such file") from None
    except IsADirectoryError:
        raise InputError(path, "is a directory, expected a file") from None
    except PermissionError:
        raise InputError(path, "permission denied") from None
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror or e}") from None
    if not raw:
        raise InputError(path, "file is empty")
    return raw


class _WireError(Exception):
    pass


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if i >= n:
            raise _WireError(f"truncated: varint runs past the end at byte {i}")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift >= 70:
            raise _WireError(f"corrupt: varint longer than 10 bytes at byte {i}")


def _top_level_fields(buf: bytes) -> list[tuple[int, int]]:
    """(field number, wire type) of every top-level field, checking lengths fit."""
    out = []
    i, n = 0, len(buf)
    while i < n:
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError(f"corrupt: field number 0 at byte {start}")
        if wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            length, i = _varint(buf, i)
            i += length
        elif wire == 5:
            i += 4
        else:
            raise _WireError(f"corrupt: invalid wire type {wire} at byte {start}")
        if i > n:
            raise _WireError(f"truncated: field {number} at byte {start} runs past the end of the file ({n} bytes)")
        out.append((number, wire))
    return out


_STATE_WIRE = {1: 0, 2: 2, 3: 2, 4: 0}
_NET_WIRE = {1: {2}, 2: {2}, 3: {2}, 4: {0, 2}, 5: {0}, 6: {2}, 7: {0}, 8: {2}, 100: {2}}


def _classify(fields: list[tuple[int, int]]) -> str | None:
    numbers = {n for n, _ in fields}
    state_ok = all(_STATE_WIRE.get(n) == w for n, w in fields)
    net_ok = all(w in _NET_WIRE.get(n, ()) for n, w in fields)
    if state_ok and (1 in numbers or 4 in numbers or not net_ok):
        return "solverstate"
    if net_ok:
        return "caffemodel"
    return None


def _looks_like_text(raw: bytes) -> bool:
    """Mostly printable ASCII in the first 4 KiB: a prototxt or log, not a snapshot."""
    head = raw[:4096]
    printable = sum(1 for b in head if 32 <= b < 127 or b in (9, 10, 13))
    return printable >= 0.95 * len(head)


def snapshot_kind(path: str | os.PathLike) -> str:
    """What a weights/state file holds: ``"caffemodel"`` or ``"solverstate"``.

    Works for binary and HDF5 files; anything else raises :class:`InputError`.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if raw.startswith(HDF5_SIGNATURE):
        with _open_h5(path) as f:
            return _h5_kind(f, path)
    return _binary_kind(raw, path)


def _binary_kind(raw: bytes, path: str) -> str:
    try:
        fields = _top_level_fields(raw)
    except _WireError as e:
        if _looks_like_text(raw):
            raise InputError(path, "is a text file (a prototxt?), expected a binary protobuf snapshot") from None
        if str(e).startswith("truncated"):
            raise InputError(path, str(e)) from None
        raise InputError(path, f"not a Caffe binary protobuf file ({e})") from None
    kind = _classify(fields)
    if kind is None:
        if _looks_like_text(raw):
            raise InputError(path, "is a text file (a prototxt?), expected a binary protobuf snapshot")
        raise InputError(path, "not a Caffe caffemodel or solverstate (unexpected protobuf fields)")
    return kind


_WRONG_KIND = {
    ("caffemodel", "solverstate"): "is a solver state (.solverstate), expected a caffemodel (net weights)",
    ("solverstate", "caffemodel"): "is a caffemodel (net weights), expected a solver state (.solverstate)",
}


def _parse_binary(raw: bytes, path: str, expected: str):
    kind = _binary_kind(raw, path)
    if kind != expected:
        raise InputError(path, _WRONG_KIND[(expected, kind)])
    cls = caffe_pb2.SolverState if expected == "solverstate" else caffe_pb2.NetParameter
    try:
        return cls.FromString(raw)
    except Exception as e:  # protobuf's DecodeError (or upb's own) for inner corruption
        raise InputError(path, f"corrupt {expected}: protobuf cannot decode it ({e or type(e).__name__})") from None


# ---------------------------------------------------------------------------
# reading: binary
# ---------------------------------------------------------------------------


def _layers_of(net, path: str):
    if len(net.layer) and len(net.layers):
        raise InputError(path, "has both 'layer' and V1 'layers' fields (Caffe refuses such a net)")
    if len(net.layers):
        return [(l.name, l.blobs) for l in net.layers]
    return [(l.name, l.blobs) for l in net.layer]


def _weights_from_net(net, path: str) -> dict[str, list[Blob]]:
    out: dict[str, list[Blob]] = {}
    for idx, (name, blobs) in enumerate(_layers_of(net, path)):
        if not name:
            raise InputError(path, f"layer #{idx} has no name (a V0 or corrupt caffemodel?)")
        if name in out:
            raise InputError(path, f"two layers are named '{name}'")
        out[name] = [_blob_from_proto(b, source=path, name=f"{name}/{i}") for i, b in enumerate(blobs)]
    return out


def read_caffemodel(path: str | os.PathLike) -> dict[str, list[Blob]]:
    """Weights of a ``.caffemodel`` or ``.caffemodel.h5``: ``{layer name: [Blob, ...]}``.

    Binary files give every layer in net order (layers without blobs map to
    ``[]``); both the ``layer`` and the V1 ``layers`` forms are read. HDF5
    files give HDF5's name order. Diffs are read when the file has them.
    """
    path = os.fspath(path)
    raw = _read_bytes(path)
    if raw.startswith(HDF5_SIGNATURE):
        del raw
        return _read_caffemodel_h5(path)
    net = _parse_binary(raw, path, "caffemodel")
    del raw
    return _weights_from_net(net, path)


def read_solverstate(path: str | os.PathLike) -> SolverStateData:
    """A ``.solverstate`` or ``.solverstate.h5`` as :class:`SolverStateData`."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if raw.startswith(HDF5_SIGNATURE):
        del raw
        return _read_solverstate_h5(path)
    state = _parse_binary(raw, path, "solverstate")
    del raw
    history = []
    for i, b in enumerate(state.history):
        history.append(blob_to_array(b, source=path, name=f"history/{i}"))
    return SolverStateData(
        iter=int(state.iter),
        current_step=int(state.current_step),
        learned_net=state.learned_net,
        history=history,
    )


# ---------------------------------------------------------------------------
# reading: HDF5
# ---------------------------------------------------------------------------


class _open_h5:
    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        import h5py

        try:
            self.f = h5py.File(self.path, "r")
        except (OSError, ValueError) as e:
            msg = str(e).split("(", 1)[-1].rstrip(")") if "(" in str(e) else str(e)
            raise InputError(self.path, f"truncated or corrupt HDF5 file ({msg})") from None
        return self.f

    def __exit__(self, *exc):
        self.f.close()
        return False


def _h5_kind(f, path: str) -> str:
    keys = set(f.keys())
    if "data" in keys and hasattr(f["data"], "keys"):
        return "caffemodel"
    if {"iter", "history"} <= keys:
        return "solverstate"
    listed = ", ".join(sorted(keys)[:6]) or "nothing"
    raise InputError(path, f"HDF5 file is not a Caffe snapshot (no /data group, no iter/history; it holds {listed})")


def _h5_array(ds, path: str, name: str) -> np.ndarray:
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise InputError(path, f"{name} is a group, expected a dataset")
    if ds.dtype.kind not in "fiu":
        raise InputError(path, f"{name}: unsupported HDF5 data type {ds.dtype} (Caffe reads float or integer)")
    try:
        arr = ds[()]
    except (OSError, ValueError) as e:
        raise InputError(path, f"{name}: cannot read dataset, truncated or corrupt ({e})") from None
    return np.asarray(arr, dtype=np.float32)


def _indexed(group, path: str, where: str) -> dict[int, object]:
    out = {}
    for key in group.keys():
        if not key.isdigit():
            raise InputError(path, f"{where}/{key}: expected datasets named 0, 1, 2, ...")
        out[int(key)] = group[key]
    return out


def _read_caffemodel_h5(path: str) -> dict[str, list[Blob]]:
    import h5py

    with _open_h5(path) as f:
        kind = _h5_kind(f, path)
        if kind != "caffemodel":
            raise InputError(path, _WRONG_KIND[("caffemodel", kind)])
        data = f["data"]
        diff = f["diff"] if "diff" in f else None
        out: dict[str, list[Blob]] = {}
        for layer in data.keys():
            group = data[layer]
            if not isinstance(group, h5py.Group):
                raise InputError(path, f"/data/{layer} is a dataset, expected a group of blobs")
            d = _indexed(group, path, f"/data/{layer}")
            g = _indexed(diff[layer], path, f"/diff/{layer}") if diff is not None and layer in diff else {}
            n = max([*d, *g], default=-1) + 1
            blobs = []
            for i in range(n):
                name = f"{layer}/{i}"
                arr = _h5_array(d[i], path, f"/data/{name}") if i in d else None
                darr = _h5_array(g[i], path, f"/diff/{name}") if i in g else None
                if arr is not None and darr is not None and arr.shape != darr.shape:
                    raise InputError(
                        path, f"blob {name}: data shape {_fmt_shape(arr.shape)} differs from diff shape {_fmt_shape(darr.shape)}"
                    )
                blobs.append(Blob(arr, darr))
            out[layer] = blobs
        return out


def _h5_int(f, key: str, path: str) -> int:
    if key not in f:
        raise InputError(path, f"solver state has no '{key}' dataset")
    arr = np.asarray(f[key][()])
    if arr.size != 1 or arr.dtype.kind not in "iu":
        raise InputError(path, f"'{key}' should be one integer, got {arr.dtype} of shape {arr.shape}")
    return int(arr.reshape(-1)[0])


def _read_solverstate_h5(path: str) -> SolverStateData:
    import h5py

    with _open_h5(path) as f:
        kind = _h5_kind(f, path)
        if kind != "solverstate":
            raise InputError(path, _WRONG_KIND[("solverstate", kind)])
        it = _h5_int(f, "iter", path)
        current_step = _h5_int(f, "current_step", path)
        learned_net = ""
        if "learned_net" in f:
            raw = f["learned_net"][()]
            if isinstance(raw, np.ndarray):
                raw = raw.reshape(-1)[0] if raw.size else b""
            if isinstance(raw, bytes):
                raw = raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            learned_net = str(raw)
        group = f["history"]
        if not isinstance(group, h5py.Group):
            raise InputError(path, "/history is a dataset, expected a group")
        idx = _indexed(group, path, "/history")
        missing = [i for i in range(len(idx)) if i not in idx]
        if missing:
            raise InputError(path, f"/history/{missing[0]} is missing ({len(idx)} history blobs)")
        history = [_h5_array(idx[i], path, f"/history/{i}") for i in range(len(idx))]
        return SolverStateData(iter=it, current_step=current_step, learned_net=learned_net, history=history)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------


def _enc_varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(number: int, payload: bytes) -> bytes:
    return _enc_varint(number << 3 | 2) + _enc_varint(len(payload)) + payload


def _as_f32(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != np.float32:
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
        arr = arr.astype(np.float32)
    # (np.ascontiguousarray would turn a 0-axis blob into shape (1,))
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


def _enc_blob(data: np.ndarray | None, diff: np.ndarray | None, shape: tuple[int, ...]) -> bytes:
    """A BlobProto as Caffe's float ToProto writes it: data (5), diff (6), shape (7)."""
    parts = []
    if data is not None and data.size:
        parts.append(_enc_len(5, data.astype("<f4", copy=False).tobytes()))
    if diff is not None and diff.size:
        parts.append(_enc_len(6, diff.astype("<f4", copy=False).tobytes()))
    if shape:
        dims = b"".join(_enc_varint(int(d)) for d in shape)
        parts.append(_enc_len(7, _enc_len(1, dims)))
    return b"".join(parts)


def _normalise(blob, what: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if isinstance(blob, Blob):
        data = None if blob.data is None else _as_f32(blob.data, what)
        diff = None if blob.diff is None else _as_f32(blob.diff, what + " diff")
    else:
        data, diff = _as_f32(blob, what), None
    if data is not None and diff is not None and data.shape != diff.shape:
        raise ValueError(f"{what}: data shape {data.shape} differs from diff shape {diff.shape}")
    return data, diff


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_caffemodel(
    path: str | os.PathLike,
    weights: Mapping[str, Sequence[Blob | np.ndarray]],
    *,
    with_diff: bool = False,
    name: str = "",
) -> None:
    """Write ``{layer: [blobs]}`` as a caffemodel Caffe can load (``--weights``).

    A path ending in ``.h5`` gives Caffe's HDF5 layout, anything else a binary
    ``NetParameter`` with one ``layer { name blobs }`` per entry (the layout
    Caffe's ``CopyTrainedLayersFrom`` matches by layer name). Blobs may be
    :class:`Blob` or plain arrays; diffs are written only with ``with_diff``.
    The file is written to a temporary file in the same folder and renamed.
    """
    path = os.fspath(path)
    layers = []
    for layer, blobs in weights.items():
        items = []
        for i, b in enumerate(blobs):
            data, diff = _normalise(b, f"{layer}/{i}")
            items.append((data, diff if with_diff else None))
        layers.append((layer, items))
    if path.endswith(".h5"):
        _atomic_write(path, lambda tmp: _write_caffemodel_h5(tmp, layers, with_diff))
        return

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(_enc_len(1, name.encode("utf-8")))
            for layer, items in layers:
                body = [_enc_len(1, layer.encode("utf-8"))]
                for data, diff in items:
                    if data is None:
                        raise ValueError(f"{layer}: a binary caffemodel needs the data of every blob")
                    body.append(_enc_len(7, _enc_blob(data, diff, data.shape)))
                f.write(_enc_len(100, b"".join(body)))

    _atomic_write(path, write)


def _write_caffemodel_h5(tmp: str, layers, with_diff: bool) -> None:
    import h5py

    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        diff = f.create_group("diff") if with_diff else None
        for layer, items in layers:
            g = data.create_group(layer)
            gd = diff.create_group(layer) if diff is not None else None
            for i, (d, df) in enumerate(items):
                if d is not None:
                    g.create_dataset(str(i), data=d)
                if gd is not None and df is not None:
                    gd.create_dataset(str(i), data=df)


def _write_c_string(group, key: str, s: str) -> None:
    """A scalar NUL-terminated fixed-length string, as HDF5's H5LTmake_dataset_string makes."""
    import h5py

    b = s.encode("utf-8", "surrogateescape") + b"\0"
    tid = h5py.h5t.C_S1.copy()
    tid.set_size(len(b))
    tid.set_strpad(h5py.h5t.STR_NULLTERM)
    space = h5py.h5s.create(h5py.h5s.SCALAR)
    ds = h5py.h5d.create(group.id, key.encode(), tid, space)
    ds.write(h5py.h5s.ALL, h5py.h5s.ALL, np.array(b, dtype=f"S{len(b)}"), mtype=tid)


def write_solverstate(path: str | os.PathLike, state: SolverStateData) -> None:
    """Write a solver state as Caffe does: binary ``SolverState``, or HDF5 for ``.h5``.

    The binary form is byte for byte what Caffe's float solver writes for the
    same values (fields in number order, packed data, N-D shape).
    """
    path = os.fspath(path)
    history = [_as_f32(h, f"history/{i}") for i, h in enumerate(state.history)]
    if path.endswith(".h5"):

        def write_h5(tmp):
            import h5py

            with h5py.File(tmp, "w") as f:
                f.create_dataset("iter", data=np.array([state.iter], dtype=np.int32))
                _write_c_string(f, "learned_net", state.learned_net)
                f.create_dataset("current_step", data=np.array([state.current_step], dtype=np.int32))
                g = f.create_group("history")
                for i, h in enumerate(history):
                    g.create_dataset(str(i), data=h)

        _atomic_write(path, write_h5)
        return

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(_enc_varint(1 << 3) + _enc_varint(int(state.iter)))
            f.write(_enc_len(2, state.learned_net.encode("utf-8", "surrogateescape")))
            for h in history:
                f.write(_enc_len(3, _enc_blob(h, None, h.shape)))
            f.write(_enc_varint(4 << 3) + _enc_varint(int(state.current_step)))

    _atomic_write(path, write)
