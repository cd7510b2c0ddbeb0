"""Audit a sequence of Caffe snapshots without the gradients that made them.

``audit(paths, solver=..., profile=...)`` reads ``.solverstate`` files (and
the ``.caffemodel`` each one names), sorts them by ``iter`` and checks the
invariants below, each one a row of an :class:`AuditReport`. Any net, any
snapshot interval, binary protobuf or HDF5.

=========================  =================================================
invariant                  what must hold (``k`` a snapshot, ``k-1`` the one
                           before it when the two are consecutive iterations)
=========================  =================================================
``iter-matches-name``      ``iter`` equals the ``N`` of ``<prefix>_iter_N`` in
                           the state's file name and in its ``learned_net``
``current-step``           ``current_step`` is what ``GetLearningRate`` leaves
                           after its call at ``iter-1`` in a fresh run: step
                           ``(iter-1)/stepsize``, multistep the stepvalues
                           reached at one advance per call, others 0
``history-layout``         N history blobs (SGD, Nesterov, AdaGrad, RMSProp)
                           or 2N (AdaDelta, Adam), shaped as the N learnable
                           blobs
``finite``                 no NaN or Inf in any data, diff or history value
``frozen-data``            blobs with ``lr_mult: 0`` keep their data (any
                           interval; needs ``--solver``)
``update-applied``         ``data_k == fl(data_{k-1} - diff_k)``
                           (``Net::Update``)
``sgd-diff-is-history``    SGD: ``diff_k == history_k`` (``g = h``)
``nesterov-step``          Nesterov: ``diff_k == axpby(fl(1+mu), h_k, -mu,
                           h_{k-1})`` (FMA or not per profile)
``adam-step``              Adam: ``diff_k`` recomputed from ``m_k``, ``v_k``,
                           the rate of iteration ``k-1`` and
                           ``correction(t=k)``
``gradient-witness``       some float32 gradient ``g`` takes the history of
                           ``k-1`` to that of ``k`` and yields ``diff_k``
=========================  =================================================

Every comparison is bit for bit (float32). The *solver-specific* rows need
``--solver`` (the snapshots do not record the solver type, the rates or the
``lr_mult``); without it they are reported as skipped, with the reason.

What is and is not exactly checkable without the gradient ``g`` (which
also hides clipping, ``iter_size`` normalization and weight decay):

- SGD: ``diff_k == h_k`` exactly. ``h_k = axpby(lr, g, mu, h_{k-1})``
  constrains nothing when ``lr != 0`` beyond float granularity (the witness
  row still requires a ``g``); with ``local_rate == 0`` it is exact:
  ``h_k == sscal(mu, h_{k-1})``.
- Nesterov: the step is a function of the two histories: exact.
- AdaGrad/RMSProp: ``diff = axpby(lr, fl(g/fl(powf(h_k,.5)+delta)), 0, g)``
  and ``h_k = fl(powf(g,2) + h_{k-1})`` (RMSProp: ``axpby(1-rho, powf(g,2),
  rho, h_{k-1})``) share one unknown ``g``: the audit searches the float32
  line for a ``g`` reproducing both bit for bit (``diff`` is monotone in
  ``g``, the history in ``|g|``). This also checks the rate, roughly: a
  wrong rate leaves no common ``g``. It cannot see ``g`` itself.
- AdaDelta: ``r = powf(fl(fl(delta+h2_{k-1}) / fl(delta+h1_k)), .5)`` comes
  from the snapshots; one ``g`` must give ``h1_k``, ``h2_k`` (through
  ``fl(g*r)``) and ``diff_k = sscal(lr, fl(g*r))``.
- Adam: ``diff_k`` is fully determined by ``m_k``, ``v_k`` and the rate:
  exact for every snapshot; the moments need one ``g`` (witness row).
- Not checkable at all: the gradients, the clipping scale, whether
  ``iter_size``/weight decay were applied, the first snapshot of a run
  (its predecessor, the initial weights and zero history, is not a
  snapshot), and anything between snapshots more than one iteration apart.
- Layers that write their own blobs in ``Forward`` (``BatchNorm``'s moving
  averages) break ``update-applied``/``frozen-data`` by design; with
  ``--solver`` their blobs are left out of those rows, without it they
  cannot be told apart.

``sscal(0, y)`` and FMA in ``saxpy`` differ between BLAS builds: the
``profile`` (``harness.reference.PROFILES``) says which.

Memory: nothing is loaded whole. Snapshots are indexed by the streaming
readers of :mod:`harness.io.blobs` (:func:`~harness.io.blobs.scan_caffemodel`,
:func:`~harness.io.blobs.scan_solverstate`): each blob's packed
``data``/``diff`` is a byte range of the file, read in chunks of ``chunk``
values; HDF5 datasets stored contiguously are read the same way. An audit
holds a few chunks of each of the two snapshots of a pair (about
``12 * chunk * 4`` bytes), whatever the net's size. The per-element checks
are the numba kernels of :mod:`harness.kernels.audit`, built on the BLAS ops
of the reference update (:mod:`harness.kernels.update`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .config import SolverConfig
from .errors import CaffeRefusal, InputError
from .io.blobs import BlobRef, StateRef, _fmt_shape, scan_caffemodel, scan_solverstate
from .kernels.audit import (
    W_ADADELTA,
    W_ADAGRAD,
    W_ADAM,
    W_RMSPROP,
    W_SGD,
    WITNESS_FAILED,
    WITNESS_UNCHECKED,
    adam_expected,
    nesterov_expected,
    witness,
)

__all__ = [
    "INVARIANTS",
    "SOLVER_INVARIANTS",
    "DEFAULT_CHUNK",
    "Snapshot",
    "Failure",
    "InvariantResult",
    "AuditReport",
    "find_snapshots",
    "load_snapshots",
    "audit",
]

#: invariant id -> one-line description, in report order
INVARIANTS: dict[str, str] = {
    "iter-matches-name": "iter equals the N of <prefix>_iter_N in the file name and in learned_net",
    "current-step": "current_step is what GetLearningRate leaves after its call at iter-1",
    "history-layout": "N (or 2N for AdaDelta, Adam) history blobs shaped as the learnable blobs",
    "finite": "no NaN or Inf in data, diff or history",
    "frozen-data": "blobs with lr_mult 0 keep their data",
    "update-applied": "data(k) == fl(data(k-1) - diff(k)) for consecutive snapshots",
    "sgd-diff-is-history": "SGD: diff(k) == history(k)",
    "nesterov-step": "Nesterov: diff(k) == axpby(fl(1+momentum), h(k), -momentum, h(k-1))",
    "adam-step": "Adam: diff(k) recomputed from m(k), v(k), lr(k-1) and correction(t=k)",
    "gradient-witness": "a float32 gradient takes history(k-1) to history(k) and yields diff(k)",
}

#: solver-specific rows: shown only for that solver type
SOLVER_INVARIANTS = {
    "sgd-diff-is-history": "SGD",
    "nesterov-step": "Nesterov",
    "adam-step": "Adam",
}

#: values per read of one blob field (4 MiB of float32)
DEFAULT_CHUNK = 1 << 20

#: layer types whose Forward writes their own blobs (not only Net::Update)
SELF_UPDATING_LAYERS = frozenset({"BatchNorm"})

_TWO_SLOT = ("AdaDelta", "Adam")


# ---------------------------------------------------------------------------
# finding the snapshots of a sequence
# ---------------------------------------------------------------------------

_STATE_NAME = re.compile(r"^(?P<prefix>.*)_iter_(?P<iter>\d+)\.solverstate(?P<h5>\.h5)?$")
_ITER_IN_NAME = re.compile(r"_iter_(\d+)\.(?:solverstate|caffemodel)(?:\.h5)?$")


def _iter_of_name(name: str) -> int | None:
    m = _ITER_IN_NAME.search(name)
    return int(m.group(1)) if m else None


def _states_in(folder: Path, prefix: str | None = None) -> list[Path]:
    out = []
    for p in folder.iterdir():
        m = _STATE_NAME.match(p.name)
        if m and p.is_file() and (prefix is None or m.group("prefix") == prefix):
            out.append(p)
    return out


def find_snapshots(args: Iterable[str | os.PathLike]) -> list[Path]:
    """The ``.solverstate`` files named by ``args``, each a file, a folder or a prefix.

    A folder gives its ``*_iter_N.solverstate[.h5]`` (one prefix only); a
    prefix such as ``snapshots/run`` gives ``snapshots/run_iter_N.solverstate[.h5]``.
    A file given twice, a folder holding several prefixes or nothing, and a
    caffemodel given instead of its state raise :class:`InputError`.
    """
    out: list[Path] = []
    seen: dict[Path, str] = {}
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = _states_in(p)
            if not found:
                raise InputError(p, "no <prefix>_iter_N.solverstate files in this folder")
            prefixes = sorted({_STATE_NAME.match(q.name).group("prefix") for q in found})
            if len(prefixes) > 1:
                raise InputError(
                    p, f"holds snapshots of {len(prefixes)} prefixes ({', '.join(prefixes)}); "
                       f"name one, e.g. {p / prefixes[0]}"
                )
        elif p.is_file():
            if re.search(r"\.caffemodel(\.h5)?$", p.name):
                raise InputError(p, "is a caffemodel: give the .solverstate files (each names its caffemodel)")
            found = [p]
        else:
            found = _states_in(p.parent if str(p.parent) else Path("."), p.name) if p.parent.is_dir() else []
            if not found:
                raise InputError(p, f"no such file, folder or snapshot prefix (no {p.name}_iter_N.solverstate)")
        for q in found:
            key = q.resolve()
            if key in seen:
                raise InputError(q, f"given twice (also as {seen[key]})")
            seen[key] = os.fspath(q)
            out.append(q)
    if not out:
        raise InputError(None, "no snapshots given")
    return out


def _caffemodel_for(state_path: Path, learned_net: str) -> Path:
    folder = state_path.parent
    cands: list[Path] = []
    if learned_net:
        ln = Path(learned_net)
        if ln.is_absolute():
            cands.append(ln)
        cands.append(folder / ln.name)
    name = state_path.name
    stem = re.sub(r"\.solverstate(\.h5)?$", "", name)
    exts = (".caffemodel.h5", ".caffemodel") if name.endswith(".h5") else (".caffemodel", ".caffemodel.h5")
    cands.extend(folder / (stem + e) for e in exts)
    for c in cands:
        if c.is_file():
            return c
    raise InputError(
        state_path, f"its caffemodel is missing: learned_net '{learned_net}' is not in {folder}, nor {stem}.caffemodel"
    )


@dataclass(eq=False)
class Snapshot:
    """One snapshot of a sequence: its state, its caffemodel's blobs (indexed, not read)."""

    state_path: Path
    model_path: Path
    state: StateRef
    params: dict[str, BlobRef]  # "<layer>/<i>" in file order

    @property
    def iter(self) -> int:
        """The state's ``iter`` (completed updates)."""
        return self.state.iter

    @property
    def name_iter(self) -> int | None:
        """The ``N`` of ``_iter_N`` in the state's file name, or None."""
        return _iter_of_name(self.state_path.name)


def load_snapshots(paths: Iterable[str | os.PathLike]) -> list[Snapshot]:
    """Index each state and its caffemodel; sorted by ``iter`` (duplicates raise ``InputError``)."""
    snaps = []
    for p in paths:
        p = Path(p)
        state = scan_solverstate(p)
        model = _caffemodel_for(p, state.learned_net)
        layers = scan_caffemodel(model)
        params = {f"{layer}/{i}": b for layer, blobs in layers.items() for i, b in enumerate(blobs)}
        snaps.append(Snapshot(p, model, state, params))
    snaps.sort(key=lambda s: s.iter)
    for a, b in zip(snaps, snaps[1:]):
        if a.iter == b.iter:
            raise InputError(b.state_path, f"holds iter {b.iter} like {a.state_path}: a duplicate snapshot iteration")
    return snaps


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """Where an invariant broke: the file, blob, field, flat index and the values."""

    file: str
    blob: str | None = None
    field: str | None = None
    index: int | None = None
    expected: float | None = None
    got: float | None = None
    message: str = ""

    def to_dict(self) -> dict:
        d = {"file": self.file, "blob": self.blob, "field": self.field, "index": self.index, "message": self.message}
        for k in ("expected", "got"):
            v = getattr(self, k)
            d[k] = None if v is None else _json_float(v)
            d[k + "_bits"] = None if v is None else _bits_hex(v)
        return d

    def __str__(self) -> str:
        where = os.path.basename(self.file)
        if self.blob:
            where += f": blob {self.blob}"
            if self.field:
                where += f" {self.field}"
            if self.index is not None:
                where += f" [{self.index}]"
        vals = ""
        if self.got is not None:
            vals = f": got {_fmt_value(self.got)}"
            if self.expected is not None:
                vals += f", expected {_fmt_value(self.expected)}"
        msg = f" ({self.message})" if self.message else ""
        return where + vals + msg


def _bits_hex(v: float) -> str:
    return "0x%08x" % int(np.float32(v).view(np.uint32))


def _fmt_value(v: float) -> str:
    return f"{np.float32(v)!r}".replace("np.float32(", "").rstrip(")") + f" ({_bits_hex(v)})"


def _json_float(v: float):
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if v != v else ("inf" if v > 0 else "-inf")


@dataclass
class InvariantResult:
    """One row of the report: how many cases (snapshots or pairs) and values were checked, what failed."""

    id: str
    description: str
    cases: int = 0
    values: int = 0
    failed_cases: int = 0
    failed_values: int = 0
    skipped: str | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``"fail"``, ``"pass"``, or ``"skipped"`` when nothing could be checked."""
        if self.failed_cases or self.failed_values:
            return "fail"
        if self.cases == 0:
            return "skipped"
        return "pass"

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "description": self.description,
            "status": self.status,
            "cases": self.cases,
            "values": self.values,
            "failed_cases": self.failed_cases,
            "failed_values": self.failed_values,
            "skipped": self.skipped if self.status == "skipped" else None,
            "failures": [f.to_dict() for f in self.failures],
        }


@dataclass
class AuditReport:
    """The audit of one snapshot sequence: a row per invariant; ``ok`` when none failed."""

    snapshots: list[dict]
    solver: str | None
    solver_type: str | None
    profile: str
    invariants: list[InvariantResult]

    @property
    def ok(self) -> bool:
        """True when no invariant failed (skipped rows do not fail)."""
        return all(r.status != "fail" for r in self.invariants)

    @property
    def exit_code(self) -> int:
        """0 when every invariant holds (or was skipped), 1 when one failed."""
        return 0 if self.ok else 1

    def row(self, invariant: str) -> InvariantResult:
        """The row of ``invariant`` (``KeyError`` lists the rows)."""
        for r in self.invariants:
            if r.id == invariant:
                return r
        raise KeyError(f"no row {invariant!r} (rows: {', '.join(r.id for r in self.invariants)})")

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "solver": self.solver,
            "type": self.solver_type,
            "profile": self.profile,
            "snapshots": self.snapshots,
            "invariants": [r.to_dict() for r in self.invariants],
        }

    def format_text(self, *, examples: int = 3) -> str:
        """The pass/fail table, then the first failures of each failing row."""
        s = self.snapshots
        iters = [x["iter"] for x in s]
        head = f"audit of {len(s)} snapshot{'s' if len(s) != 1 else ''}"
        if s:
            span = f"iter {iters[0]}" if len(iters) == 1 else f"iter {iters[0]}..{iters[-1]}"
            head += f" ({span}) in {os.path.dirname(s[0]['state']) or '.'}"
        head += f"; solver: {self.solver or 'none (--solver not given)'}"
        if self.solver_type:
            head += f" ({self.solver_type})"
        head += f"; profile {self.profile}"
        lines = [head]
        w = max(len(r.id) for r in self.invariants)
        lines.append(f"  {'invariant':<{w}}  {'result':<7}  {'cases':>6}  {'values':>10}  {'failed':>8}")
        for r in self.invariants:
            failed = r.failed_values if r.failed_values else r.failed_cases
            note = f"  ({r.skipped})" if r.status == "skipped" and r.skipped else ""
            lines.append(f"  {r.id:<{w}}  {r.status.upper():<7}  {r.cases:>6}  {r.values:>10}  {failed:>8}{note}")
        for r in self.invariants:
            if r.status != "fail":
                continue
            for f in r.failures[:examples]:
                lines.append(f"FAIL {r.id}: {f}")
            more = max(r.failed_values, r.failed_cases) - min(len(r.failures), examples)
            if more > 0:
                lines.append(f"FAIL {r.id}: ... and {more} more")
        lines.append("all invariants hold" if self.ok else "some invariants fail")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# the audit
# ---------------------------------------------------------------------------


def _learning_rate_at(config: SolverConfig, it: int, current_step: int) -> np.float32:
    """The rate Caffe used at ``iter_ = it`` with ``current_step_`` = ``current_step`` after the call.

    A snapshot's ``current_step`` is the value after the rate's call, which is
    the value the rate used; multistep's advance is switched off so that the
    stored value is used as is.
    """
    from .lr import learning_rate

    cfg = config.replace(stepvalue=()) if config.lr_policy == "multistep" else config
    try:
        rate, _ = learning_rate(cfg, it, current_step)
    except CaffeRefusal as e:
        raise InputError(config.source or None, f"Caffe refuses this solver at its first update ({e.message}), "
                                                "yet snapshots of it exist: wrong --solver?") from None
    return np.float32(rate)


def _expected_current_step(config: SolverConfig, it: int) -> int:
    from .lr import current_steps

    if it <= 0:
        return 0
    return int(current_steps(config, np.arange(it, dtype=np.int64), current_step=0)[-1])


def _load_config(solver, snap: Snapshot) -> tuple[SolverConfig, dict[str, str]]:
    """The solver config with learnable blob shapes from the snapshot's index, and {layer: type}."""
    if isinstance(solver, SolverConfig):
        return solver, {}
    from .io.solver import load_solver

    layers: dict[str, list[BlobRef]] = {}
    for name, b in snap.params.items():
        layer = name.rsplit("/", 1)[0]
        layers.setdefault(layer, []).append(b)
    config = load_solver(solver, weights=layers)
    return config, _layer_types(solver)


def _layer_types(solver) -> dict[str, str]:
    from .io.net import load_net, upgrade_net
    from .io.solver import read_solver_parameter, resolve_path

    param = read_solver_parameter(solver)
    if param.HasField("train_net_param"):
        net = upgrade_net(param.train_net_param, source=os.fspath(solver))
    elif param.HasField("net_param"):
        net = upgrade_net(param.net_param, source=os.fspath(solver))
    elif param.train_net or param.net:
        net = load_net(resolve_path(Path(solver), param.train_net or param.net))
    else:
        return {}
    return {layer.name: layer.type for layer in net.layer}


def _legacy_equal(a: Sequence[int], b: Sequence[int]) -> bool:
    """Equal shapes, allowing Caffe's legacy 4-D form (leading 1s) on either side."""
    if tuple(a) == tuple(b):
        return True

    def strip(s):
        s = list(s)
        while len(s) > 1 and s[0] == 1:
            s.pop(0)
        return tuple(s)

    return (len(a) == 4 or len(b) == 4) and strip(a) == strip(b)


def _check_same_net(snaps: list[Snapshot]) -> None:
    first = snaps[0]
    names0 = list(first.params)
    for s in snaps[1:]:
        names = list(s.params)
        if names != names0:
            extra = [n for n in names if n not in first.params]
            missing = [n for n in names0 if n not in s.params]
            what = (f"has blob {extra[0]} that {first.model_path.name} lacks" if extra else
                    f"lacks blob {missing[0]} of {first.model_path.name}" if missing else
                    f"orders its blobs differently from {first.model_path.name}")
            raise InputError(s.model_path, f"{what}: a snapshot of another net?")
        for n in names0:
            a, b = first.params[n].shape, s.params[n].shape
            if a != b:
                raise InputError(
                    s.model_path, f"blob {n} has shape {_fmt_shape(b)}, but {_fmt_shape(a)} in "
                                  f"{first.model_path.name}: a snapshot of another net?"
                )
        h0, h = first.state.history, s.state.history
        if len(h) != len(h0):
            raise InputError(
                s.state_path, f"has {len(h)} history blobs, {first.state_path.name} has {len(h0)}: "
                              "a snapshot of another net or solver?"
            )
        for a, b in zip(h0, h):
            if a.shape != b.shape:
                raise InputError(
                    s.state_path, f"{b.name} has shape {_fmt_shape(b.shape)}, but {_fmt_shape(a.shape)} in "
                                  f"{first.state_path.name}: a snapshot of another net?"
                )


class _Auditor:
    def __init__(self, snaps, config, layer_types, profile, chunk, max_failures):
        from .reference import get_profile

        self.snaps = snaps
        self.config = config
        self.type = config.type if config is not None else None
        prof = get_profile(profile)
        if np.dtype(prof.dtype) != np.float32:
            raise InputError(None, f"profile {prof.name!r} is not a float32 Caffe build; snapshots are float32")
        self.profile = prof
        self.fused = bool(prof.fused)
        self.zf = int(prof.zero_fill)
        self.chunk = int(chunk)
        self.max_failures = int(max_failures)
        self.rows = {k: InvariantResult(k, v) for k, v in INVARIANTS.items()}
        first = snaps[0]
        if config is not None and config.blobs:
            missing = [b.name for b in config.blobs if b.name not in first.params]
            if missing:
                raise InputError(first.model_path, f"has no blob {missing[0]} of the solver's net "
                                                   f"({config.source}): a snapshot of another net?")
            self.learnable = [b.name for b in config.blobs]
            self.lr_mult = {b.name: np.float32(b.lr_mult) for b in config.blobs}
        else:
            self.learnable = [n for n, b in first.params.items() if b.data is not None]
            self.lr_mult = {}
        self.self_updating = {n for n in first.params if layer_types.get(n.rsplit("/", 1)[0]) in SELF_UPDATING_LAYERS}
        self.slots = None  # decided by history-layout
        self.layout_ok = False
        self.prev_layout_ok = False
        self.facts = {"consecutive": False, "diff": False, "pair": False, "layout": False}

    # -- bookkeeping ---------------------------------------------------------
    def case(self, key: str, n_values: int = 0) -> None:
        r = self.rows[key]
        r.cases += 1
        r.values += n_values

    def values(self, key: str, n: int) -> None:
        self.rows[key].values += n

    def fail(self, key: str, failure: Failure, n_values: int = 0) -> None:
        r = self.rows[key]
        if n_values:
            r.failed_values += n_values
        else:
            r.failed_cases += 1
        if len(r.failures) < self.max_failures:
            r.failures.append(failure)

    def compare(self, key: str, expected: np.ndarray, got: np.ndarray, file: str, blob: str, field_: str,
                offset: int, message: str = "") -> None:
        """Count values whose bits differ; record the first ones."""
        bad = expected.view(np.uint32) != got.view(np.uint32)
        n = int(np.count_nonzero(bad))
        self.values(key, got.size)
        if n:
            r = self.rows[key]
            room = self.max_failures - len(r.failures)
            for i in np.flatnonzero(bad)[: max(room, 0)]:
                r.failures.append(Failure(file, blob, field_, offset + int(i), float(expected[i]), float(got[i]),
                                          message))
            r.failed_values += n

    # -- the sequence ----------------------------------------------------------
    def run(self) -> None:
        for idx, snap in enumerate(self.snaps):
            prev = self.snaps[idx - 1] if idx else None
            self.check_scalars(snap)
            self.check_layout(snap)
            self.check_blobs(snap, prev)
        self.skip_reasons()

    def check_scalars(self, snap: Snapshot) -> None:
        path = os.fspath(snap.state_path)
        self.case("iter-matches-name")
        n = snap.name_iter
        if n is not None and n != snap.iter:
            self.fail("iter-matches-name", Failure(path, message=f"holds iter {snap.iter}, its name says {n}"))
        ln = _iter_of_name(os.path.basename(snap.state.learned_net)) if snap.state.learned_net else None
        if ln is not None and ln != snap.iter:
            self.fail("iter-matches-name", Failure(
                path, message=f"holds iter {snap.iter}, its learned_net '{snap.state.learned_net}' says {ln}"))
        mn = _iter_of_name(snap.model_path.name)
        if mn is not None and mn != snap.iter:
            self.fail("iter-matches-name", Failure(
                os.fspath(snap.model_path), message=f"is the caffemodel of iter {snap.iter}, its name says {mn}"))
        if self.config is None:
            return
        self.case("current-step")
        want = _expected_current_step(self.config, snap.iter)
        if snap.state.current_step != want:
            pol = self.config.lr_policy
            self.fail("current-step", Failure(
                path, expected=None, got=None,
                message=f"current_step is {snap.state.current_step}, lr_policy {pol!r} leaves {want} "
                        f"after its call at iter {snap.iter - 1}"))

    def check_layout(self, snap: Snapshot) -> None:
        path = os.fspath(snap.state_path)
        hist = snap.state.history
        N = len(self.learnable)
        self.case("history-layout")
        if self.type is not None:
            slots = 2 if self.type in _TWO_SLOT else 1
            if len(hist) != slots * N:
                self.fail("history-layout", Failure(
                    path, message=f"has {len(hist)} history blobs; {self.type} keeps "
                                  f"{'2 x ' if slots == 2 else ''}{N} for {N} learnable blobs"))
                self.layout_ok = False
                return
        elif N and len(hist) in (N, 2 * N):
            slots = len(hist) // N
        else:
            self.fail("history-layout", Failure(
                path, message=f"has {len(hist)} history blobs, neither N nor 2N for the caffemodel's {N} blobs "
                              "(shared parameters? pass --solver)"))
            self.layout_ok = False
            return
        self.slots = slots
        ok = True
        for j, h in enumerate(hist):
            name = self.learnable[j % N]
            shape = snap.params[name].shape
            if not _legacy_equal(h.shape, shape):
                ok = False
                self.fail("history-layout", Failure(
                    path, blob=name, field=f"history[{j}]",
                    message=f"history blob {j} has shape {_fmt_shape(h.shape)}, blob {name} {_fmt_shape(shape)}"))
        self.layout_ok = ok
        if ok:
            self.facts["layout"] = True

    def _rate_for(self, snap: Snapshot, name: str) -> np.float32 | None:
        """``local_rate = fl(rate * lr_mult)`` of the update that produced ``snap``."""
        if self.config is None or snap.iter < 1:
            return None
        rate = _learning_rate_at(self.config, snap.iter - 1, snap.state.current_step)
        return np.float32(rate * self.lr_mult.get(name, np.float32(1)))

    def check_blobs(self, snap: Snapshot, prev: Snapshot | None) -> None:
        cfg = self.config
        typ = self.type
        consecutive = prev is not None and prev.iter == snap.iter - 1
        mpath = os.fspath(snap.model_path)
        spath = os.fspath(snap.state_path)
        N = len(self.learnable)
        hist_ok = self.layout_ok
        prev_layout_ok, self.prev_layout_ok = self.prev_layout_ok, hist_ok
        lidx = {n: j for j, n in enumerate(self.learnable)}
        if consecutive:
            self.facts["consecutive"] = True
        if any(b.diff is not None for b in snap.params.values()):
            self.facts["diff"] = True
        if prev is not None:
            self.facts["pair"] = True

        do_update = consecutive
        do_frozen = prev is not None and cfg is not None
        do_witness = consecutive and cfg is not None and hist_ok and prev_layout_ok
        rows_counted: set[str] = set()

        def count_case(key):
            if key not in rows_counted:
                rows_counted.add(key)
                self.case(key)

        # one case per snapshot for the finite row
        count_case("finite")
        for name, blob in snap.params.items():
            j = lidx.get(name)
            pblob = prev.params.get(name) if prev is not None else None
            has_diff = blob.diff is not None and blob.data is not None
            hist = [snap.state.history[j + s * N] for s in range(self.slots)] if (hist_ok and j is not None) else []
            phist = ([prev.state.history[j + s * N] for s in range(self.slots)]
                     if (do_witness and j is not None) else [])
            lr_mult = self.lr_mult.get(name)
            frozen = do_frozen and lr_mult is not None and lr_mult == 0 and name not in self.self_updating
            upd = do_update and has_diff and pblob is not None and pblob.data is not None \
                and name not in self.self_updating
            local_rate = self._rate_for(snap, name) if (cfg is not None and j is not None) else None
            for a in range(0, blob.count, self.chunk):
                b = min(a + self.chunk, blob.count)
                w = blob.read("data", a, b) if blob.data is not None else None
                d = blob.read("diff", a, b) if blob.diff is not None else None
                hs = [h.read("data", a, b) for h in hist]
                # finite
                for arr, field_, f in ((w, "data", mpath), (d, "diff", mpath)):
                    if arr is not None:
                        self.finite(arr, f, name, field_, a)
                for s, h in enumerate(hs):
                    self.finite(h, spath, name, f"history[{j + s * N}]", a)
                wp = pblob.read("data", a, b) if (upd or frozen) else None
                if frozen:
                    count_case("frozen-data")
                    self.compare("frozen-data", wp, w, mpath, name, "data", a,
                                 f"lr_mult 0: data changed since {prev.model_path.name}")
                if upd:
                    count_case("update-applied")
                    with np.errstate(all="ignore"):
                        want = (wp - d).astype(np.float32)
                    self.compare("update-applied", want, w, mpath, name, "data", a,
                                 f"expected data of {prev.model_path.name} - diff")
                if cfg is None or j is None or not hist_ok:
                    continue
                if typ == "SGD" and d is not None:
                    count_case("sgd-diff-is-history")
                    self.compare("sgd-diff-is-history", hs[0], d, mpath, name, "diff", a,
                                 f"expected history[{j}] of {snap.state_path.name}")
                if typ == "Adam" and d is not None and snap.iter >= 1:
                    count_case("adam-step")
                    self.adam_step(hs, d, local_rate, snap, mpath, name, a)
                if not do_witness:
                    continue
                hps = [h.read("data", a, b) for h in phist]
                if typ == "Nesterov" and d is not None:
                    count_case("nesterov-step")
                    mu = np.float32(cfg.momentum)
                    want = np.empty_like(d)
                    nesterov_expected(hs[0], hps[0], np.float32(1) + mu, -mu, self.fused, self.zf, want)
                    self.compare("nesterov-step", want, d, mpath, name, "diff", a,
                                 f"from history[{j}] of {snap.state_path.name} and {prev.state_path.name}")
                if typ in ("AdaGrad", "RMSProp", "AdaDelta") and d is None:
                    continue
                count_case("gradient-witness")
                self.witness(hs, hps, d, local_rate, snap, prev, spath, name, j, a)
            blob.release()
            if pblob is not None:
                pblob.release()
            for h in hist + phist:
                h.release()

    def skip_reasons(self) -> None:
        """Say why each row that checked nothing was skipped, the most basic reason first."""
        f = self.facts
        solver = self.config is not None
        needs = {
            "current-step": ("solver",),
            "frozen-data": ("solver", "lr0", "pair"),
            "update-applied": ("consecutive", "diff"),
            "sgd-diff-is-history": ("solver", "diff", "layout"),
            "adam-step": ("solver", "diff", "layout"),
            "nesterov-step": ("solver", "consecutive", "diff", "layout"),
            "gradient-witness": ("solver", "consecutive", "layout", "diff"),
        }
        why = {
            "solver": (solver, "needs --solver"),
            "lr0": (any(m == 0 for m in self.lr_mult.values()), "no blob has lr_mult 0"),
            "pair": (f["pair"], "a single snapshot"),
            "consecutive": (f["consecutive"], "no two snapshots one iteration apart"),
            "diff": (f["diff"], "the caffemodels have no diff (snapshot_diff off)"),
            "layout": (f["layout"], "the history layout is wrong"),
        }
        for key, reqs in needs.items():
            r = self.rows[key]
            if r.cases:
                continue
            for req in reqs:
                ok, text = why[req]
                if not ok:
                    r.skipped = text
                    break

    def finite(self, arr: np.ndarray, file: str, blob: str, field_: str, offset: int) -> None:
        self.values("finite", arr.size)
        bad = ~np.isfinite(arr)
        n = int(np.count_nonzero(bad))
        if n:
            r = self.rows["finite"]
            room = self.max_failures - len(r.failures)
            for i in np.flatnonzero(bad)[: max(room, 0)]:
                r.failures.append(Failure(file, blob, field_, offset + int(i), None, float(arr[i]),
                                          "not finite"))
            r.failed_values += n

    def adam_step(self, hs, d, local_rate, snap, mpath, name, offset) -> None:
        from .kernels.update import adam_correction

        cfg = self.config
        b1, b2 = np.float32(cfg.momentum), np.float32(cfg.momentum2)
        corr = np.float32(adam_correction(np.float64(b1), np.float64(b2), float(snap.iter)))
        rc = np.float32(local_rate * corr)
        want = np.empty_like(d)
        with np.errstate(all="ignore"):
            adam_expected(hs[0], hs[1], rc, np.float32(cfg.delta), self.zf, want)
        self.compare("adam-step", want, d, mpath, name, "diff", offset,
                     f"from m, v of {snap.state_path.name}, lr {float(local_rate):g}, correction {float(corr):g}")

    def witness(self, hs, hps, d, local_rate, snap, prev, spath, name, j, offset) -> None:
        cfg, typ = self.config, self.type
        f32 = np.float32
        one = f32(1)
        zero = f32(0)
        empty = np.zeros(0, np.float32)
        if typ in ("SGD", "Nesterov"):
            code, c = W_SGD, (f32(cfg.momentum), zero, zero, zero)
        elif typ == "AdaGrad":
            code, c = W_ADAGRAD, (f32(cfg.delta), zero, zero, zero)
        elif typ == "RMSProp":
            rho = f32(cfg.rms_decay)
            code, c = W_RMSPROP, (f32(cfg.delta), one - rho, rho, zero)
        elif typ == "AdaDelta":
            mu = f32(cfg.momentum)
            code, c = W_ADADELTA, (f32(cfg.delta), one - mu, mu, zero)
        elif typ == "Adam":
            b1, b2 = f32(cfg.momentum), f32(cfg.momentum2)
            code, c = W_ADAM, (one - b1, b1, one - b2, b2)
        else:
            return
        h = hs[0]
        out = np.empty(h.size, np.int8)
        with np.errstate(all="ignore"):
            witness(code, d if d is not None else empty, h, hps[0],
                    hs[1] if len(hs) > 1 else empty, hps[1] if len(hps) > 1 else empty,
                    f32(local_rate), *c, self.fused, self.zf, out)
        checked = int(np.count_nonzero(out != WITNESS_UNCHECKED))
        self.values("gradient-witness", checked)
        bad = np.flatnonzero(out == WITNESS_FAILED)
        if bad.size:
            r = self.rows["gradient-witness"]
            N = len(self.learnable)
            for i in bad[: max(self.max_failures - len(r.failures), 0)]:
                i = int(i)
                parts = [f"history[{j + s * N}] {_fmt_value(hps[s][i])} -> {_fmt_value(hs[s][i])}"
                         for s in range(len(hs))]
                if d is not None and typ not in ("SGD", "Nesterov", "Adam"):
                    parts.append(f"diff {_fmt_value(d[i])}")
                field_ = "/".join(f"history[{j + s * N}]" for s in range(len(hs)))
                r.failures.append(Failure(
                    spath, name, field_, offset + i, None, float(h[i]),
                    f"no float32 gradient gives {', '.join(parts)} with lr {float(local_rate):g} "
                    f"(from {prev.state_path.name})"))
            r.failed_values += int(bad.size)


def audit(
    snapshots: Iterable[str | os.PathLike],
    *,
    solver: str | os.PathLike | SolverConfig | None = None,
    profile: str = "caffe-openblas",
    chunk: int = DEFAULT_CHUNK,
    max_failures: int = 10,
) -> AuditReport:
    """Check the invariants of a snapshot sequence (module docstring); returns an :class:`AuditReport`.

    ``snapshots``: ``.solverstate`` files, folders or prefixes (see
    :func:`find_snapshots`). ``solver``: the solver.prototxt (or a
    ``SolverConfig`` with ``blobs``) that ran; without it the
    solver-specific rows are skipped. ``profile``: a float32 profile of
    ``harness.reference.PROFILES``. ``chunk``: values read per blob field
    at a time. ``max_failures``: failures kept per invariant (all are
    counted). Bad input (unreadable files, snapshots of different nets,
    two snapshots of one iteration) raises :class:`InputError`.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    snaps = load_snapshots(find_snapshots(snapshots))
    _check_same_net(snaps)
    config, layer_types = (None, {}) if solver is None else _load_config(solver, snaps[0])
    a = _Auditor(snaps, config, layer_types, profile, chunk, max_failures)
    a.run()
    typ = config.type if config is not None else None
    rows = [r for k, r in a.rows.items() if k not in SOLVER_INVARIANTS or typ is None or SOLVER_INVARIANTS[k] == typ]
    return AuditReport(
        snapshots=[{"iter": s.iter, "state": os.fspath(s.state_path), "caffemodel": os.fspath(s.model_path)}
                   for s in snaps],
        solver=None if solver is None else (solver.source if isinstance(solver, SolverConfig) else os.fspath(solver)),
        solver_type=typ,
        profile=a.profile.name,
        invariants=rows,
    )
