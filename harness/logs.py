"""Streaming parser for the glog output of ``caffe train``.

Reads the log of Caffe 1.0, master (the Debian ``1.0.0+git20180821`` build),
the older releases (``rc``..``rc5``, ``v0.9``..``v0.9999``) and NVCaffe, in
large binary chunks, and turns the solver's lines into typed records::

    for rec in parse_log("caffe.log"):
        if isinstance(rec, LearningRate):
            print(rec.line, rec.iter, rec.lr)

or groups them into trainings with compact per-iteration series::

    [run] = read_runs("caffe.log")
    run.lr.iter, run.lr.value          # array('q'), array('d')

Lines and their order (``SEMANTICS.md`` §1, Caffe's ``solver.cpp`` and
``sgd_solver.cpp``)::

    solver.cpp:45] Initializing solver from parameters:      (+ text block)
    solver.cpp:289] Solving NAME
    solver.cpp:290] Learning Rate Policy: P
    solver.cpp:296] Restoring previous solver status from FILE
    solver.cpp:347] Iteration N, Testing net (#i)
    solver.cpp:401] Test loss: L
    solver.cpp:414]     Test net output #k: NAME = V (* W = X loss)
    solver.cpp:239] Iteration N (P iter/s, Ts/D iters), loss = S
    solver.cpp:258]     Train net output #k: NAME = V (* W = X loss)
    sgd_solver.cpp:50] MultiStep Status: Iteration N, step = k
    sgd_solver.cpp:112] Iteration N, lr = R
    sgd_solver.cpp:99] Gradient clipping: scaling down gradients (L2 norm X > C) by scale factor S
    solver.cpp:464] Snapshotting to binary proto file FILE
    sgd_solver.cpp:284] Snapshotting solver state to binary proto file FILE
    solver.cpp:327] Iteration N, loss = S                    (final forward-only pass)
    solver.cpp:311] Optimization stopped early.
    solver.cpp:332] Optimization Done.
    F... file.cpp:N] Check failed: ... / Unknown ...         (fatal, then a stack trace)

Older releases print the display line as ``Iteration N, loss = L`` (rc3 and
before), ``Snapshotting to FILE`` (before rc3) and ``Iteration N, Testing
net`` / ``Test score #k: V`` (v0.9x). NVCaffe prefixes a device tag
(``[0] Iteration N, lr = R, m = M, lrm = .., wd = .., gs = ..``); its extra
lr fields are parsed. A solver line of another shape (e.g. an lr line with
trailing text) is an :class:`~harness.errors.InputError` naming it as an
unsupported variant, never a silent misread.

Only lines whose glog location is a Caffe solver source (``*solver*.cpp``)
or ``caffe.cpp`` become records; other lines (the net set-up, stack traces,
foreign programs interleaved) are ignored and counted. Numbers are what
glog printed (``%g``, 6 significant digits); ``nan``, ``-nan``, ``inf`` and
``-inf`` parse as floats.

Bad input is an ``InputError`` naming ``file:line``: an empty file, a file
with no Caffe solver line at all ("not a Caffe training log"), NUL bytes
(binary data), and a last line without its newline (a truncated log).
"""

from __future__ import annotations

import os
import re
from array import array
from dataclasses import dataclass, field
from typing import Iterator, NamedTuple

from .errors import InputError

__all__ = [
    "Record",
    "SolverParams",
    "NetName",
    "LrPolicy",
    "Restore",
    "Testing",
    "TestLoss",
    "NetOutput",
    "Loss",
    "MultiStepStatus",
    "LearningRate",
    "GradientClipping",
    "Snapshot",
    "StoppedEarly",
    "OptimizationDone",
    "Fatal",
    "LogEnd",
    "Series",
    "OutputKey",
    "Run",
    "parse_log",
    "read_runs",
    "NVCAFFE_LR_FIELDS",
]

# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------


@dataclass(slots=True)
class Record:
    """Base of every record: the log file and the 1-based line number."""

    path: str
    line: int


@dataclass(slots=True)
class SolverParams(Record):
    """``Initializing solver from parameters:`` and the text block after it.

    ``text`` is the ``SolverParameter`` in protobuf text form, exactly as
    logged; its first line is line ``line + 1`` of the log.
    """

    text: str

    def parameter(self):
        """The block parsed strictly as a ``caffe_pb2.SolverParameter``.

        Errors are ``InputError`` with the line and column in the log file.
        """
        from .io.prototxt import parse_text_string
        from .proto import caffe_pb2

        # pad with newlines so parse errors carry the log's own line numbers
        return parse_text_string("\n" * self.line + self.text, caffe_pb2.SolverParameter, source=self.path)

    def config(self):
        """The block as a ``harness.config.SolverConfig`` (no net blobs)."""
        from .config import config_from_proto

        return config_from_proto(self.parameter(), source=f"{self.path}:{self.line}")


@dataclass(slots=True)
class NetName(Record):
    """``Solving NAME``: the train net's name; training starts."""

    name: str


@dataclass(slots=True)
class LrPolicy(Record):
    """``Learning Rate Policy: P`` (rc2 and later)."""

    lr_policy: str


@dataclass(slots=True)
class Restore(Record):
    """``Restoring previous solver status from FILE`` (a resumed run)."""

    file: str


@dataclass(slots=True)
class Testing(Record):
    """``Iteration N, Testing net (#i)``; ``net`` is 0 for v0.9x's ``Testing net``."""

    iter: int
    net: int


@dataclass(slots=True)
class TestLoss(Record):
    """``Test loss: L`` (only with ``test_compute_loss``)."""

    loss: float


@dataclass(slots=True)
class NetOutput(Record):
    """``    Train net output #k: NAME = V (* W = X loss)`` or its Test twin.

    ``phase`` is ``"train"`` or ``"test"``; ``name`` is ``""`` for v0.9x's
    ``Test score #k: V``; ``loss_weight`` and ``weighted`` are ``None``
    when the blob has no loss weight (Caffe then prints no parenthesis).
    """

    phase: str
    index: int
    name: str
    value: float
    loss_weight: float | None = None
    weighted: float | None = None


@dataclass(slots=True)
class Loss(Record):
    """A training loss line.

    ``Iteration N (P iter/s, Ts/D iters), loss = S`` (rc4 and later, the
    display line) has ``iter_per_s``, ``lapse`` and ``display`` set. The
    short form ``Iteration N, loss = S`` leaves them ``None``: it is the
    display line of rc3 and before, and in every release the final
    forward-only pass after the last update.
    """

    iter: int
    loss: float
    iter_per_s: float | None = None
    lapse: float | None = None
    display: int | None = None


@dataclass(slots=True)
class MultiStepStatus(Record):
    """``MultiStep Status: Iteration N, step = k``: ``current_step`` became k at N."""

    iter: int
    step: int


@dataclass(slots=True)
class LearningRate(Record):
    """``Iteration N, lr = R``: the rate update N used.

    ``text`` is R as printed (6 significant digits). ``extra`` holds
    NVCaffe's additional fields (``m``, ``lrm``, ``wd``, ``gs``) or is empty.
    """

    iter: int
    lr: float
    text: str
    extra: dict = field(default_factory=dict)


@dataclass(slots=True)
class GradientClipping(Record):
    """``Gradient clipping: scaling down gradients (L2 norm X > C) by scale factor S``.

    Printed at every update whose gradient norm exceeds ``clip_gradients``,
    after that update's lr line (which only shows on display iterations);
    the ``*_text`` fields are the numbers as printed.
    """

    l2norm: float
    clip_gradients: float
    scale_factor: float
    l2norm_text: str
    clip_text: str
    scale_text: str


@dataclass(slots=True)
class Snapshot(Record):
    """A snapshot written: ``kind`` is ``"model"`` or ``"solverstate"``,
    ``format`` ``"binaryproto"``, ``"hdf5"`` or ``""`` (releases before rc3
    do not say)."""

    kind: str
    format: str
    file: str


@dataclass(slots=True)
class StoppedEarly(Record):
    """``Optimization stopped early.`` (SIGINT/SIGHUP action ``stop``)."""


@dataclass(slots=True)
class OptimizationDone(Record):
    """``Optimization Done.``: printed by ``solver.cpp`` and again by ``caffe.cpp``."""

    location: str


@dataclass(slots=True)
class Fatal(Record):
    """A glog ``F`` line: Caffe died (``Check failed: ...``, ``Unknown ...``).

    ``location`` is glog's ``file.cpp:N``; ``message`` has glog's trailing
    space stripped.
    """

    location: str
    message: str


@dataclass(slots=True)
class LogEnd(Record):
    """Last record of ``parse_log``: ``line`` is the number of lines, and
    ``other_lines`` how many were neither a record nor a solver parameter
    block (the net set-up, stack traces, interleaved foreign lines)."""

    other_lines: int


#: NVCaffe's lr line field sequences, by release (after ``lr = R``).
NVCAFFE_LR_FIELDS = (
    ("m",),
    ("m", "gs"),
    ("m", "wd", "gs"),
    ("m", "lrm", "wd", "gs"),
)

# ---------------------------------------------------------------------------
# The scanner
# ---------------------------------------------------------------------------

_CHUNK = 8 << 20
_MAX_BLOCK = 64 << 20

# %g as C++'s ostream prints a float: no '+' sign, lowercase exponent
_NUM = rb"-?(?:\d+(?:\.\d+)?(?:e[-+]\d+)?|inf|nan)"
_DEV = rb"(?:\[[\w.]+\] )?"  # NVCaffe's device tag, e.g. "[0] "
_GLOG_TIME = rb"(?:\d{8}|\d{4}) \d\d:\d\d:\d\d\.\d{6} +\S+ "

_ALTS = [
    (b"lr", _DEV + rb"Iteration (\d+), lr = (" + _NUM + rb")((?:, \w+ = " + _NUM + rb")*)"),
    (
        b"loss",
        rb" *" + _DEV + rb"Iteration (\d+) \((?:(" + _NUM + rb") iter/s, (" + _NUM + rb")s/(\d+) iters?|(" + _NUM
        + rb") s)\), (?:" + _NUM + rb"/" + _NUM + rb"ep, )?loss = (" + _NUM + rb")",
    ),
    (b"out", rb" {4}(?:\[[\w.]+\] {5})?(Train|Test) net output #(\d+): (.*?) = (" + _NUM
     + rb")(?: \(\* (" + _NUM + rb") = (" + _NUM + rb") loss\))?"),
    (b"sloss", _DEV + rb"Iteration (\d+), loss = (" + _NUM + rb")"),
    (b"testing", _DEV + rb"Iteration (\d+), Testing net(?: \(#(\d+)\))?"),
    (b"ms", rb"MultiStep Status: Iteration (\d+), step = (\d+)"),
    (b"clip", rb"Gradient clipping: scaling down gradients \(L2 norm (" + _NUM + rb") > (" + _NUM
     + rb")\) by scale factor (" + _NUM + rb")"),
    (b"snap", rb"Snapshotting (solver state )?to (?:(binary proto|HDF5) file )?(.+?)"),
    (b"tloss", rb"Test loss: (" + _NUM + rb")"),
    (b"score", rb"Test score #(\d+): (" + _NUM + rb")"),
    (b"restore", rb"Restoring previous solver status from (.+?)"),
    (b"solving", rb"Solving (.*?)"),
    (b"policy", rb"Learning Rate Policy: (.*?)"),
    (b"init", rb"Initializing solver from parameters: ?"),
    (b"stopped", rb"Optimization stopped early\."),
    (b"done", rb"Optimization Done\."),
    # a solver line that looks like one of the above but is not: refused
    (b"odd", rb"[^\r\n]*?(?:lr = |loss = |net output #|Test score #|MultiStep Status|Gradient clipping)[^\r\n]*?"),
]

_PATTERN = re.compile(
    rb"^(?:F" + _GLOG_TIME + rb"(?P<floc>[^\s\]]+)\] (?P<fatal>[^\r\n]*?)"
    + rb"|[IWE]" + _GLOG_TIME + rb"(?:[^\s\]]*/)?(?P<loc>\w*solver\w*\.cpp:\d+|caffe\.cpp:\d+)\] (?:"
    + b"|".join(b"(?P<" + name + b">" + alt + b")" for name, alt in _ALTS)
    + rb"))\r?$",
    re.M,
)
_GLOG_LINE = re.compile(rb"^[IWEF]" + _GLOG_TIME, re.M)
_EXTRA = re.compile(rb", (\w+) = (" + _NUM + rb")")

# kind codes (small ints are cheaper to dispatch on than names)
(K_LR, K_LOSS, K_OUT, K_SLOSS, K_TESTING, K_MS, K_CLIP, K_SNAP, K_TLOSS, K_SCORE, K_RESTORE, K_SOLVING,
 K_POLICY, K_INIT, K_STOPPED, K_DONE, K_ODD, K_FATAL) = range(18)
_KIND = {name.decode(): i for i, (name, _) in enumerate(_ALTS)}
_KIND["fatal"] = K_FATAL
# the outer group index of each alternative -> kind, for m.lastindex dispatch
_LASTINDEX = {}
for _name, _kind in _KIND.items():
    _LASTINDEX[_PATTERN.groupindex[_name]] = _kind
_G = _PATTERN.groupindex


def _grp(name: str, k: int = 1) -> int:
    """Index of the k-th capture group inside alternative ``name``."""
    return _G[name] + k


# Known Caffe sources (basename), to tell a Caffe log that died early (only a
# fatal line) from another glog program's.
_CAFFE_SOURCES = frozenset(
    "caffe.cpp solver.cpp net.cpp common.cpp blob.cpp syncedmem.cpp io.cpp upgrade_proto.cpp hdf5.cpp "
    "db.cpp db_lmdb.cpp db_leveldb.cpp layer_factory.hpp layer_factory.cpp layer.hpp layer.cpp parallel.cpp "
    "math_functions.cpp math_functions.hpp insert_splits.cpp signal_handler.cpp data_transformer.cpp "
    "internal_thread.cpp benchmark.cpp solver_factory.hpp sgd_solvers.hpp blob.hpp net.hpp filler.hpp "
    "im2col.cpp device_alternate.hpp".split()
)


def _is_caffe_source(loc: str) -> bool:
    base = loc.rsplit("/", 1)[-1].split(":", 1)[0]
    return (
        base in _CAFFE_SOURCES
        or "solver" in base
        or base.endswith(("_layer.cpp", "_layer.cu", "_layer.hpp"))
    )


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _line_text(buf: bytes, start: int) -> str:
    end = buf.find(b"\n", start)
    text = _dec(buf[start : end if end >= 0 else len(buf)]).rstrip("\r")
    return text if len(text) <= 160 else text[:157] + "..."


def _open(path) -> tuple[str, object]:
    p = os.fspath(path)
    try:
        f = open(p, "rb")
    except FileNotFoundError:
        raise InputError(p, "no such file") from None
    except IsADirectoryError:
        raise InputError(p, "is a directory, expected a Caffe log file") from None
    except PermissionError:
        raise InputError(p, "permission denied") from None
    except OSError as e:
        raise InputError(p, f"cannot read: {e.strerror or e}") from None
    return p, f


def _scan(path) -> Iterator[tuple]:
    """Yield ``(kind, line, match, buf)`` for every record line, then
    ``(None, total_lines, counted_lines, None)``.

    For ``K_INIT`` the item is ``(K_INIT, line, block_bytes, block_lines)``. Raises
    InputError for NUL bytes, a cut last line, an unsupported variant, an
    empty or non-Caffe file.
    """
    p, f = _open(path)
    with f:
        base = 0  # lines before buf
        carry = b""
        block: list[bytes] | None = None  # open solver parameter block
        block_size = 0
        block_start = 0
        block_lines = 0
        counted = 0  # record lines and solver parameter block lines
        caffe_seen = False
        lastindex = _LASTINDEX
        pattern = _PATTERN
        saw_any = False
        while True:
            data = f.read(_CHUNK)
            eof = not data
            if eof:
                if carry:
                    line = base + 1
                    # process what we have first, then refuse the cut line
                    if b"\x00" in carry:
                        raise InputError(p, "binary data (NUL bytes): not a text log", line=line)
                    raise InputError(
                        p,
                        f"last line has no end (truncated log?): {_line_text(carry, 0)!r}",
                        line=line,
                    )
                break
            saw_any = True
            cut = data.rfind(b"\n")
            if cut < 0:
                carry += data
                if len(carry) > _MAX_BLOCK:
                    raise InputError(p, f"no line end in the first {len(carry)} bytes: not a text log", line=base + 1)
                continue
            buf = carry + data[: cut + 1] if carry else data[: cut + 1]
            carry = data[cut + 1 :]
            if b"\x00" in buf:
                line = base + buf.count(b"\n", 0, buf.index(b"\x00")) + 1
                raise InputError(p, "binary data (NUL bytes): not a text log", line=line)
            pos = 0  # a line start; `line` is its number
            line = base + 1
            if block is not None:
                # continue an open parameter block up to the next glog line
                g = _GLOG_LINE.search(buf)
                end = g.start() if g else len(buf)
                block.append(buf[:end])
                block_size += end
                if block_size > _MAX_BLOCK:
                    raise InputError(p, "solver parameter block is too long", line=block_start)
                if g is not None:
                    n = buf.count(b"\n", 0, end)
                    block_lines += n
                    pos, line = end, base + n + 1
                    counted += 1 + block_lines
                    yield K_INIT, block_start, b"".join(block), block_lines
                    block = None
            if block is None:
                for m in pattern.finditer(buf, pos):
                    s = m.start()
                    line += buf.count(b"\n", pos, s)
                    pos = s
                    kind = lastindex[m.lastindex]
                    if kind == K_ODD:
                        if m.group("loc").startswith(b"caffe.cpp"):
                            continue  # e.g. `caffe test`'s "Batch 0, loss = L": not a solver line
                        raise InputError(
                            p,
                            f"unsupported variant of a Caffe solver line: {_line_text(buf, s)!r}",
                            line=line,
                        )
                    if kind == K_INIT:
                        e = m.end() + 1  # after the newline
                        g = _GLOG_LINE.search(buf, e)
                        end = g.start() if g else len(buf)
                        if g is None:
                            block = [buf[e:end]]
                            block_size = end - e
                            block_start = line
                            block_lines = buf.count(b"\n", e, end)
                            break  # rest of buf is the block
                        n = buf.count(b"\n", e, end)
                        counted += 1 + n
                        yield K_INIT, line, buf[e:end], n
                        continue
                    counted += 1
                    if kind == K_FATAL:
                        if not caffe_seen and _is_caffe_source(_dec(m.group("floc"))):
                            caffe_seen = True
                    else:
                        caffe_seen = True
                    yield kind, line, m, buf
            base += buf.count(b"\n")
        if block is not None:
            counted += 1 + block_lines
            yield K_INIT, block_start, b"".join(block), block_lines
        if not saw_any:
            raise InputError(p, "empty file: not a Caffe training log")
        if not caffe_seen:
            raise InputError(
                p,
                f"not a Caffe training log: none of its {base} lines is a Caffe solver line "
                "(expected glog lines such as 'solver.cpp:239] Iteration 0 (...), loss = ...')",
            )
        yield None, base, counted, None


def _f(b: bytes) -> float:
    return float(b)


def _opt_f(b: bytes | None) -> float | None:
    return None if b is None else float(b)


def _extra_fields(p: str, line: int, raw: bytes) -> dict:
    if not raw:
        return {}
    pairs = _EXTRA.findall(raw)
    keys = tuple(_dec(k) for k, _ in pairs)
    if keys not in NVCAFFE_LR_FIELDS:
        raise InputError(
            p,
            f"unsupported variant of the lr line: fields {', '.join(keys)} after 'lr = ' "
            f"(known: Caffe's plain 'lr = R' and NVCaffe's {'; '.join(', '.join(k) for k in NVCAFFE_LR_FIELDS)})",
            line=line,
        )
    return {k: float(v) for k, (_, v) in zip(keys, pairs)}


def _iter_int(p: str, line: int, b: bytes) -> int:
    v = int(b)
    if v > 2**31 - 1:
        raise InputError(p, f"iteration {v} does not fit Caffe's int", line=line)
    return v


# group indices used on the hot paths
_LR_IT, _LR_V, _LR_X = _grp("lr", 1), _grp("lr", 2), _grp("lr", 3)
_LS_IT, _LS_PS, _LS_LAPSE, _LS_DISP, _LS_LAPSE2, _LS_V = (_grp("loss", k) for k in range(1, 7))
_OUT_PH, _OUT_K, _OUT_NAME, _OUT_V, _OUT_W, _OUT_X = (_grp("out", k) for k in range(1, 7))
_SL_IT, _SL_V = _grp("sloss", 1), _grp("sloss", 2)
_TE_IT, _TE_NET = _grp("testing", 1), _grp("testing", 2)
_MS_IT, _MS_ST = _grp("ms", 1), _grp("ms", 2)
_CL_N, _CL_C, _CL_S = _grp("clip", 1), _grp("clip", 2), _grp("clip", 3)
_SN_STATE, _SN_FMT, _SN_FILE = _grp("snap", 1), _grp("snap", 2), _grp("snap", 3)
_TL_V = _grp("tloss", 1)
_SC_K, _SC_V = _grp("score", 1), _grp("score", 2)
_RE_FILE = _grp("restore", 1)
_SO_NAME = _grp("solving", 1)
_PO_NAME = _grp("policy", 1)
_FMT = {None: "", b"binary proto": "binaryproto", b"HDF5": "hdf5"}


def _record(p: str, kind: int, line: int, m, buf) -> Record:
    """Build the typed record of one scanned line."""
    if kind == K_LR:
        g = m.group
        v = g(_LR_V)
        return LearningRate(p, line, _iter_int(p, line, g(_LR_IT)), float(v), v.decode(),
                            _extra_fields(p, line, g(_LR_X)))
    if kind == K_OUT:
        g = m.group
        return NetOutput(p, line, "train" if g(_OUT_PH) == b"Train" else "test", int(g(_OUT_K)), _dec(g(_OUT_NAME)),
                         float(g(_OUT_V)), _opt_f(g(_OUT_W)), _opt_f(g(_OUT_X)))
    if kind == K_LOSS:
        g = m.group
        ps = g(_LS_PS)
        if ps is None:  # NVCaffe "(T s)" form
            return Loss(p, line, _iter_int(p, line, g(_LS_IT)), float(g(_LS_V)), None, float(g(_LS_LAPSE2)), None)
        return Loss(p, line, _iter_int(p, line, g(_LS_IT)), float(g(_LS_V)), float(ps), float(g(_LS_LAPSE)),
                    int(g(_LS_DISP)))
    if kind == K_SLOSS:
        return Loss(p, line, _iter_int(p, line, m.group(_SL_IT)), float(m.group(_SL_V)))
    if kind == K_TESTING:
        net = m.group(_TE_NET)
        return Testing(p, line, _iter_int(p, line, m.group(_TE_IT)), 0 if net is None else int(net))
    if kind == K_MS:
        return MultiStepStatus(p, line, _iter_int(p, line, m.group(_MS_IT)), int(m.group(_MS_ST)))
    if kind == K_CLIP:
        n, c, s = m.group(_CL_N, _CL_C, _CL_S)
        return GradientClipping(p, line, float(n), float(c), float(s), n.decode(), c.decode(), s.decode())
    if kind == K_SNAP:
        return Snapshot(p, line, "solverstate" if m.group(_SN_STATE) else "model", _FMT[m.group(_SN_FMT)],
                        _dec(m.group(_SN_FILE)))
    if kind == K_TLOSS:
        return TestLoss(p, line, float(m.group(_TL_V)))
    if kind == K_SCORE:
        return NetOutput(p, line, "test", int(m.group(_SC_K)), "", float(m.group(_SC_V)))
    if kind == K_RESTORE:
        return Restore(p, line, _dec(m.group(_RE_FILE)))
    if kind == K_SOLVING:
        return NetName(p, line, _dec(m.group(_SO_NAME)))
    if kind == K_POLICY:
        return LrPolicy(p, line, _dec(m.group(_PO_NAME)))
    if kind == K_STOPPED:
        return StoppedEarly(p, line)
    if kind == K_DONE:
        return OptimizationDone(p, line, _dec(m.group("loc")))
    if kind == K_FATAL:
        return Fatal(p, line, _dec(m.group("floc")), _dec(m.group("fatal")).rstrip())
    raise AssertionError(kind)  # pragma: no cover


def parse_log(path) -> Iterator[Record]:
    """Yield the typed records of a ``caffe train`` log, in file order.

    Streams the file in large chunks (constant memory). The last record is a
    :class:`LogEnd`. Raises :class:`InputError` (``file:line: problem``) for
    an empty file, a file with no Caffe solver line, binary data, a cut last
    line, an unsupported variant of a solver line, or a solver parameter
    block that does not end.
    """
    p = os.fspath(path)
    for kind, line, m, buf in _scan(p):
        if kind is None:
            yield LogEnd(p, line, line - m)
        elif kind == K_INIT:
            yield SolverParams(p, line, _dec(m))
        else:
            yield _record(p, kind, line, m, buf)


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


class Series:
    """A compact per-iteration series: ``iter`` (array 'q'), ``value``
    (array 'd') and the log ``line`` of each point (array 'q')."""

    __slots__ = ("iter", "value", "line")

    def __init__(self):
        self.iter = array("q")
        self.value = array("d")
        self.line = array("q")

    def append(self, it: int, value: float, line: int) -> None:
        """Add one point."""
        self.iter.append(it)
        self.value.append(value)
        self.line.append(line)

    def __len__(self) -> int:
        return len(self.iter)

    def __repr__(self) -> str:
        return f"Series({len(self)} points)"

    def to_numpy(self):
        """``(iter int64, value float64, line int64)`` numpy arrays (zero copy)."""
        import numpy as np

        return (
            np.frombuffer(self.iter, dtype=np.int64),
            np.frombuffer(self.value, dtype=np.float64),
            np.frombuffer(self.line, dtype=np.int64),
        )


class OutputKey(NamedTuple):
    """Names one net output element: phase ``"train"``/``"test"``, the test
    net number (0 for train), Caffe's running index ``#k`` and blob name."""

    phase: str
    net: int
    index: int
    name: str

    @property
    def label(self) -> str:
        """A column name: ``train#3:loss``, ``test0#1:accuracy``."""
        head = "train" if self.phase == "train" else f"test{self.net}"
        return f"{head}#{self.index}:{self.name}" if self.name else f"{head}#{self.index}"


@dataclass
class Run:
    """One training in a log: from ``Initializing solver`` to the next one.

    Records before the first ``Initializing solver`` line (a log that starts
    mid-run) form a run with ``params is None``. Per-iteration values are
    :class:`Series` of compact arrays; ``outputs`` maps :class:`OutputKey` to
    a series whose ``iter`` is the display (train) or test iteration, and
    ``loss_weights`` gives each output's loss weight (``None``: not a loss).
    ``clipping_iter`` is the iteration of the lr line just before each
    clipping line, or -1 when the update was not displayed.
    """

    path: str
    first_line: int
    last_line: int = 0
    params: SolverParams | None = None
    net_name: str | None = None
    lr_policy: str | None = None
    restore: Restore | None = None
    lr: Series = field(default_factory=Series)
    lr_extra: dict = field(default_factory=dict)
    loss: Series = field(default_factory=Series)
    final_loss: Loss | None = None
    multistep: Series = field(default_factory=Series)
    tests: Series = field(default_factory=Series)
    test_loss: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    loss_weights: dict = field(default_factory=dict)
    clipping: list = field(default_factory=list)
    clipping_iter: array = field(default_factory=lambda: array("q"))
    snapshots: list = field(default_factory=list)
    stopped_early: bool = False
    done: bool = False
    fatal: Fatal | None = None

    @property
    def resumed(self) -> bool:
        """True when the run restored a ``.solverstate``."""
        return self.restore is not None

    @property
    def complete(self) -> bool:
        """Ended normally (``Optimization Done.`` or ``stopped early``), not
        killed, truncated at a line end, or fatal."""
        return (self.done or self.stopped_early) and self.fatal is None

    def config(self):
        """The run's own ``SolverConfig`` from its parameter block."""
        if self.params is None:
            raise InputError(self.path, "this run has no 'Initializing solver from parameters' block",
                             line=self.first_line)
        return self.params.config()

    def output_columns(self) -> list:
        """Output keys in first-seen order."""
        return list(self.outputs)


def read_runs(path) -> list[Run]:
    """Parse a log into its trainings (one :class:`Run` per ``Initializing solver``).

    Memory is bounded by the number of logged values (compact arrays), not
    by the file size. Same errors as :func:`parse_log`.
    """
    p = os.fspath(path)
    runs: list[Run] = []
    run: Run | None = None
    cur_iter = -1  # iteration of the last display line (train outputs)
    test_iter = -1
    test_net = 0
    lr_iter = -1  # iteration of the last lr line, -1 after any other update line
    for kind, line, m, buf in _scan(p):
        if kind is None:
            break
        if run is None or kind == K_INIT:
            if run is not None:
                runs.append(run)
            run = Run(p, line)
            cur_iter = test_iter = lr_iter = -1
            test_net = 0
        run.last_line = line
        if kind == K_OUT:
            g = m.group
            if g(_OUT_PH) == b"Train":
                key = OutputKey("train", 0, int(g(_OUT_K)), _dec(g(_OUT_NAME)))
                it = cur_iter
            else:
                key = OutputKey("test", test_net, int(g(_OUT_K)), _dec(g(_OUT_NAME)))
                it = test_iter
            s = run.outputs.get(key)
            if s is None:
                s = run.outputs[key] = Series()
                w = g(_OUT_W)
                run.loss_weights[key] = None if w is None else float(w)
            s.append(it, float(g(_OUT_V)), line)
        elif kind == K_LR:
            it = _iter_int(p, line, m.group(_LR_IT))
            run.lr.append(it, float(m.group(_LR_V)), line)
            x = m.group(_LR_X)
            if x or run.lr_extra:
                extra = _extra_fields(p, line, x)
                n = len(run.lr) - 1
                for k in extra:
                    if k not in run.lr_extra:
                        run.lr_extra[k] = array("d", [float("nan")]) * n
                for k, arr in run.lr_extra.items():
                    arr.append(extra.get(k, float("nan")))
            lr_iter = it
            continue
        elif kind == K_LOSS:
            cur_iter = _iter_int(p, line, m.group(_LS_IT))
            run.loss.append(cur_iter, float(m.group(_LS_V)), line)
        elif kind == K_CLIP:
            run.clipping.append(_record(p, kind, line, m, buf))
            run.clipping_iter.append(lr_iter)
        elif kind == K_SLOSS:
            cur_iter = _iter_int(p, line, m.group(_SL_IT))
            v = float(m.group(_SL_V))
            run.loss.append(cur_iter, v, line)
            run.final_loss = Loss(p, line, cur_iter, v)
        elif kind == K_MS:
            run.multistep.append(_iter_int(p, line, m.group(_MS_IT)), int(m.group(_MS_ST)), line)
        elif kind == K_SNAP:
            run.snapshots.append(_record(p, kind, line, m, buf))
        elif kind == K_TESTING:
            rec = _record(p, kind, line, m, buf)
            test_iter, test_net = rec.iter, rec.net
            run.tests.append(rec.iter, rec.net, line)
        elif kind == K_TLOSS:
            s = run.test_loss.get(test_net)
            if s is None:
                s = run.test_loss[test_net] = Series()
            s.append(test_iter, float(m.group(_TL_V)), line)
        elif kind == K_SCORE:
            key = OutputKey("test", test_net, int(m.group(_SC_K)), "")
            s = run.outputs.get(key)
            if s is None:
                s = run.outputs[key] = Series()
                run.loss_weights[key] = None
            s.append(test_iter, float(m.group(_SC_V)), line)
        elif kind == K_INIT:
            run.params = SolverParams(p, line, _dec(m))
            run.last_line = line + buf
        elif kind == K_SOLVING:
            run.net_name = _dec(m.group(_SO_NAME))
        elif kind == K_POLICY:
            run.lr_policy = _dec(m.group(_PO_NAME))
        elif kind == K_RESTORE:
            run.restore = _record(p, kind, line, m, buf)
        elif kind == K_STOPPED:
            run.stopped_early = True
        elif kind == K_DONE:
            run.done = True
        elif kind == K_FATAL:
            if run.fatal is None:
                run.fatal = _record(p, kind, line, m, buf)
        lr_iter = -1
    if run is not None:
        runs.append(run)
    return runs
