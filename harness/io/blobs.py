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

Two ways to read:

- **whole** -- :func:`read_caffemodel`, :func:`read_solverstate`: every value
  in memory (binary files are decoded by protobuf, so a 550 MB caffemodel
  peaks at about four times its size);
- **streaming** -- :func:`scan_caffemodel`, :func:`scan_solverstate`: an index
  of the file (names, shapes, and where each blob's values are) without its
  values; a :class:`BlobRef` reads any range ``[start, stop)`` of its
  ``data``/``diff`` on demand. Binary snapshots are walked in the protobuf
  wire format through a read-only memory map that touches only the field
  keys; packed ``data``/``diff`` are byte ranges of the file. Contiguous
  HDF5 datasets are byte ranges too. This is what lets ``caffe-harness
  audit`` hold one chunk of one blob at a time of a 550 MB snapshot.

Both share the checks of the file (sniffing, wire-format walk, kind of
snapshot, layer names, blob shapes and lengths, HDF5 layout) and their
error messages; they differ only where protobuf does the decoding for the
whole readers (a corrupt inner message is protobuf's error there).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass, field
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..errors import InputError
from .files import atomic_write, open_input
from ..proto import caffe_pb2

__all__ = [
    "Blob",
    "SolverStateData",
    "BlobRef",
    "StateRef",
    "blob_to_array",
    "read_caffemodel",
    "read_solverstate",
    "scan_caffemodel",
    "scan_solverstate",
    "write_caffemodel",
    "write_solverstate",
    "params_by_name",
    "snapshot_kind",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "()"


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


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
        return _count(self.shape)


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
# streaming: where a blob's values are, read in ranges
# ---------------------------------------------------------------------------


class _Extent:
    """``count`` little-endian floats (``<f4``) or doubles (``<f8``) at ``offset`` of ``path``."""

    __slots__ = ("path", "offset", "count", "dtype")

    def __init__(self, path: str, offset: int, count: int, dtype: str):
        self.path, self.offset, self.count, self.dtype = path, offset, count, dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        n = stop - start
        size = np.dtype(self.dtype).itemsize
        with open(self.path, "rb") as f:
            f.seek(self.offset + start * size)
            a = np.fromfile(f, dtype=self.dtype, count=n)
        if a.size != n:
            raise InputError(self.path, f"truncated: {n} values expected at byte {self.offset + start * size}")
        return a.astype(np.float32) if self.dtype != "<f4" or a.dtype != np.float32 else a

    def release(self) -> None:
        pass


class _Loaded:
    """A blob field that can only be decoded whole (unusual encodings); kept until released."""

    __slots__ = ("load", "count", "_array")

    def __init__(self, load: Callable[[], np.ndarray], count: int):
        self.load, self.count, self._array = load, count, None

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._array is None:
            self._array = np.ascontiguousarray(self.load(), dtype=np.float32).reshape(-1)
        return self._array[start:stop]

    def release(self) -> None:
        self._array = None


@dataclass(eq=False)
class BlobRef:
    """A blob of a snapshot file, not yet read: its ``name``, ``shape`` and where its values are.

    ``read("data"|"diff", start, stop)`` returns the flat float32 values
    ``[start, stop)``, read from the file at each call (a few unusual
    encodings -- unpacked or split protobuf values, chunked or compressed
    HDF5 -- are decoded whole on first use and kept until :meth:`release`).
    ``data``/``diff`` are None when the file has none (no ``snapshot_diff``;
    an HDF5 weight-shared blob has no data).
    """

    name: str
    shape: tuple[int, ...]
    data: object | None = None
    diff: object | None = None

    @property
    def count(self) -> int:
        """Number of values (Caffe's ``count()``)."""
        return _count(self.shape)

    def read(self, which: str, start: int, stop: int) -> np.ndarray:
        """Flat float32 values ``[start, stop)`` of ``data`` or ``diff``."""
        ext = self.data if which == "data" else self.diff
        if ext is None:
            raise ValueError(f"blob {self.name} has no {which}")
        return ext.read(start, stop)

    def release(self) -> None:
        """Drop any wholly decoded values (the unusual encodings above)."""
        for ext in (self.data, self.diff):
            if ext is not None:
                ext.release()


@dataclass(eq=False)
class StateRef:
    """A ``.solverstate`` indexed: ``iter``, ``current_step``, ``learned_net``, ``history`` blobs."""

    path: str
    iter: int
    current_step: int
    learned_net: str
    history: list[BlobRef]


# ---------------------------------------------------------------------------
# blobs
# ---------------------------------------------------------------------------


def _blob_shape(legacy: Sequence[int] | None, dims: Iterable[int], *, source: str, name: str) -> tuple[int, ...]:
    """``Blob::FromProto``'s shape: the legacy ``(num, channels, height, width)`` when any is set, else ``dims``."""
    shape = tuple(int(d) for d in (legacy if legacy is not None else dims))
    for d in shape:
        if d < 0:
            raise InputError(source, f"blob {name}: negative dimension in shape {_fmt_shape(shape)}")
    return shape


def _check_count(n: int, kind: str, shape: tuple[int, ...], *, source: str, name: str) -> None:
    """``n`` values of ``kind`` (``data``, ``double_diff``, ...) must fill ``shape``."""
    count = _count(shape)
    if n != count:
        raise InputError(source, f"blob {name}: {n} {kind} values for shape {_fmt_shape(shape)} (count {count})")


def _shape_of(msg, *, source, name) -> tuple[int, ...]:
    legacy = None
    if msg.HasField("num") or msg.HasField("channels") or msg.HasField("height") or msg.HasField("width"):
        legacy = (msg.num, msg.channels, msg.height, msg.width)
    return _blob_shape(legacy, msg.shape.dim, source=source, name=name)


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
    doubles = getattr(msg, "double_" + field)
    floats = getattr(msg, field)
    if len(doubles):
        values, kind = doubles, "double_" + field
    elif len(floats) or field == "data":
        values, kind = floats, field
    else:
        return None
    _check_count(len(values), kind, shape, source=source, name=name)
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
# reading: opening, sniffing and wire-level checks (whole and streaming)
# ---------------------------------------------------------------------------


def _open(path: str):
    """``open(path, "rb")`` with the usual failures as one-line InputErrors."""
    return open_input(path)


def _read_bytes(path: str) -> bytes:
    with _open(path) as f:
        try:
            raw = f.read()
        except OSError as e:
            raise InputError(path, f"cannot read: {e.strerror or e}") from None
    if not raw:
        raise InputError(path, "file is empty")
    return raw


def _map(path: str) -> mmap.mmap:
    """The file mapped read-only: indexing it reads only the pages touched."""
    with _open(path) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise InputError(path, "file is empty")
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise InputError(path, f"cannot read: {getattr(e, 'strerror', None) or e}") from None


class _WireError(Exception):
    """A protobuf wire-format problem; the caller words it as an InputError."""


def _varint(buf, i: int, end: int) -> tuple[int, int]:
    """The varint at ``buf[i]`` (which must end before ``end``) and the position after it."""
    result = 0
    shift = 0
    while True:
        if i >= end:
            raise _WireError(f"truncated: varint runs past the end at byte {i}")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7
        if shift >= 70:
            raise _WireError(f"corrupt: varint longer than 10 bytes at byte {i}")


def _fields(buf, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, object]]:
    """``(number, wire type, value)`` of each field of the message in ``buf[start:end]``, checking lengths fit.

    ``value`` is the integer of a varint, ``(offset, length)`` of a
    length-delimited field, None for the fixed-width ones (skipped).
    ``buf`` is ``bytes`` or a memory map; nothing is copied.
    """
    size = len(buf)
    end = size if end is None else end
    pos = start
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _WireError(f"corrupt: field number 0 at byte {at}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, length), pos + length
        elif wire == 5:
            value, pos = None, pos + 4
        else:
            raise _WireError(f"corrupt: invalid wire type {wire} at byte {at}")
        if pos > end:
            where = "the end of the file" if end == size else "the end of its message"
            raise _WireError(f"truncated: field {number} at byte {at} runs past {where} ({end} bytes)")
        yield number, wire, value


_STATE_WIRE = {1: 0, 2: 2, 3: 2, 4: 0}
_NET_WIRE = {1: {2}, 2: {2}, 3: {2}, 4: {0, 2}, 5: {0}, 6: {2}, 7: {0}, 8: {2}, 100: {2}}


def _classify(fields: list[tuple[int, int, object]]) -> str | None:
    numbers = {n for n, _, _ in fields}
    state_ok = all(_STATE_WIRE.get(n) == w for n, w, _ in fields)
    net_ok = all(w in _NET_WIRE.get(n, ()) for n, w, _ in fields)
    if state_ok and (1 in numbers or 4 in numbers or not net_ok):
        return "solverstate"
    if net_ok:
        return "caffemodel"
    return None


def _looks_like_text(head: bytes) -> bool:
    """Mostly printable ASCII in ``head`` (the first 4 KiB): a prototxt or log, not a snapshot."""
    printable = sum(1 for b in head if 32 <= b < 127 or b in (9, 10, 13))
    return printable >= 0.95 * len(head)


def _binary_kind(buf, path: str) -> tuple[str, list[tuple[int, int, object]]]:
    """``("caffemodel"|"solverstate", top-level fields)`` of a binary snapshot, else InputError."""
    try:
        top = list(_fields(buf))
    except _WireError as e:
        if _looks_like_text(buf[:4096]):
            raise InputError(path, "is a text file (a prototxt?), expected a binary protobuf snapshot") from None
        if str(e).startswith("truncated"):
            raise InputError(path, str(e)) from None
        raise InputError(path, f"not a Caffe binary protobuf file ({e})") from None
    kind = _classify(top)
    if kind is None:
        if _looks_like_text(buf[:4096]):
            raise InputError(path, "is a text file (a prototxt?), expected a binary protobuf snapshot")
        raise InputError(path, "not a Caffe caffemodel or solverstate (unexpected protobuf fields)")
    return kind, top


_WRONG_KIND = {
    ("caffemodel", "solverstate"): "is a solver state (.solverstate), expected a caffemodel (net weights)",
    ("solverstate", "caffemodel"): "is a caffemodel (net weights), expected a solver state (.solverstate)",
}


def _check_kind(kind: str, expected: str, path: str) -> None:
    if kind != expected:
        raise InputError(path, _WRONG_KIND[(expected, kind)])


def _layer_field(top, path: str) -> int:
    """The top-level field holding the net's layers: 100 (``layer``) or 2 (V1 ``layers``)."""
    numbers = {n for n, _, _ in top if n in (2, 100)}
    if numbers == {2, 100}:
        raise InputError(path, "has both 'layer' and V1 'layers' fields (Caffe refuses such a net)")
    return 2 if 2 in numbers else 100


def _unique_layers(layers: Iterable[tuple[str, object]], path: str) -> Iterator[tuple[str, object]]:
    """``(name, blobs)`` of each layer; a layer without a name, or a name given twice, is an InputError."""
    seen: set[str] = set()
    for idx, (name, blobs) in enumerate(layers):
        if not name:
            raise InputError(path, f"layer #{idx} has no name (a V0 or corrupt caffemodel?)")
        if name in seen:
            raise InputError(path, f"two layers are named '{name}'")
        seen.add(name)
        yield name, blobs


def snapshot_kind(path: str | os.PathLike) -> str:
    """What a weights/state file holds: ``"caffemodel"`` or ``"solverstate"``.

    Works for binary and HDF5 files; anything else raises :class:`InputError`.
    """
    path = os.fspath(path)
    buf = _map(path)
    try:
        if buf[: len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            with _open_h5(path) as f:
                return _h5_kind(f, path)
        return _binary_kind(buf, path)[0]
    finally:
        buf.close()


# ---------------------------------------------------------------------------
# reading whole: binary
# ---------------------------------------------------------------------------


def _parse_binary(raw: bytes, path: str, expected: str):
    """The protobuf message of a binary snapshot of kind ``expected``, and its top-level fields."""
    kind, top = _binary_kind(raw, path)
    _check_kind(kind, expected, path)
    cls = caffe_pb2.SolverState if expected == "solverstate" else caffe_pb2.NetParameter
    try:
        return cls.FromString(raw), top
    except Exception as e:  # protobuf's DecodeError (or upb's own) for inner corruption
        raise InputError(path, f"corrupt {expected}: protobuf cannot decode it ({e or type(e).__name__})") from None


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
        with _open_h5(path) as f:
            return {
                layer: [Blob(_h5_read(d, path), _h5_read(g, path)) for _, d, g in blobs]
                for layer, blobs in _h5_caffemodel(f, path)
            }
    net, top = _parse_binary(raw, path, "caffemodel")
    del raw
    layers = net.layers if _layer_field(top, path) == 2 else net.layer
    return {
        name: [_blob_from_proto(b, source=path, name=f"{name}/{i}") for i, b in enumerate(blobs)]
        for name, blobs in _unique_layers(((l.name, l.blobs) for l in layers), path)
    }


def read_solverstate(path: str | os.PathLike) -> SolverStateData:
    """A ``.solverstate`` or ``.solverstate.h5`` as :class:`SolverStateData`."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if raw.startswith(HDF5_SIGNATURE):
        del raw
        with _open_h5(path) as f:
            it, current_step, learned_net, history = _h5_solverstate(f, path)
            return SolverStateData(it, current_step, learned_net, [_h5_read(ds, path) for ds in history])
    state, _ = _parse_binary(raw, path, "solverstate")
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
# reading in a stream: binary, from the wire format
# ---------------------------------------------------------------------------


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _scan_dims(buf, start: int, length: int, name: str) -> list[int]:
    """The ``dim`` values of a ``BlobShape`` message, packed or not."""
    dims = []
    for number, wire, value in _fields(buf, start, start + length):
        if number != 1:
            continue
        if wire == 0:
            dims.append(_int64(value))
        elif wire == 2:
            i, end = value[0], value[0] + value[1]
            while i < end:
                try:
                    d, i = _varint(buf, i, end)
                except _WireError as e:
                    if str(e).startswith("truncated"):
                        raise _WireError(f"corrupt: blob {name}: shape dims end inside a varint") from None
                    raise
                dims.append(_int64(d))
    return dims


def _scan_blob(buf, start: int, length: int, path: str, name: str) -> BlobRef:
    """Index one ``BlobProto``: shape and the byte ranges of its values."""
    legacy: dict[int, int] = {}
    dims: list[int] = []
    found: dict[int, list] = {}
    unusual = False
    for number, wire, value in _fields(buf, start, start + length):
        if number in (1, 2, 3, 4) and wire == 0:
            legacy[number] = _int32(value)
        elif number in (5, 6, 8, 9):
            found.setdefault(number, []).append((wire, value))
            if wire != 2 or len(found[number]) > 1:
                unusual = True  # unpacked or split packed values: let protobuf decode
        elif number == 7 and wire == 2:
            dims = _scan_dims(buf, value[0], value[1], name)
    shape = _blob_shape(tuple(legacy.get(i, 0) for i in (1, 2, 3, 4)) if legacy else None, dims,
                        source=path, name=name)
    count = _count(shape)

    if unusual:
        raw = bytes(buf[start : start + length])

        def decode(which, raw=raw):
            try:
                msg = caffe_pb2.BlobProto.FromString(raw)
            except Exception as e:
                raise InputError(path, f"blob {name}: protobuf cannot decode it ({e})") from None
            return blob_to_array(msg, source=path, name=name, field=which)

        decode("data")  # validates now; decoded again on use
        has_diff = decode("diff") is not None
        return BlobRef(name, shape, _Loaded(lambda: decode("data"), count),
                       _Loaded(lambda: decode("diff"), count) if has_diff else None)

    def extent(which: str):
        fnum, dnum = (5, 8) if which == "data" else (6, 9)
        if dnum in found:
            ((_, (off, ln)),) = found[dnum]
            size, dtype, kind = 8, "<f8", "double_" + which
        elif fnum in found:
            ((_, (off, ln)),) = found[fnum]
            size, dtype, kind = 4, "<f4", which
        elif which == "data":
            off, ln, size, dtype, kind = start, 0, 4, "<f4", "data"
        else:
            return None
        if ln % size:
            raise InputError(path, f"blob {name}: packed {kind} of {ln} bytes is not a whole number of values")
        _check_count(ln // size, kind, shape, source=path, name=name)
        return _Extent(path, off, ln // size, dtype)

    return BlobRef(name, shape, extent("data"), extent("diff"))


def _scan_layers(buf, top, path: str) -> Iterator[tuple[str, list[tuple[int, int]]]]:
    """``(name, [byte range of each blob])`` of each layer, in file order."""
    form = _layer_field(top, path)
    name_field, blobs_field = (1, 7) if form == 100 else (4, 6)
    for number, _, (offset, length) in (f for f in top if f[0] == form):
        name = None
        blob_ranges = []
        for n2, w2, v2 in _fields(buf, offset, offset + length):
            if n2 == name_field and w2 == 2:
                name = bytes(buf[v2[0] : v2[0] + v2[1]]).decode("utf-8", "surrogateescape")
            elif n2 == blobs_field and w2 == 2:
                blob_ranges.append(v2)
        yield name, blob_ranges


def _scan(path: str | os.PathLike, expected: str, scan_h5, scan_wire):
    """Sniff, check and index a snapshot of kind ``expected`` with ``scan_h5(path)`` or ``scan_wire(buf, top, path)``."""
    path = os.fspath(path)
    buf = _map(path)
    try:
        if buf[: len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return scan_h5(path)
        kind, top = _binary_kind(buf, path)
        _check_kind(kind, expected, path)
        try:
            return scan_wire(buf, top, path)
        except _WireError as e:
            raise InputError(path, f"corrupt {expected}: {e}") from None
    finally:
        buf.close()


def _scan_caffemodel_wire(buf, top, path: str) -> dict[str, list[BlobRef]]:
    return {
        name: [_scan_blob(buf, off, ln, path, f"{name}/{i}") for i, (off, ln) in enumerate(ranges)]
        for name, ranges in _unique_layers(_scan_layers(buf, top, path), path)
    }


def _scan_solverstate_wire(buf, top, path: str) -> StateRef:
    it = cs = 0
    learned = ""
    history = []
    for number, _, value in top:
        if number == 1:
            it = _int32(value)
        elif number == 4:
            cs = _int32(value)
        elif number == 2:
            learned = bytes(buf[value[0] : value[0] + value[1]]).decode("utf-8", "surrogateescape")
        elif number == 3:
            history.append(_scan_blob(buf, value[0], value[1], path, f"history/{len(history)}"))
    return StateRef(path, it, cs, learned, history)


def scan_caffemodel(path: str | os.PathLike) -> dict[str, list[BlobRef]]:
    """Index a ``.caffemodel`` (binary or HDF5) without reading its values.

    ``{layer: [BlobRef, ...]}`` in the file's layer order (HDF5: name
    order), like :func:`read_caffemodel` -- same layers, shapes and values,
    same checks -- but each blob is a :class:`BlobRef` read on demand, so
    memory does not grow with the file. Bad files raise :class:`InputError`.
    """
    return _scan(path, "caffemodel", _scan_caffemodel_h5, _scan_caffemodel_wire)


def scan_solverstate(path: str | os.PathLike) -> StateRef:
    """Index a ``.solverstate`` (binary or HDF5) without reading its history values.

    The :class:`StateRef` holds ``iter``, ``current_step``, ``learned_net``
    and one :class:`BlobRef` per history blob (named ``history/<i>``), as
    :func:`read_solverstate` reads them. Bad files raise :class:`InputError`.
    """
    return _scan(path, "solverstate", _scan_solverstate_h5, _scan_solverstate_wire)


# ---------------------------------------------------------------------------
# reading: HDF5 (whole and streaming)
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def _open_h5(path: str):
    import h5py

    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        msg = str(e).split("(", 1)[-1].rstrip(")") if "(" in str(e) else str(e)
        raise InputError(path, f"truncated or corrupt HDF5 file ({msg})") from None
    try:
        yield f
    finally:
        f.close()


def _h5_kind(f, path: str) -> str:
    keys = set(f.keys())
    if "data" in keys and hasattr(f["data"], "keys"):
        return "caffemodel"
    if {"iter", "history"} <= keys:
        return "solverstate"
    listed = ", ".join(sorted(keys)[:6]) or "nothing"
    raise InputError(path, f"HDF5 file is not a Caffe snapshot (no /data group, no iter/history; it holds {listed})")


def _h5_group(obj, path: str, where: str, what: str = "a group of blobs"):
    import h5py

    if not isinstance(obj, h5py.Group):
        raise InputError(path, f"{where} is a dataset, expected {what}")
    return obj


def _h5_dataset(ds, path: str, name: str):
    """``ds`` checked to be a numeric dataset (Caffe reads float or integer ones)."""
    import h5py

    if not isinstance(ds, h5py.Dataset):
        raise InputError(path, f"{name} is a group, expected a dataset")
    if ds.dtype.kind not in "fiu":
        raise InputError(path, f"{name}: unsupported HDF5 data type {ds.dtype} (Caffe reads float or integer)")
    return ds


def _h5_read(ds, path: str) -> np.ndarray | None:
    """All values of a checked dataset as float32 (None for None)."""
    if ds is None:
        return None
    try:
        arr = ds[()]
    except (OSError, ValueError) as e:
        raise InputError(path, f"{ds.name}: cannot read dataset, truncated or corrupt ({e})") from None
    return np.asarray(arr, dtype=np.float32)


def _indexed(group, path: str, where: str) -> dict[int, object]:
    out = {}
    for key in group.keys():
        if not key.isdigit():
            raise InputError(path, f"{where}/{key}: expected datasets named 0, 1, 2, ...")
        out[int(key)] = group[key]
    return out


def _h5_caffemodel(f, path: str) -> Iterator[tuple[str, list[tuple[str, object, object]]]]:
    """``(layer, [(blob name, data dataset or None, diff dataset or None), ...])`` in HDF5's name order, checked."""
    _check_kind(_h5_kind(f, path), "caffemodel", path)
    data = f["data"]
    diff = _h5_group(f["diff"], path, "/diff", "a group of layers") if "diff" in f else None
    for layer in data.keys():
        d = _indexed(_h5_group(data[layer], path, f"/data/{layer}"), path, f"/data/{layer}")
        g = {}
        if diff is not None and layer in diff:
            g = _indexed(_h5_group(diff[layer], path, f"/diff/{layer}"), path, f"/diff/{layer}")
        blobs = []
        for i in range(max([*d, *g], default=-1) + 1):
            name = f"{layer}/{i}"
            ds = _h5_dataset(d[i], path, f"/data/{name}") if i in d else None
            gs = _h5_dataset(g[i], path, f"/diff/{name}") if i in g else None
            if ds is not None and gs is not None and ds.shape != gs.shape:
                raise InputError(
                    path, f"blob {name}: data shape {_fmt_shape(ds.shape)} differs from diff shape {_fmt_shape(gs.shape)}"
                )
            blobs.append((name, ds, gs))
        yield layer, blobs


def _h5_int(f, key: str, path: str) -> int:
    if key not in f:
        raise InputError(path, f"solver state has no '{key}' dataset")
    arr = np.asarray(f[key][()])
    if arr.size != 1 or arr.dtype.kind not in "iu":
        raise InputError(path, f"'{key}' should be one integer, got {arr.dtype} of shape {arr.shape}")
    return int(arr.reshape(-1)[0])


def _h5_solverstate(f, path: str) -> tuple[int, int, str, list]:
    """``(iter, current_step, learned_net, [history datasets])`` of an HDF5 solver state, checked."""
    _check_kind(_h5_kind(f, path), "solverstate", path)
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
    idx = _indexed(_h5_group(f["history"], path, "/history", "a group"), path, "/history")
    missing = [i for i in range(len(idx)) if i not in idx]
    if missing:
        raise InputError(path, f"/history/{missing[0]} is missing ({len(idx)} history blobs)")
    return it, current_step, learned_net, [_h5_dataset(idx[i], path, f"/history/{i}") for i in range(len(idx))]


def _h5_source(ds, path: str, file_size: int):
    """Where a dataset's values are: its bytes when stored contiguously as float, else decoded whole on use."""
    count = _count(ds.shape)
    offset = None
    try:
        if ds.chunks is None and ds.compression is None and ds.dtype.str in ("<f4", "<f8"):
            offset = ds.id.get_offset()
    except Exception:  # no storage allocated yet, or an unusual layout
        offset = None
    if offset is not None and offset + count * ds.dtype.itemsize <= file_size:
        return _Extent(path, int(offset), count, ds.dtype.str)
    dsname = ds.name

    def load():
        with _open_h5(path) as f:
            return _h5_read(f[dsname], path)

    return _Loaded(load, count)


def _h5_ref(name: str, ds, gs, path: str, file_size: int) -> BlobRef:
    src = ds if ds is not None else gs
    shape = () if src is None else tuple(int(d) for d in src.shape)
    return BlobRef(name, shape, None if ds is None else _h5_source(ds, path, file_size),
                   None if gs is None else _h5_source(gs, path, file_size))


def _scan_caffemodel_h5(path: str) -> dict[str, list[BlobRef]]:
    size = os.path.getsize(path)
    with _open_h5(path) as f:
        return {layer: [_h5_ref(name, d, g, path, size) for name, d, g in blobs]
                for layer, blobs in _h5_caffemodel(f, path)}


def _scan_solverstate_h5(path: str) -> StateRef:
    size = os.path.getsize(path)
    with _open_h5(path) as f:
        it, current_step, learned_net, history = _h5_solverstate(f, path)
        refs = [_h5_ref(f"history/{i}", ds, None, path, size) for i, ds in enumerate(history)]
        return StateRef(path, it, current_step, learned_net, refs)


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


_atomic_write = atomic_write


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
