"""Streaming parser for the glog output of ``caffe train``.

Reads the log of Caffe 1.0, master (the Debian ``1.0.0+git20180821`` build),
the older releases (``rc``..``rc5``, ``v0.9``..``v0.9999``) and NVCaffe, in
large binary chunks, and turns the solver's lines into typed records::

    for rec in parse_log("caffe.log"):
        if isinstance(rec, LearningRate):
            print(rec.line, rec.iter, rec.lr)

or groups them into trainings with compact per-iteration series (the fast
path: ``benchmarks/bench_logs.py`` measures it)::

    [run] = read_runs("caffe.log")
    run.lr.iter, run.lr.value, run.lr.line      # array('q'), array('d'), array('q')

Lines and their order (``SEMANTICS.md`` §1, Caffe's ``solver.cpp`` and
``sgd_solver.cpp``; line numbers of master)::

    solver.cpp:45] Initializing solver from parameters:      (+ text block)
    solver.cpp:289] Solving NAME
    solver.cpp:290] Learning Rate Policy: P
    caffe.cpp:235] Resuming from FILE                        (caffe train --snapshot=FILE)
    solver.cpp:296] Restoring previous solver status from FILE  (Solver::Solve(FILE))
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

What is a record: a line whose glog location (the token before ``] ``) ends
in ``solver.cpp:N`` or ``caffe.cpp:N`` and whose message has one of the
shapes above, whatever precedes the location (so ``mpirun --tag-output``
prefixes are fine); a fatal record is a line starting with glog's ``F``
prefix. Every other line (the net set-up, stack traces, interleaved foreign
programs) is ignored and counted (:class:`LogEnd`). Numbers are what glog
printed (``%g``, 6 significant digits); ``nan``, ``-nan``, ``inf`` and
``-inf`` parse as floats.

Bad input is an ``InputError`` naming ``file:line``: an empty file, a file
with no Caffe solver line at all ("not a Caffe training log"), NUL bytes
(binary data), a last line without its newline (a truncated log) and an
unsupported variant of a solver line.

Implementation: ``read_runs`` reads 8 MB chunks of whole lines and has
three ways through a chunk, all giving the per-line path's result:

* the numba scanner (``harness.kernels.logscan``, for large files: numba
  starts only when that pays off): one pass over the bytes classifies every
  candidate line of the per-line path, parses the frequent shapes (display,
  train outputs, lr, clipping) and their ``%g`` numbers itself (exactly, or
  leaves a number to ``float()``), and hands back the rest, which are
  matched here with the per-line regex one by one; the series are then
  filled by numpy, run by run. Cross-checks: the scanner saw every line and
  every ``solver.cpp:`` of the chunk, the rare lines hold no frequent kind
  in an unusual form;
* the regex passes (smaller files): a few literal-anchored regular
  expressions in bulk plus a per-line parse of the rare lines, checked by
  counting that every solver line of the chunk was accounted for;
* the per-line path: any chunk where a check fails is parsed again line by
  line by the same code ``parse_log`` uses.

``benchmarks/bench_logs.py`` measures the throughput.
"""

from __future__ import annotations

import os
import re
import sys
from array import array
from bisect import bisect_left
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
    "ClipSeries",
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
    """A resumed run: ``caffe.cpp] Resuming from FILE`` (``caffe train
    --snapshot=FILE``) or ``solver.cpp] Restoring previous solver status
    from FILE`` (``Solver::Solve(FILE)``: pycaffe, multi-GPU); ``location``
    tells which."""

    file: str
    location: str = ""


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
    after that update's lr line (which only shows on display iterations).
    """

    l2norm: float
    clip_gradients: float
    scale_factor: float


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
# Patterns
# ---------------------------------------------------------------------------

_CHUNK = 8 << 20
_MAX_BLOCK = 64 << 20

# A number as glog prints it (%g: "0.02", "-1.5e-05", "inf", "-nan"). This
# is exactly the set of strings over _NUM_CHARS that Python's float()
# accepts, so the bulk path may validate with a character check + float().
_NUM = rb"[-+]?(?:(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|inf|nan)"
_NUM_CHARS = b"0123456789.-+einaf"
_NUM_RE = re.compile(_NUM)
_NUMS_RE = re.compile(rb"(?:" + _NUM + rb" )*" + _NUM)
_DEV = rb"(?:\[[\w.]+\] ?)?"  # NVCaffe's device tag, e.g. "[0] "

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
    (b"restore", _DEV + rb"Restoring previous solver status from (.+?)"),
    (b"resuming", rb"Resuming from (.+?)"),  # caffe.cpp, `caffe train --snapshot=FILE`
    (b"solving", _DEV + rb"Solving (.*?)(?: Learning Rate Policy: (.*?))?"),  # NVCaffe: one line
    (b"policy", rb"Learning Rate Policy: (.*?)"),
    (b"init", rb"Initializing solver from parameters: ?"),
    (b"stopped", _DEV + rb"Optimization stopped early\."),
    (b"done", rb"Optimization Done\."),
    # a solver line that looks like one of the above but is not: refused
    (b"odd", rb".*?(?:lr = |loss = |net output #|Test score #|MultiStep Status|Gradient clipping).*?"),
]

#: one line (match with pos = line start, endpos = line end): a fatal line,
#: or a solver/caffe.cpp line with one of the message shapes, else no match
_REC = re.compile(
    rb"(?:F(?:\d{8}|\d{4}) \d\d:\d\d:\d\d\.\d{6} +\S+ (?P<floc>[^\s\]]+)\] (?P<fatal>.*?)"
    + rb"|.*?(?<!\S)(?P<loc>\S*?(?:solver|caffe)\.cpp:\d+)\] (?:"
    + b"|".join(b"(?P<" + name + b">" + alt + b")" for name, alt in _ALTS)
    + rb"))\r?\Z"
)

# kind codes
(K_LR, K_LOSS, K_OUT, K_SLOSS, K_TESTING, K_MS, K_CLIP, K_SNAP, K_TLOSS, K_SCORE, K_RESTORE, K_RESUMING,
 K_SOLVING, K_POLICY, K_INIT, K_STOPPED, K_DONE, K_ODD, K_FATAL) = range(19)
_KIND_BY_GROUP = {}
for _i, (_name, _alt) in enumerate(_ALTS):
    _KIND_BY_GROUP[_REC.groupindex[_name.decode()]] = _i
_KIND_BY_GROUP[_REC.groupindex["fatal"]] = K_FATAL
#: the _REC kind of each scanner event kind (harness.kernels.logscan.EV_*)
_KIND_OF_EVENT = (None, K_LOSS, K_SLOSS, K_OUT, K_LR, K_CLIP)
_G = _REC.groupindex


def _grp(name: str, k: int) -> int:
    return _G[name] + k


_LR_IT, _LR_V, _LR_X = (_grp("lr", k) for k in (1, 2, 3))
_LS_IT, _LS_PS, _LS_LAPSE, _LS_DISP, _LS_LAPSE2, _LS_V = (_grp("loss", k) for k in range(1, 7))
_OUT_PH, _OUT_K, _OUT_NAME, _OUT_V, _OUT_W, _OUT_X = (_grp("out", k) for k in range(1, 7))
_SL_IT, _SL_V = _grp("sloss", 1), _grp("sloss", 2)
_TE_IT, _TE_NET = _grp("testing", 1), _grp("testing", 2)
_MS_IT, _MS_ST = _grp("ms", 1), _grp("ms", 2)
_CL_N, _CL_C, _CL_S = (_grp("clip", k) for k in (1, 2, 3))
_SN_STATE, _SN_FMT, _SN_FILE = (_grp("snap", k) for k in (1, 2, 3))
_TL_V = _grp("tloss", 1)
_SC_K, _SC_V = _grp("score", 1), _grp("score", 2)
_RE_FILE = _grp("restore", 1)
_RS_FILE = _grp("resuming", 1)
_SO_NAME, _SO_POLICY = _grp("solving", 1), _grp("solving", 2)
_PO_NAME = _grp("policy", 1)
_FMT = {None: "", b"binary proto": "binaryproto", b"HDF5": "hdf5"}

#: where a solver parameter block ends: the next line with a glog location
_BLOCK_END = re.compile(rb"^[^\n]*\.(?:cpp|hpp|cu|cc|h):\d+\] ", re.M)
_EXTRA = re.compile(rb", (\w+) = (" + _NUM + rb")")


def _after_solver_loc(lit: bytes) -> bytes:
    """A lookbehind: ``lit`` is preceded by ``solver.cpp:N`` (1-4 digits)."""
    return b"(?:" + b"|".join(
        b"(?<=solver\\.cpp:" + b"\\d" * k + re.escape(lit) + b")" for k in (1, 2, 3, 4)
    ) + b")"


# Bulk patterns (literal-prefixed so the regex engine skips other lines at
# memchr speed). Each matches a subset of what _REC accepts, with the same
# values; anything they miss is caught by the solver-line count.
_FAST_DISP = re.compile(  # display lines, both forms
    rb"\] Iteration " + _after_solver_loc(b"] Iteration ")
    + rb"(\d+)(?: \(" + _NUM + rb" iter/s, " + _NUM + rb"s/\d+ iters\)(), |, )loss = (\S+)\r?\n"
)
_OUT_LIT = b"]     Train net output #"
_FAST_OUT = re.compile(  # train outputs: (index: name, value, loss weight, weighted value)
    # loss weight 1 prints the same float twice: matched by a backreference,
    # so the common line allocates only its key and value
    re.escape(_OUT_LIT) + _after_solver_loc(_OUT_LIT)
    + rb"(\d+: [^ \r\n]*) = ([^ \r\n]+)(?: \(\* (?:(1) = \2|([^ \r\n]+) = ([^ \r\n]+)) loss\))?\r?\n"
)
_FAST_LR = re.compile(
    rb"\] Iteration " + _after_solver_loc(b"] Iteration ") + rb"(\d+), lr = (" + _NUM + rb")((?:, \w+ = "
    + _NUM + rb")*)\r?\n"
)
_FAST_CLIP = re.compile(
    rb"\] Gradient clipping: " + _after_solver_loc(b"] Gradient clipping: ")
    + rb"scaling down gradients \(L2 norm (" + _NUM + rb") > (" + _NUM + rb")\) by scale factor (" + _NUM
    + rb")\r?\n"
)
#: solver lines that are none of the bulk kinds: parsed one by one
_FAST_RARE = re.compile(
    rb"solver\.cpp:\d+\] (?!Iteration \d+(?: \(|, lr = |, loss = )|    Train net output #|Gradient clipping: )"
)

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
    return base in _CAFFE_SOURCES or "solver" in base or base.endswith(("_layer.cpp", "_layer.cu", "_layer.hpp"))


def _dec(b: bytes) -> str:
    return b.decode("utf-8", "replace")


def _line_text(buf: bytes, start: int) -> str:
    end = buf.find(b"\n", start)
    text = _dec(buf[start : end if end >= 0 else len(buf)]).rstrip("\r")
    return text if len(text) <= 160 else text[:157] + "..."


def _iter_int(p: str, line: int, b: bytes) -> int:
    v = int(b)
    if v > 2**31 - 1:
        raise InputError(p, f"iteration {v} does not fit Caffe's int", line=line)
    return v


def _extra_fields(p: str, line: int, raw: bytes) -> dict:
    if not raw:
        return {}
    pairs = _EXTRA.findall(raw)
    keys = tuple(_dec(k) for k, _ in pairs)
    if keys not in NVCAFFE_LR_FIELDS:
        raise InputError(
            p,
            f"unsupported variant of the lr line: fields {', '.join(keys)} after 'lr = R' "
            f"(known: Caffe's plain 'lr = R' and NVCaffe's {'; '.join(', '.join(k) for k in NVCAFFE_LR_FIELDS)})",
            line=line,
        )
    return {k: float(v) for k, (_, v) in zip(keys, pairs)}


def _opt_f(b: bytes | None) -> float | None:
    return None if b is None else float(b)


def _record(p: str, kind: int, line: int, m) -> Record:
    """The typed record of one line matched by ``_REC``."""
    g = m.group
    if kind == K_LR:
        v = g(_LR_V)
        return LearningRate(p, line, _iter_int(p, line, g(_LR_IT)), float(v), v.decode(),
                            _extra_fields(p, line, g(_LR_X)))
    if kind == K_OUT:
        return NetOutput(p, line, "train" if g(_OUT_PH) == b"Train" else "test", int(g(_OUT_K)), _dec(g(_OUT_NAME)),
                         float(g(_OUT_V)), _opt_f(g(_OUT_W)), _opt_f(g(_OUT_X)))
    if kind == K_LOSS:
        ps = g(_LS_PS)
        if ps is None:  # NVCaffe's "(T s)" form
            return Loss(p, line, _iter_int(p, line, g(_LS_IT)), float(g(_LS_V)), None, float(g(_LS_LAPSE2)), None)
        return Loss(p, line, _iter_int(p, line, g(_LS_IT)), float(g(_LS_V)), float(ps), float(g(_LS_LAPSE)),
                    int(g(_LS_DISP)))
    if kind == K_SLOSS:
        return Loss(p, line, _iter_int(p, line, g(_SL_IT)), float(g(_SL_V)))
    if kind == K_TESTING:
        net = g(_TE_NET)
        return Testing(p, line, _iter_int(p, line, g(_TE_IT)), 0 if net is None else int(net))
    if kind == K_MS:
        return MultiStepStatus(p, line, _iter_int(p, line, g(_MS_IT)), int(g(_MS_ST)))
    if kind == K_CLIP:
        return GradientClipping(p, line, float(g(_CL_N)), float(g(_CL_C)), float(g(_CL_S)))
    if kind == K_SNAP:
        return Snapshot(p, line, "solverstate" if g(_SN_STATE) else "model", _FMT[g(_SN_FMT)], _dec(g(_SN_FILE)))
    if kind == K_TLOSS:
        return TestLoss(p, line, float(g(_TL_V)))
    if kind == K_SCORE:
        return NetOutput(p, line, "test", int(g(_SC_K)), "", float(g(_SC_V)))
    if kind == K_RESTORE:
        return Restore(p, line, _dec(g(_RE_FILE)), _dec(g("loc")))
    if kind == K_RESUMING:
        return Restore(p, line, _dec(g(_RS_FILE)), _dec(g("loc")))
    if kind == K_SOLVING:
        return NetName(p, line, _dec(g(_SO_NAME)))
    if kind == K_POLICY:
        return LrPolicy(p, line, _dec(g(_PO_NAME)))
    if kind == K_STOPPED:
        return StoppedEarly(p, line)
    if kind == K_DONE:
        return OptimizationDone(p, line, _dec(g("loc")))
    if kind == K_FATAL:
        return Fatal(p, line, _dec(g("floc")), _dec(g("fatal")).rstrip())
    raise AssertionError(kind)  # pragma: no cover


def _odd_error(p: str, buf: bytes, ls: int, line: int) -> InputError:
    return InputError(p, f"unsupported variant of a Caffe solver line: {_line_text(buf, ls)!r}", line=line)


# ---------------------------------------------------------------------------
# Reading: chunks of whole lines, solver parameter blocks
# ---------------------------------------------------------------------------


def _open(path):
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


def _chunks(p: str, f) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(buf, base, lines)``: whole lines, ``base`` lines before
    ``buf``, ``lines`` lines in it.

    Raises InputError on NUL bytes, a last line without newline, an empty
    file; yields ``(b"", total_lines, 0)`` last.
    """
    base = 0
    carry = b""
    empty = True
    while True:
        data = f.read(_CHUNK)
        if not data:
            if carry:
                if b"\x00" in carry:
                    raise InputError(p, "binary data (NUL bytes): not a text log", line=base + 1)
                raise InputError(p, f"last line has no end (truncated log?): {_line_text(carry, 0)!r}", line=base + 1)
            if empty:
                raise InputError(p, "empty file: not a Caffe training log")
            yield b"", base, 0
            return
        empty = False
        cut = data.rfind(b"\n")
        if cut < 0:
            carry += data
            if b"\x00" in carry:
                raise InputError(p, "binary data (NUL bytes): not a text log", line=base + 1)
            if len(carry) > _MAX_BLOCK:
                raise InputError(p, f"no line end in {len(carry)} bytes: not a text log", line=base + 1)
            continue
        buf = carry + data[: cut + 1] if carry else data[: cut + 1]
        carry = data[cut + 1 :]
        if b"\x00" in buf:
            line = base + buf.count(b"\n", 0, buf.index(b"\x00")) + 1
            raise InputError(p, "binary data (NUL bytes): not a text log", line=line)
        lines = buf.count(b"\n")
        yield buf, base, lines
        base += lines


class _Block:
    """An open solver parameter block (it may span chunks)."""

    __slots__ = ("line", "parts", "size", "lines")

    def __init__(self, line: int):
        self.line = line
        self.parts: list[bytes] = []
        self.size = 0
        self.lines = 0

    def add(self, p: str, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        self.lines += data.count(b"\n")
        if self.size > _MAX_BLOCK:
            raise InputError(p, "solver parameter block does not end", line=self.line)

    def text(self) -> str:
        return _dec(b"".join(self.parts))


def _continue_block(p: str, block: _Block, buf: bytes, pos: int) -> int:
    """Add the block's text in ``buf`` from ``pos``; return where it ends
    (the next glog line) or -1 if it runs past ``buf``."""
    g = _BLOCK_END.search(buf, pos)
    end = g.start() if g else len(buf)
    block.add(p, buf[pos:end])
    return end if g else -1


def _line_starts(buf: bytes, pos: int, end: int) -> list[int]:
    """Start of every candidate line in ``buf[pos:end]``: lines containing
    ``solver.cpp:`` or ``caffe.cpp:``, and lines starting with ``F``."""
    starts = set()
    find, rfind = buf.find, buf.rfind
    for lit in (b"solver.cpp:", b"caffe.cpp:"):
        i = find(lit, pos, end)
        while i >= 0:
            starts.add(rfind(b"\n", pos, i) + 1 or pos)
            i = find(b"\n", i, end)
            if i < 0:
                break
            i = find(lit, i, end)
    if buf.startswith(b"F", pos):
        starts.add(pos)
    i = find(b"\nF", pos, end)
    while i >= 0:
        starts.add(i + 1)
        i = find(b"\nF", i + 1, end)
    return sorted(starts)


def _scan_slow(p: str, buf: bytes, pos: int, end: int, line: int) -> Iterator[tuple]:
    """Yield ``(kind, line, match, line_start)`` for every record line of
    ``buf[pos:end]`` (``line`` is the number of the line at ``pos``),
    raising InputError on an unsupported variant."""
    last = pos
    match = _REC.match
    kinds = _KIND_BY_GROUP
    for ls in _line_starts(buf, pos, end):
        le = buf.find(b"\n", ls, end)
        m = match(buf, ls, le)
        if m is None:
            continue
        line += buf.count(b"\n", last, ls)
        last = ls
        kind = kinds[m.lastindex]
        if kind == K_ODD:
            if m.group("loc").startswith(b"caffe.cpp"):
                continue  # e.g. `caffe test`'s "Batch 0, loss = L": not a training line
            raise _odd_error(p, buf, ls, line)
        yield kind, line, m, ls


# ---------------------------------------------------------------------------
# parse_log: records in order
# ---------------------------------------------------------------------------


def parse_log(path) -> Iterator[Record]:
    """Yield the typed records of a ``caffe train`` log, in file order.

    Streams the file in large chunks (constant memory); the last record is
    a :class:`LogEnd`. Raises :class:`InputError` (``file:line: problem``)
    for an empty file, a file with no Caffe solver line, binary data, a cut
    last line, an unsupported variant of a solver line, or a solver
    parameter block that does not end.
    """
    p, f = _open(path)
    counted = 0  # record lines + parameter block lines
    caffe_seen = False
    block: _Block | None = None
    with f:
        for buf, base, _ in _chunks(p, f):
            if not buf:
                if block is not None:
                    counted += 1 + block.lines
                    yield SolverParams(p, block.line, block.text())
                if not caffe_seen:
                    raise _not_caffe(p, base)
                yield LogEnd(p, base, base - counted)
                return
            pos, end = 0, len(buf)
            while pos < end:
                if block is not None:
                    stop = _continue_block(p, block, buf, pos)
                    if stop < 0:
                        break
                    counted += 1 + block.lines
                    yield SolverParams(p, block.line, block.text())
                    block = None
                    pos = stop
                line0 = base + buf.count(b"\n", 0, pos) + 1
                for kind, line, m, ls in _scan_slow(p, buf, pos, end, line0):
                    if kind == K_INIT:
                        caffe_seen = True
                        block = _Block(line)
                        pos = m.end() + 1
                        break
                    counted += 1
                    if kind != K_FATAL or _is_caffe_source(_dec(m.group("floc"))):
                        caffe_seen = True
                    yield _record(p, kind, line, m)
                else:
                    pos = end


def _not_caffe(p: str, lines: int) -> InputError:
    return InputError(
        p,
        f"not a Caffe training log: none of its {lines} lines is a Caffe solver line "
        "(expected glog lines such as 'solver.cpp:239] Iteration 0 (...), loss = ...')",
    )


# ---------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------


class Series:
    """A compact per-iteration series: ``iter`` (array 'q'), ``value``
    (array 'd') and, where kept, the log ``line`` of each point (array 'q',
    else ``None``)."""

    __slots__ = ("iter", "value", "line")

    def __init__(self, lines: bool = True):
        self.iter = array("q")
        self.value = array("d")
        self.line = array("q") if lines else None

    def append(self, it: int, value: float, line: int = 0) -> None:
        """Add one point."""
        self.iter.append(it)
        self.value.append(value)
        if self.line is not None:
            self.line.append(line)

    def __len__(self) -> int:
        return len(self.iter)

    def __repr__(self) -> str:
        return f"Series({len(self)} points)"

    def to_numpy(self):
        """``(iter, value)`` as int64/float64 numpy arrays (no copy)."""
        import numpy as np

        return np.frombuffer(self.iter, dtype=np.int64), np.frombuffer(self.value, dtype=np.float64)


class ClipSeries:
    """The ``Gradient clipping`` lines of a run, as compact arrays.

    ``iter`` is the iteration of the lr line on the line just before (the
    same update), or -1 when that update's lr was not displayed.
    """

    __slots__ = ("iter", "l2norm", "clip_gradients", "scale_factor", "line")

    def __init__(self):
        self.iter = array("q")
        self.l2norm = array("d")
        self.clip_gradients = array("d")
        self.scale_factor = array("d")
        self.line = array("q")

    def append(self, it: int, l2norm: float, clip: float, scale: float, line: int) -> None:
        """Add one clipping line."""
        self.iter.append(it)
        self.l2norm.append(l2norm)
        self.clip_gradients.append(clip)
        self.scale_factor.append(scale)
        self.line.append(line)

    def __len__(self) -> int:
        return len(self.iter)

    def __repr__(self) -> str:
        return f"ClipSeries({len(self)} lines)"


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
    mid-run) form a run with ``params is None`` and ``first_line`` 1.
    ``lr``, ``multistep`` (value = step) and ``tests`` (value = test net)
    keep the log line of each point; ``loss`` and ``outputs`` do not.
    ``outputs`` maps :class:`OutputKey` to a series whose ``iter`` is the
    display (train) or test iteration; ``loss_weights`` gives each output's
    loss weight (``None``: not a loss). ``final_loss`` is ``(iter, loss)`` of
    the last short-form loss line (the forward-only pass after training).
    """

    path: str
    first_line: int
    last_line: int = 0
    params: SolverParams | None = None
    net_name: str | None = None
    lr_policy: str | None = None
    lr_policy_line: int = 0
    restore: Restore | None = None
    lr: Series = field(default_factory=Series)
    lr_extra: dict = field(default_factory=dict)
    loss: Series = field(default_factory=lambda: Series(lines=False))
    final_loss: tuple | None = None
    multistep: Series = field(default_factory=Series)
    tests: Series = field(default_factory=Series)
    test_loss: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    loss_weights: dict = field(default_factory=dict)
    clipping: ClipSeries = field(default_factory=ClipSeries)
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
        """Ended normally (``Optimization Done.`` or stopped early), not
        killed, cut at a line end, or fatal."""
        return (self.done or self.stopped_early) and self.fatal is None

    def config(self):
        """The run's own ``SolverConfig`` from its parameter block."""
        if self.params is None:
            raise InputError(self.path, "this run has no 'Initializing solver from parameters' block",
                             line=self.first_line)
        return self.params.config()


class _State:
    """read_runs' state between records (and chunks)."""

    __slots__ = ("p", "runs", "run", "cur_iter", "test_iter", "test_net", "lr_line", "lr_iter", "caffe_seen",
                 "block")

    def __init__(self, p: str):
        self.p = p
        self.runs: list[Run] = []
        self.run: Run | None = None
        self.cur_iter = -1  # last display line: train outputs belong to it
        self.test_iter = -1
        self.test_net = 0
        self.lr_line = -2  # line of the last lr line: a clipping line right after it shares its iteration
        self.lr_iter = -1
        self.caffe_seen = False
        self.block: _Block | None = None

    def get_run(self) -> Run:
        if self.run is None:
            self.run = Run(self.p, 1)
            self.runs.append(self.run)
        return self.run

    def new_run(self, line: int) -> Run:
        if self.run is not None:
            self.run.last_line = line - 1
        self.run = Run(self.p, line)
        self.runs.append(self.run)
        self.cur_iter = self.test_iter = -1
        self.test_net = 0
        self.lr_line = -2
        return self.run

    def output_series(self, key: OutputKey, w) -> Series:
        run = self.run
        s = run.outputs.get(key)
        if s is None:
            s = run.outputs[key] = Series(lines=False)
            run.loss_weights[key] = None if w is None else float(w)
        return s

    def add_lr(self, it: int, v: float, x: bytes | None, line: int) -> None:
        run = self.get_run()
        run.lr.append(it, v, line)
        if x or run.lr_extra:
            extra = _extra_fields(self.p, line, x)
            n = len(run.lr) - 1
            for k in extra:
                if k not in run.lr_extra:
                    run.lr_extra[k] = array("d", [float("nan")]) * n
            for k, arr in run.lr_extra.items():
                arr.append(extra.get(k, float("nan")))
        self.lr_line, self.lr_iter = line, it

    def apply(self, kind: int, line: int, m) -> None:
        """Fold one ``_REC`` record (not K_INIT) into the current run."""
        self.caffe_seen = self.caffe_seen or kind != K_FATAL or _is_caffe_source(_dec(m.group("floc")))
        run = self.get_run()
        p = self.p
        g = m.group
        if kind == K_OUT:
            if g(_OUT_PH) == b"Train":
                key = OutputKey("train", 0, int(g(_OUT_K)), _dec(g(_OUT_NAME)))
                it = self.cur_iter
            else:
                key = OutputKey("test", self.test_net, int(g(_OUT_K)), _dec(g(_OUT_NAME)))
                it = self.test_iter
            self.output_series(key, g(_OUT_W)).append(it, float(g(_OUT_V)))
        elif kind == K_LR:
            self.add_lr(_iter_int(p, line, g(_LR_IT)), float(g(_LR_V)), g(_LR_X), line)
        elif kind == K_LOSS:
            self.cur_iter = _iter_int(p, line, g(_LS_IT))
            run.loss.append(self.cur_iter, float(g(_LS_V)))
        elif kind == K_CLIP:
            it = self.lr_iter if line == self.lr_line + 1 else -1
            run.clipping.append(it, float(g(_CL_N)), float(g(_CL_C)), float(g(_CL_S)), line)
        elif kind == K_SLOSS:
            self.cur_iter = _iter_int(p, line, g(_SL_IT))
            v = float(g(_SL_V))
            run.loss.append(self.cur_iter, v)
            run.final_loss = (self.cur_iter, v)
        elif kind == K_MS:
            run.multistep.append(_iter_int(p, line, g(_MS_IT)), int(g(_MS_ST)), line)
        elif kind == K_SNAP:
            run.snapshots.append(_record(p, kind, line, m))
        elif kind == K_TESTING:
            rec = _record(p, kind, line, m)
            self.test_iter, self.test_net = rec.iter, rec.net
            run.tests.append(rec.iter, rec.net, line)
        elif kind == K_TLOSS:
            s = run.test_loss.get(self.test_net)
            if s is None:
                s = run.test_loss[self.test_net] = Series(lines=False)
            s.append(self.test_iter, float(g(_TL_V)))
        elif kind == K_SCORE:
            key = OutputKey("test", self.test_net, int(g(_SC_K)), "")
            self.output_series(key, None).append(self.test_iter, float(g(_SC_V)))
        elif kind == K_SOLVING:
            run.net_name = _dec(g(_SO_NAME))
            if g(_SO_POLICY) is not None:
                run.lr_policy = _dec(g(_SO_POLICY))
                run.lr_policy_line = line
        elif kind == K_POLICY:
            run.lr_policy = _dec(g(_PO_NAME))
            run.lr_policy_line = line
        elif kind == K_RESTORE or kind == K_RESUMING:
            if run.restore is None:
                run.restore = _record(p, kind, line, m)
        elif kind == K_STOPPED:
            run.stopped_early = True
        elif kind == K_DONE:
            run.done = True
        elif kind == K_FATAL:
            if run.fatal is None:
                run.fatal = _record(p, kind, line, m)


def _start_block(st: _State, line: int, buf: bytes, pos: int) -> int:
    """An ``Initializing solver`` line at ``line``; its block starts at
    ``pos``. Returns where parsing resumes, or -1 if the block runs on."""
    st.caffe_seen = True
    run = st.new_run(line)
    st.block = _Block(line)
    stop = _continue_block(st.p, st.block, buf, pos)
    if stop >= 0:
        run.params = SolverParams(st.p, line, st.block.text())
        st.block = None
    return stop


def _slow_chunk(st: _State, buf: bytes, pos: int, base: int) -> None:
    """Fold ``buf[pos:]`` record by record (the reference path)."""
    end = len(buf)
    while pos < end:
        line0 = base + buf.count(b"\n", 0, pos) + 1
        for kind, line, m, ls in _scan_slow(st.p, buf, pos, end, line0):
            if kind == K_INIT:
                pos = _start_block(st, line, buf, m.end() + 1)
                if pos < 0:
                    return
                break
            st.apply(kind, line, m)
        else:
            return


_BAD_NUM = object()


def _floats(strs: list) -> array | object:
    """``array('d')`` of the byte strings, or _BAD_NUM if one is not a %g number."""
    if b"".join(strs).translate(None, _NUM_CHARS):
        return _BAD_NUM
    try:
        return array("d", map(float, strs))
    except ValueError:
        return _BAD_NUM


def _fast_chunk(st: _State, buf: bytes, pos0: int, base: int) -> bool:
    """Fold ``buf[pos0:]`` with bulk passes; False (state untouched) when the
    chunk needs the record-by-record path."""
    end = len(buf)
    n_solver = buf.count(b"solver.cpp:", pos0, end)
    # -- rare lines, one by one ---------------------------------------------
    starts = set()
    rfind = buf.rfind
    n_rare = 0
    for m in _FAST_RARE.finditer(buf, pos0, end):
        n_rare += 1
        starts.add(rfind(b"\n", pos0, m.start()) + 1 or pos0)
    find = buf.find
    i = find(b"caffe.cpp:", pos0, end)
    while i >= 0:
        starts.add(rfind(b"\n", pos0, i) + 1 or pos0)
        i = find(b"\n", i, end)
        i = find(b"caffe.cpp:", i, end) if i >= 0 else -1
    if buf.startswith(b"F", pos0):
        starts.add(pos0)
    i = find(b"\nF", pos0, end)
    while i >= 0:
        starts.add(i + 1)
        i = find(b"\nF", i + 1, end)
    rare = []  # (line start, kind, match)
    match = _REC.match
    for ls in sorted(starts):
        m = match(buf, ls, find(b"\n", ls, end))
        if m is None:
            continue
        kind = _KIND_BY_GROUP[m.lastindex]
        if kind == K_ODD:
            if m.group("loc").startswith(b"caffe.cpp"):
                continue
            return False  # let the ordered path report it
        if kind in (K_LR, K_LOSS, K_SLOSS, K_CLIP) or (kind == K_OUT and m.group(_OUT_PH) == b"Train"):
            return False  # a bulk kind in an unusual form: keep the order exact
        rare.append((ls, kind, m))
    lrs = list(_FAST_LR.finditer(buf, pos0, end))
    clips = list(_FAST_CLIP.finditer(buf, pos0, end))
    # -- segments between Initializing lines --------------------------------
    cuts = [pos0] + [ls for ls, kind, _ in rare if kind == K_INIT] + [end]
    segs = []
    n_a = 0
    for a, b in zip(cuts, cuts[1:]):
        if a == b:
            continue
        disp = list(_FAST_DISP.finditer(buf, a, b))
        outs = _FAST_OUT.findall(buf, a, b)
        n_a += len(disp) + len(outs)
        segs.append((a, b, disp, outs))
    if n_solver != n_a + len(lrs) + len(clips) + n_rare:
        return False
    # -- numbers and structure (still no state change) ----------------------
    plans = []
    for a, b, disp, outs in segs:
        plan = _plan_segment(buf, a, b, disp, outs)
        if plan is None:
            return False
        plans.append(plan)
    lr_pos = [m.start() for m in lrs]
    lr_g = [m.groups() for m in lrs]
    lr_vals = _floats([g[1] for g in lr_g])
    lr_its = [int(g[0]) for g in lr_g]
    if lr_vals is _BAD_NUM or (lr_its and max(lr_its) > 2**31 - 1):
        return False
    lr_extra = any(g[2] for g in lr_g)
    clip_pos = [m.start() for m in clips]
    clip_g = [m.groups() for m in clips]
    clip_vals = [_floats([g[k] for g in clip_g]) for k in range(3)]
    # line numbers of every positioned record (vectorized)
    rare_pos = [ls for ls, _, _ in rare]
    lines = _line_numbers(buf, base, lr_pos + clip_pos + rare_pos)
    n_lr, n_clip = len(lr_pos), len(clip_pos)
    lr_lines, clip_lines, rare_lines = lines[:n_lr], lines[n_lr : n_lr + n_clip], lines[n_lr + n_clip :]
    # -- commit ----------------------------------------------------------------
    rare_i = lr_i = clip_i = 0
    lr_by_line = {st.lr_line: st.lr_iter}  # a clipping line's lr line may end the previous chunk
    stop = pos0
    for (a, b, disp, outs), plan in zip(segs, plans):
        if rare_i < len(rare) and rare[rare_i][0] == a and rare[rare_i][1] == K_INIT:
            ls, _, m = rare[rare_i]
            stop = _start_block(st, rare_lines[rare_i], buf, m.end() + 1)
            rare_i += 1
            if stop < 0:
                return True  # the rest of the chunk is the block
            lr_by_line = {}
        if outs:  # new output series in line order, among the rare lines' (as the per-line path)
            for pos, key, w in _new_train_outputs(st, buf, a, b, outs):
                while rare_i < len(rare) and rare[rare_i][0] < pos:
                    ls, kind, m = rare[rare_i]
                    if ls >= stop:
                        st.apply(kind, rare_lines[rare_i], m)
                    rare_i += 1
                st.output_series(key, w)
        if disp or outs:
            _commit_segment(st, plan)
        lr_j = bisect_left(lr_pos, b, lr_i)
        if lr_j > lr_i:
            run = st.get_run()
            if lr_extra or run.lr_extra:
                for i in range(lr_i, lr_j):
                    st.add_lr(lr_its[i], lr_vals[i], lr_g[i][2], lr_lines[i])
            else:
                run.lr.iter.extend(lr_its[lr_i:lr_j])
                run.lr.value.extend(lr_vals[lr_i:lr_j])
                run.lr.line.extend(lr_lines[lr_i:lr_j])
                st.lr_line, st.lr_iter = lr_lines[lr_j - 1], lr_its[lr_j - 1]
            lr_by_line.update(zip(lr_lines[lr_i:lr_j], lr_its[lr_i:lr_j]))
            lr_i = lr_j
        clip_j = bisect_left(clip_pos, b, clip_i)
        if clip_j > clip_i:
            if any(v is _BAD_NUM for v in clip_vals):
                raise AssertionError("clip numbers were matched by _NUM")  # pragma: no cover
            c = st.get_run().clipping
            ls_ = clip_lines[clip_i:clip_j]
            c.iter.extend([lr_by_line.get(ln - 1, -1) for ln in ls_])
            c.l2norm.extend(clip_vals[0][clip_i:clip_j])
            c.clip_gradients.extend(clip_vals[1][clip_i:clip_j])
            c.scale_factor.extend(clip_vals[2][clip_i:clip_j])
            c.line.extend(ls_)
            clip_i = clip_j
        while rare_i < len(rare) and rare[rare_i][0] < b:
            ls, kind, m = rare[rare_i]
            if ls >= stop:  # not a line of the parameter block (the per-line path skips those)
                st.apply(kind, rare_lines[rare_i], m)
            rare_i += 1
    return True


def _new_train_outputs(st: _State, buf: bytes, a: int, b: int, outs: list) -> list:
    """``(position, key, loss weight)`` of the first line of each train
    output of ``buf[a:b]`` (``_FAST_OUT`` tuples) that has no series yet,
    in line order. Every output-like line there is a strict match (checked
    by counting), so the first ``KEY = `` after the literal is that line."""
    first: dict = {}
    for i, t in enumerate(outs):
        if t[0] not in first:
            first[t[0]] = i
    run = st.get_run()
    new = []
    for kb, i in first.items():
        key = OutputKey("train", 0, *_key(kb))
        if key not in run.outputs:
            new.append((buf.find(_OUT_LIT + kb + b" = ", a, b), key, outs[i][2] or outs[i][3] or None))
    new.sort(key=lambda x: x[0])
    return new


def _line_numbers(buf: bytes, base: int, positions: list) -> array:
    """Line number (1-based, file-wide) of each byte position in ``buf``."""
    if not positions:
        return array("q")
    import numpy as np

    nl = np.flatnonzero(np.frombuffer(buf, dtype=np.uint8) == 10)
    lines = np.searchsorted(nl, np.asarray(positions, dtype=np.int64)) + (base + 1)
    return array("q", lines.astype(np.int64).tobytes())


def _plan_segment(buf: bytes, a: int, b: int, disp: list, outs: list):
    """Check and convert one segment's display lines (matches) and train
    outputs (``_FAST_OUT`` tuples), without touching any state.

    Outputs belong to the last display line before them: the number of
    output lines between consecutive display lines is counted in the buffer
    (every such line is a strict match, or the solver-line count fails).
    Returns ``(orphans, (iters, losses, short), columns)`` or None when a
    number is not %g or a line has a shape only the ordered path handles;
    ``orphans`` come before the first display line (they belong to the
    previous chunk's), ``columns`` is a list of ``(index, name, w, values,
    iters)``, one per output column, or one per output when irregular.
    """
    nd = len(disp)
    g = [m.groups() for m in disp]
    iters = array("q", [int(x[0]) for x in g])
    losses = _floats([x[2] for x in g])
    if losses is _BAD_NUM or (iters and max(iters) > 2**31 - 1):
        return None
    short = [x[1] is None for x in g]
    n = len(outs)
    if not n:
        return [], (iters, losses, short), []
    keys = [t[0] for t in outs]
    vals = _floats([t[1] for t in outs])
    if vals is _BAD_NUM:
        return None
    ws = [t[2] or t[3] for t in outs]
    other = [t[3] + b" " + t[4] for t in outs if t[3]]  # weight and weighted value not matched as "1 = value"
    if other and _NUMS_RE.fullmatch(b" ".join(other)) is None:
        return None
    # output lines per display line
    pos = [m.start() for m in disp]
    o = buf.count(_OUT_LIT, a, pos[0]) if nd else n
    counts = [buf.count(_OUT_LIT, s, e) for s, e in zip(pos, pos[1:] + [b])]
    if o + sum(counts) != n:
        return None  # an output-like line that is not a strict match
    orphans = [(keys[i], ws[i] or None, vals[i : i + 1], None) for i in range(o)]
    if not nd:
        return orphans, (iters, losses, short), []
    K = counts[0]
    columns = []
    regular = all(c == K for c in counts[:-1]) and counts[-1] <= K
    if regular and K:
        disp_keys = keys[o:]
        for c in range(K):
            col = disp_keys[c::K]
            if col.count(col[0]) != len(col):
                regular = False
                break
        if regular and len(set(disp_keys[:K])) != K:
            regular = False  # one column per output, or it would append out of order
    if regular:
        for c in range(min(K, n - o)):
            values = vals[o + c :: K]
            columns.append((keys[o + c], ws[o + c] or None, values, iters[: len(values)]))
    else:
        i = o
        for it, c in zip(iters, counts):
            for j in range(i, i + c):
                columns.append((keys[j], ws[j] or None, vals[j : j + 1], [it]))
            i += c
    return orphans, (iters, losses, short), columns


def _commit_segment(st: _State, plan) -> None:
    orphans, (iters, losses, short), columns = plan
    run = st.get_run()
    st.caffe_seen = True
    for kb, w, values, _ in orphans:
        k, name = _key(kb)
        st.output_series(OutputKey("train", 0, k, name), w).append(st.cur_iter, values[0])
    for kb, w, values, its in columns:
        k, name = _key(kb)
        s = st.output_series(OutputKey("train", 0, k, name), w)
        s.iter.extend(its)
        s.value.extend(values)
    if iters:
        run.loss.iter.extend(iters)
        run.loss.value.extend(losses)
        st.cur_iter = iters[-1]
        for j in range(len(short) - 1, -1, -1):
            if short[j]:
                run.final_loss = (iters[j], losses[j])
                break


def _key(kb: bytes) -> tuple[int, str]:
    k, name = kb.split(b": ", 1)
    return int(k), _dec(name)


# ---------------------------------------------------------------------------
# The numba scanner (large logs)
# ---------------------------------------------------------------------------

#: read_runs uses the numba scanner for files of at least this many bytes:
#: below, numba's start-up (~1.1 s CPU: import, first kernel load) costs more
#: than the scanner saves over the regex passes (~0.021 s/MB)
_SCAN_MIN = 48 << 20
#: the same once numba is loaded (another kernel ran): the scanner's own
#: load is ~0.02 s
_SCAN_MIN_LOADED = 1 << 20


def _use_scanner(size: int) -> bool:
    """Whether read_runs scans a file of ``size`` bytes with the numba scanner."""
    return size >= (_SCAN_MIN_LOADED if "numba" in sys.modules else _SCAN_MIN)

#: distinct train output keys per chunk the scanner tracks (more: regex path)
_SCAN_KEYS = 4096


class _Events:
    """The arrays :func:`harness.kernels.logscan.scan` fills for one chunk."""

    __slots__ = ("kind", "flags", "line", "start", "ival", "v0", "v1", "v2", "key", "kstart", "kend", "counts")

    def __init__(self, np, cap: int):
        self.kind = np.empty(cap, np.int8)
        self.flags = np.empty(cap, np.int8)
        self.line = np.empty(cap, np.int64)
        self.start = np.empty(cap, np.int64)
        self.ival = np.empty(cap, np.int64)
        self.v0 = np.empty(cap, np.float64)
        self.v1 = np.empty(cap, np.float64)
        self.v2 = np.empty(cap, np.float64)
        self.key = np.empty(cap, np.int64)
        self.kstart = np.empty(_SCAN_KEYS, np.int64)
        self.kend = np.empty(_SCAN_KEYS, np.int64)
        self.counts = np.zeros(5, np.int64)


def _scan_events(buf: bytes, pos0: int) -> _Events:
    """Run the scanner kernel over ``buf[pos0:]``."""
    import numpy as np

    from .kernels import logscan

    arr = np.frombuffer(buf, dtype=np.uint8)
    # room for a candidate line every 32 bytes (glog's prefix alone is 30),
    # else again with one slot per line
    for cap in ((len(buf) - pos0) // 32 + 64, None):
        ev = _Events(np, buf.count(b"\n", pos0) + 1 if cap is None else cap)
        logscan.scan(arr, pos0, ev.kind, ev.flags, ev.line, ev.start, ev.ival, ev.v0, ev.v1, ev.v2, ev.key,
                     ev.kstart, ev.kend, ev.counts)
        if ev.counts[logscan.C_STATUS] != logscan.ST_EVENTS_FULL:
            break
    return ev


def _scan_chunk(st: _State, buf: bytes, pos0: int, base: int, n_buf_lines: int) -> bool:
    """Fold ``buf[pos0:]`` from the numba scanner's events; False (state
    untouched) when the chunk needs the record-by-record path.
    ``n_buf_lines`` is the number of lines in ``buf``.

    The scanner classifies every candidate line of the per-line path: the
    frequent shapes it parses itself (exactly as ``_REC`` would), the others
    (``EV_RARE``) are matched here with ``_REC``, one by one. Cross-checks:
    the scanner saw every ``solver.cpp:`` of the chunk and every line.
    """
    import numpy as np

    from .kernels import logscan as ks

    ev = _scan_events(buf, pos0)
    n, _, n_solver, n_lines, status = (int(x) for x in ev.counts)
    if status == ks.ST_KEYS_FULL:
        return _fast_chunk(st, buf, pos0, base)
    before = buf.count(b"\n", 0, pos0)
    if n_solver != buf.count(b"solver.cpp:", pos0) or n_lines != n_buf_lines - before:
        return False  # pragma: no cover (the scanner missed a line: never seen)
    kind, flags, start = ev.kind[:n], ev.flags[:n], ev.start[:n]
    line0 = base + before + 1
    lines = ev.line[:n] + line0
    find, match = buf.find, _REC.match
    # -- rare lines: the per-line regex, before any state change -------------
    rare = []  # (event, kind, line, match)
    for i in np.flatnonzero(kind == ks.EV_RARE).tolist():
        ls = int(start[i])
        m = match(buf, ls, find(b"\n", ls))
        if m is None:
            continue
        k = _KIND_BY_GROUP[m.lastindex]
        if k == K_ODD:
            if m.group("loc").startswith(b"caffe.cpp"):
                continue
            return False  # let the ordered path report it
        if k in (K_LR, K_LOSS, K_SLOSS, K_CLIP) or (k == K_OUT and m.group(_OUT_PH) == b"Train"):
            return False  # a bulk kind in an unusual form (NVCaffe, a huge iteration): keep the order exact
        rare.append((i, k, int(lines[i]), m))
    # -- numbers the scanner left to float() ---------------------------------
    for i in np.flatnonzero(flags & ks.F_PYFLOAT).tolist():
        ls = int(start[i])
        m = match(buf, ls, find(b"\n", ls))
        k = None if m is None else _KIND_BY_GROUP[m.lastindex]
        if k != _KIND_OF_EVENT[int(kind[i])]:
            return False  # pragma: no cover (the scanner's shapes are _REC's: never seen)
        g = m.group
        if k == K_LOSS:
            ev.v0[i] = float(g(_LS_V))
        elif k == K_SLOSS:
            ev.v0[i] = float(g(_SL_V))
        elif k == K_LR:
            ev.v0[i] = float(g(_LR_V))
        elif k == K_CLIP:
            ev.v0[i], ev.v1[i], ev.v2[i] = float(g(_CL_N)), float(g(_CL_C)), float(g(_CL_S))
        else:
            ev.v0[i] = float(g(_OUT_V))
            if g(_OUT_W) is not None:
                ev.v1[i] = float(g(_OUT_W))
    # -- commit, run by run ----------------------------------------------------
    a = 0  # first event of the current run's stretch
    pending = []
    for i, k, line, m in rare:
        if i < a:
            continue  # a line of the parameter block (the per-line path skips those)
        if k == K_INIT:
            _commit_events(st, buf, ev, lines, a, i, pending)
            pending = []
            stop = _start_block(st, line, buf, m.end() + 1)
            if stop < 0:
                return True  # the rest of the chunk is the block
            a = int(np.searchsorted(start, stop))
        else:
            pending.append((i, k, line, m))
    _commit_events(st, buf, ev, lines, a, n, pending)
    return True


def _commit_events(st: _State, buf: bytes, ev: _Events, lines, a: int, b: int, rare: list) -> None:
    """Fold the events ``a:b`` (one run's stretch) into the state: the bulk
    ones from the arrays, the ``rare`` ones (``(event, kind, line, match)``)
    by ``_State.apply``.

    Order matters only through the state they share: an output belongs to
    the last display or short loss line before it (or the state's), a
    clipping line to the lr line right before it (or the state's); the rare
    lines touch none of it, but new output series are created in line order
    (``run.outputs`` keeps the per-line path's order).
    """
    import numpy as np

    from .kernels import logscan as ks

    kind = ev.kind[a:b]
    idx = np.flatnonzero(kind != ks.EV_RARE)
    if not idx.size:
        for _, k, line, m in rare:
            st.apply(k, line, m)
        return
    kind = kind[idx]
    idx += a
    st.caffe_seen = True
    run = st.get_run()
    ar = np.arange(idx.size)
    ival, v0 = ev.ival, ev.v0
    is_loss = (kind == ks.EV_DISPLAY) | (kind == ks.EV_SHORT_LOSS)
    # -- train outputs ---------------------------------------------------------
    o = np.flatnonzero(kind == ks.EV_OUTPUT)
    series = []  # (first event, key, mask of its outputs)
    if o.size:
        owner = np.maximum.accumulate(np.where(is_loss, ar, -1))[o]
        its = np.where(owner >= 0, ival[idx[np.maximum(owner, 0)]], st.cur_iter)
        oi = idx[o]
        kid = ev.key[oi]
        ids, first = np.unique(kid, return_index=True)
        groups: dict = {}
        for j in np.argsort(first, kind="stable").tolist():
            kb = buf[int(ev.kstart[ids[j]]) : int(ev.kend[ids[j]])]
            k, name = _key(kb)
            groups.setdefault(OutputKey("train", 0, k, name), []).append(int(ids[j]))
        for key, kids in groups.items():
            mask = kid == kids[0] if len(kids) == 1 else np.isin(kid, kids)
            series.append((int(oi[mask][0]), key, mask))
    j = 0
    for i, k, line, m in rare:
        while j < len(series) and series[j][0] < i:
            f, key, _ = series[j]
            st.output_series(key, float(ev.v1[f]) if ev.flags[f] & ks.F_WEIGHT else None)
            j += 1
        st.apply(k, line, m)
    for f, key, mask in series:
        s = st.output_series(key, float(ev.v1[f]) if ev.flags[f] & ks.F_WEIGHT else None)
        s.iter.frombytes(its[mask].astype(np.int64).tobytes())
        s.value.frombytes(v0[oi[mask]].tobytes())
    # -- losses ----------------------------------------------------------------
    li = idx[is_loss]
    if li.size:
        run.loss.iter.frombytes(ival[li].tobytes())
        run.loss.value.frombytes(v0[li].tobytes())
        st.cur_iter = int(ival[li[-1]])
        short = li[ev.kind[li] == ks.EV_SHORT_LOSS]
        if short.size:
            run.final_loss = (int(ival[short[-1]]), float(v0[short[-1]]))
    # -- clipping (before the lr lines move the state) ------------------------
    is_lr = kind == ks.EV_LR
    c = np.flatnonzero(kind == ks.EV_CLIP)
    if c.size:
        prev = np.maximum.accumulate(np.where(is_lr, ar, -1))[c]
        pi = idx[np.maximum(prev, 0)]
        lr_line = np.where(prev >= 0, lines[pi], st.lr_line)
        lr_iter = np.where(prev >= 0, ival[pi], st.lr_iter)
        ci = idx[c]
        cl = lines[ci]
        clip = run.clipping
        clip.iter.frombytes(np.where(cl == lr_line + 1, lr_iter, -1).astype(np.int64).tobytes())
        clip.l2norm.frombytes(v0[ci].tobytes())
        clip.clip_gradients.frombytes(ev.v1[ci].tobytes())
        clip.scale_factor.frombytes(ev.v2[ci].tobytes())
        clip.line.frombytes(cl.tobytes())
    # -- lr --------------------------------------------------------------------
    ri = idx[is_lr]
    if ri.size:
        if run.lr_extra:  # NVCaffe fields earlier in this run: NaN for lines without them
            for i in ri.tolist():
                st.add_lr(int(ival[i]), float(v0[i]), None, int(lines[i]))
        else:
            run.lr.iter.frombytes(ival[ri].tobytes())
            run.lr.value.frombytes(v0[ri].tobytes())
            run.lr.line.frombytes(lines[ri].tobytes())
            st.lr_line, st.lr_iter = int(lines[ri[-1]]), int(ival[ri[-1]])


def read_runs(path) -> list[Run]:
    """Parse a log into its trainings (one :class:`Run` per ``Initializing solver``).

    Memory is bounded by the number of logged values (compact arrays), not
    by the file size. Same errors as :func:`parse_log`. Files of 48 MB and
    more (1 MB once numba is loaded) go through the numba scanner.
    """
    p, f = _open(path)
    st = _State(p)
    with f:
        scan = _use_scanner(os.fstat(f.fileno()).st_size)
        for buf, base, lines in _chunks(p, f):
            if not buf:
                if st.block is not None:
                    st.run.params = SolverParams(p, st.block.line, st.block.text())
                    st.block = None
                if not st.caffe_seen:
                    raise _not_caffe(p, base)
                if st.run is not None:
                    st.run.last_line = base
                return st.runs
            pos = 0
            if st.block is not None:
                pos = _continue_block(p, st.block, buf, 0)
                if pos < 0:
                    continue
                st.run.params = SolverParams(p, st.block.line, st.block.text())
                st.block = None
            if not (_scan_chunk(st, buf, pos, base, lines) if scan else _fast_chunk(st, buf, pos, base)):
                _slow_chunk(st, buf, pos, base)
    return st.runs  # pragma: no cover
