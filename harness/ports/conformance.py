"""The conformance engine behind ``caffe-harness check`` and the pytest plugin.

Data flows one way: find traces (golden dirs, capture dirs) -> run the port
on each (``harness.ports.base.Runner``) -> compare with Caffe's expectations
-> diagnose failures against the catalogue of misports -> report (text table,
JSON, JUnit XML).

Results per trace: ``pass`` (every compared value within the tolerance),
``FAIL`` (a value differs, or the port refused settings Caffe accepts, or ran
settings Caffe refuses), ``ERROR`` (the port crashed or wrote malformed
output), ``unsupported`` (the port declared it cannot run the settings; not
counted) and ``refused-ok`` (Caffe refused the settings and so did the port).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from ..compare import EXACT, Tolerance, log_float_matches, log_float_text, ulp_distance
from ..errors import InputError
from ..replayer import _kind
from ..trace import Trace
from .base import PortRun, Runner, StepOutput
from .variants import VARIANTS, variant_port

__all__ = [
    "RESULTS",
    "Divergence",
    "Comparison",
    "TraceResult",
    "Diagnosis",
    "GroupDiagnosis",
    "Report",
    "VariantCache",
    "as_tolerance",
    "default_corpus",
    "find_traces",
    "load_trace",
    "load_corpus",
    "trace_id",
    "trace_options",
    "compare_outputs",
    "evaluate",
    "diagnose",
    "check",
    "render_text",
    "render_json",
    "render_junit",
]

#: The result of one trace, in the order the summary lists them.
RESULTS = ("pass", "FAIL", "ERROR", "unsupported", "refused-ok")


# ---------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------
def _repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def find_traces(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Every golden trace or capture directory at or under ``paths`` (sorted per path).

    Raises ``InputError`` for a path that does not exist or holds no trace.
    """
    found: list[Path] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputError(p, "no such directory (expected a golden trace, a capture, or a folder of them)")
        if _kind(p):
            found.append(p)
            continue
        if not p.is_dir():
            raise InputError(p, "not a directory (expected a golden trace, a capture, or a folder of them)")
        here: list[Path] = []
        for d, subdirs, _ in os.walk(p):
            subdirs.sort()
            dp = Path(d)
            if dp != p and _kind(dp):
                here.append(dp)
                subdirs[:] = []
        if not here:
            raise InputError(p, "holds no golden trace (trace.json) and no capture (solver.prototxt + gradients.npz)")
        found.extend(sorted(here))
    return found


def default_corpus(base: str | os.PathLike | None = None) -> list[Path]:
    """``golden/`` when it holds traces, else ``fixtures/caffe-runs*``.

    Looked up under ``base`` (default: the current directory, then the
    repository this package lives in). Raises ``InputError`` when neither
    exists.
    """
    bases = [Path(base)] if base is not None else [Path.cwd(), _repo_root()]
    for b in bases:
        golden = b / "golden"
        if golden.is_dir():
            try:
                return find_traces([golden])
            except InputError:
                pass
        runs = sorted(d for d in (b / "fixtures").glob("caffe-runs*") if d.is_dir())
        if runs:
            return find_traces(runs)
    raise InputError(bases[0] / "golden", "no traces here nor in fixtures/caffe-runs*: pass --golden DIR")


@functools.lru_cache(maxsize=512)
def _load_cached(path: str, mtime: float) -> Trace:
    from ..io.capture import load_capture
    from ..io.golden import read_golden

    p = Path(path)
    return read_golden(p) if _kind(p) == "golden" else load_capture(p)


def load_trace(path: str | os.PathLike) -> Trace:
    """A golden trace or capture as a ``Trace`` (cached per path and modification time)."""
    p = Path(path).resolve()
    marker = p / "trace.json" if (p / "trace.json").exists() else p / "gradients.npz"
    try:
        mtime = marker.stat().st_mtime
    except OSError:
        mtime = 0.0
    return _load_cached(str(p), mtime)


_BLAS_SHORT = {"openblas": "", "reference": "refblas", "atlas": "atlas"}


def trace_id(trace: Trace) -> str:
    """A readable id: the trace's name, prefixed by its BLAS unless it is OpenBLAS.

    ``adam-poly-clip-l1``, ``refblas/sgd-step``, ``atlas/adam-inv``.
    """
    prefix = _BLAS_SHORT.get(trace.blas, trace.blas)
    return f"{prefix}/{trace.name}" if prefix else trace.name


def load_corpus(paths: Iterable[str | os.PathLike] | None = None) -> list[tuple[str, Trace]]:
    """``(id, trace)`` for every trace under ``paths`` (``default_corpus()`` when None); ids made unique."""
    dirs = default_corpus() if paths is None else find_traces(paths)
    out: list[tuple[str, Trace]] = []
    seen: dict[str, int] = {}
    for d in dirs:
        t = load_trace(d)
        tid = trace_id(t)
        if tid in seen:
            seen[tid] += 1
            tid = f"{tid}-{seen[tid]}"
        else:
            seen[tid] = 1
        out.append((tid, t))
    return out


def trace_options(trace: Trace) -> str:
    """The settings that make a trace special, compactly: ``mom 0.9 wd 0.005 L1 clip 1 iter_size 2``."""
    c = trace.config
    parts = []
    if c.momentum and c.type in ("SGD", "Nesterov", "AdaDelta", "Adam"):
        parts.append(f"mom {log_float_text(c.momentum)}")
    if c.weight_decay:
        parts.append(f"wd {log_float_text(c.weight_decay)}" + ("" if c.regularization_type == "L2" else f" {c.regularization_type}"))
    if c.clip_gradients >= 0:
        parts.append(f"clip {log_float_text(c.clip_gradients)}")
    if c.iter_size != 1:
        parts.append(f"iter_size {c.iter_size}")
    if trace.init_iter:
        parts.append(f"resumed@{trace.init_iter}")
    return " ".join(parts)


# ---------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------
def _num(x) -> str:
    return str(np.float32(x))


def as_tolerance(tolerance: Tolerance | int | None) -> Tolerance:
    """``None`` -> ``EXACT``; an int -> ``Tolerance(max_ulp=n)``; a ``Tolerance`` as is."""
    if tolerance is None:
        return EXACT
    if isinstance(tolerance, Tolerance):
        return tolerance
    return Tolerance(max_ulp=int(tolerance))


def _ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``ulp_distance`` with a fast path for bit-identical arrays (the common case)."""
    if a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32)):
        return np.zeros(a.shape)
    return ulp_distance(a, b)


def _json_ulp(d: float | None):
    if d is None:
        return None
    return int(d) if math.isfinite(d) else "inf"


def _ulp_text(d: float | None) -> str:
    if d is None:
        return "-"
    return "inf" if not math.isfinite(d) else str(int(d))


@dataclass
class Divergence:
    """The first value that differs beyond the tolerance."""

    iter: int
    field: str
    blob: str | None
    index: int | None
    expected: str
    got: str
    ulp: float | None

    def __str__(self) -> str:
        where = self.field
        if self.blob is not None:
            where += f" {self.blob}"
            if self.index is not None:
                where += f"[{self.index}]"
        dist = "" if self.ulp is None else f" ({_ulp_text(self.ulp)} ulp)"
        return f"iter {self.iter} {where}: expected {self.expected} got {self.got}{dist}"

    def to_dict(self) -> dict:
        return {"iter": self.iter, "field": self.field, "blob": self.blob, "index": self.index,
                "expected": self.expected, "got": self.got, "ulp": _json_ulp(self.ulp), "text": str(self)}


@dataclass
class Comparison:
    """Port output vs. Caffe: worst ULP distance of the arrays, first divergence, what was compared."""

    max_ulp: float | None
    divergence: Divergence | None
    fields: tuple[str, ...]
    values: int


def _blob_names(kind: str, config) -> list[str]:
    nb = len(config.blobs)
    if kind == "history":
        return [config.blobs[k % nb].name + (f"#{k // nb}" if config.history_slots > 1 else "")
                for k in range(nb * config.history_slots)]
    return [b.name for b in config.blobs]


def _flat_expected(value) -> np.ndarray:
    arrays = list(value.values()) if isinstance(value, dict) else list(value)
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)


def _locate(kind: str, config, flat_index: int) -> tuple[str, int]:
    """(blob name, index inside the blob) of an index into the concatenated blobs."""
    nb = len(config.blobs)
    counts = [config.blobs[k % nb].count for k in range(nb * (config.history_slots if kind == "history" else 1))]
    names = _blob_names(kind, config)
    for name, n in zip(names, counts):
        if flat_index < n:
            return name, flat_index
        flat_index -= n
    return names[-1] if names else "?", flat_index


def compare_outputs(trace: Trace, outputs: Sequence[StepOutput], tolerance: Tolerance | int | None = None) -> Comparison:
    """Compare a port's per-iteration outputs with the trace's expectations.

    Fields are compared where both sides have them, in the order ``lr``
    (as Caffe's log prints it when the trace holds log text, else in ULPs),
    ``params``, ``diff``, ``history``, ``current_step``. ``tolerance``
    (``harness.compare.Tolerance``, default ``EXACT``: identical bits)
    decides which array elements count as equal.
    """
    tol = as_tolerance(tolerance)
    cfg = trace.config
    worst: float | None = None
    first: Divergence | None = None
    fields: set[str] = set()
    values = 0
    for it, out in zip(trace.iterations, outputs):
        exp_lr = it.lr
        if exp_lr is not None and out.lr is not None:
            fields.add("lr")
            values += 1
            if isinstance(exp_lr, str):
                if not log_float_matches(exp_lr, out.lr) and first is None:
                    got = log_float_text(np.float32(out.lr))
                    first = Divergence(it.iter, "lr", None, None, exp_lr.strip(), got + " (as Caffe logs it)", None)
            else:
                e, g = np.float32(exp_lr), np.float32(out.lr)
                d = float(ulp_distance(e, g))
                worst = d if worst is None else max(worst, d)
                if not bool(tol.accepts(e, g, d)) and first is None:
                    first = Divergence(it.iter, "lr", None, None, _num(e), _num(g), d)
        for kind in ("params", "diff", "history"):
            exp = getattr(it, kind)
            got = out.flat(kind)
            if exp is None or got is None:
                continue
            fields.add(kind)
            e = _flat_expected(exp)
            if e.size != got.size:
                raise ValueError(f"{kind} of iteration {it.iter}: {got.size} values, the trace has {e.size}")
            d = _ulps(e, got)
            values += d.size
            if d.size:
                m = float(d.max())
                worst = m if worst is None else max(worst, m)
                if first is None and m > 0:
                    ok = tol.accepts(e, got, d)
                    if not ok.all():
                        i = int(np.argmin(ok))
                        name, j = _locate(kind, cfg, i)
                        first = Divergence(it.iter, kind, name, j, _num(e[i]), _num(got[i]), float(d[i]))
        if it.current_step is not None and out.current_step is not None:
            fields.add("current_step")
            values += 1
            if it.current_step != out.current_step and first is None:
                first = Divergence(it.iter, "current_step", None, None, str(it.current_step), str(out.current_step), None)
    order = ("lr", "params", "diff", "history", "current_step")
    return Comparison(worst, first, tuple(f for f in order if f in fields), values)


# ---------------------------------------------------------------------------
# one trace
# ---------------------------------------------------------------------------
@dataclass
class TraceResult:
    """The verdict on one trace (``result`` is one of ``RESULTS``)."""

    id: str
    trace: Trace
    result: str
    message: str = ""
    max_ulp: float | None = None
    divergence: Divergence | None = None
    fields: tuple[str, ...] = ()
    diagnosis: str = ""
    run: PortRun | None = None

    @property
    def failed(self) -> bool:
        return self.result in ("FAIL", "ERROR")

    @property
    def numeric_failure(self) -> bool:
        """Failed because values differ (the case diagnosis can explain)."""
        return self.result == "FAIL" and self.run is not None and self.run.status == "ok" and self.divergence is not None

    def to_dict(self) -> dict:
        c = self.trace.config
        return {
            "id": self.id,
            "source": self.trace.source,
            "blas": self.trace.blas,
            "solver": c.type,
            "lr_policy": c.lr_policy,
            "options": trace_options(self.trace),
            "result": self.result,
            "message": self.message,
            "max_ulp": _json_ulp(self.max_ulp),
            "compared": list(self.fields),
            "first_divergence": None if self.divergence is None else self.divergence.to_dict(),
            "diagnosis": self.diagnosis,
            "seconds": None if self.run is None else round(self.run.seconds, 4),
        }


def evaluate(tid: str, trace: Trace, run: PortRun, tolerance: Tolerance | int | None = None) -> TraceResult:
    """Turn a ``PortRun`` on ``trace`` into a ``TraceResult``."""
    if trace.refusal is not None:
        when = "at start" if trace.refusal_when == "start" else "at the first update"
        if run.status == "refused":
            same = "" if run.message.strip() == trace.refusal.strip() else f" (Caffe: {trace.refusal})"
            return TraceResult(tid, trace, "refused-ok", f"refused: {run.message}{same}", run=run)
        if run.status == "unsupported":
            return TraceResult(tid, trace, "refused-ok", f"declared unsupported: {run.message} (Caffe refuses {when}: {trace.refusal})", run=run)
        if run.status == "error":
            return TraceResult(tid, trace, "ERROR", run.message, run=run)
        return TraceResult(tid, trace, "FAIL", f"Caffe refuses these settings {when} ({trace.refusal}); the port ran them", run=run)
    if run.status == "unsupported":
        return TraceResult(tid, trace, "unsupported", run.message, run=run)
    if run.status == "refused":
        return TraceResult(tid, trace, "FAIL", f"the port refused settings Caffe accepts: {run.message}", run=run)
    if run.status == "error":
        return TraceResult(tid, trace, "ERROR", run.message, run=run)
    if len(run.outputs) != len(trace.iterations):
        return TraceResult(tid, trace, "ERROR", f"the port produced {len(run.outputs)} iterations, the trace has {len(trace.iterations)}", run=run)
    cmp = compare_outputs(trace, run.outputs, tolerance)
    if not cmp.fields and trace.iterations:
        return TraceResult(tid, trace, "ERROR", "nothing to compare: the trace records no expectations the port outputs", run=run)
    result = "pass" if cmp.divergence is None else "FAIL"
    return TraceResult(tid, trace, result, "" if result == "pass" else str(cmp.divergence), cmp.max_ulp,
                       cmp.divergence, cmp.fields, run=run)


# ---------------------------------------------------------------------------
# diagnosis
# ---------------------------------------------------------------------------
class VariantCache:
    """Runs of misport variants, by (variant ids, trace), so each runs once per session."""

    def __init__(self) -> None:
        self._runs: dict[tuple[tuple[str, ...], int], PortRun] = {}
        self._keep: dict[int, Trace] = {}

    def run(self, ids: tuple[str, ...], trace: Trace) -> PortRun:
        """The ``PortRun`` of ``variant:a+b`` on ``trace`` (computed on first use)."""
        key = (tuple(sorted(ids)), id(trace))
        r = self._runs.get(key)
        if r is None:
            from .base import InProcessRunner

            name = "+".join(key[0]) or "caffe"
            r = InProcessRunner(variant_port(name), f"variant:{name}", trusted=True).run(trace)
            self._runs[key] = r
            self._keep[id(trace)] = trace  # keep id() valid
        return r


def _max_ulps(a: np.ndarray, b: np.ndarray) -> float:
    """Largest float32 ULP distance between two equal-length vectors (as ``harness.compare``
    counts it: -0 and +0 are neighbours; NaN is infinitely far unless the bits are equal)."""
    ua, ub = a.view(np.uint32), b.view(np.uint32)
    diff = ua != ub
    if not diff.any():
        return 0.0
    a, b = a[diff], b[diff]
    if np.isnan(a).any() or np.isnan(b).any() or np.isinf(a).any() or np.isinf(b).any():
        return math.inf
    ka = ua[diff].astype(np.int64)
    kb = ub[diff].astype(np.int64)
    sign = np.int64(1) << 31
    ka = np.where(ka >= sign, sign - 1 - ka, ka)
    kb = np.where(kb >= sign, sign - 1 - kb, kb)
    return float(np.abs(ka - kb).max())


def _distance(a: PortRun, b: PortRun) -> float:
    """Worst ULP distance between two runs over what both output; inf when incomparable."""
    if a.status != "ok" or b.status != "ok" or len(a.outputs) != len(b.outputs):
        return math.inf
    worst = 0.0
    for kind in ("lr", "params", "diff", "history"):
        fa, fb = a.flat_all(kind), b.flat_all(kind)
        if fa is not None and fb is not None:
            if fa.size != fb.size:
                return math.inf
            worst = max(worst, _max_ulps(fa, fb))
    for x, y in zip(a.outputs, b.outputs):
        if x.current_step is not None and y.current_step is not None and x.current_step != y.current_step:
            return math.inf
    return worst


def _describe(ids: tuple[str, ...]) -> str:
    return " and with ".join(VARIANTS[i].description for i in ids)


@dataclass
class GroupDiagnosis:
    """What explains the numeric failures of one solver type.

    ``exact``: variant combinations (tuples of ids) that reproduce the
    port's output on every failing trace of the group and agree with it on
    the group's passing traces; otherwise ``closest``: the combination with
    the most traces reproduced exactly, then the smallest ``closest_score``
    (summed ``log2(1 + max ulp)`` against the port), named only when it is
    closer than Caffe itself (``caffe_score``).
    """

    solver: str
    failing: list[str] = field(default_factory=list)
    exact: list[tuple[str, ...]] = field(default_factory=list)
    closest: tuple[str, ...] | None = None
    closest_exact_traces: int = 0
    closest_score: float = 0.0
    caffe_score: float = 0.0

    @property
    def text(self) -> str:
        """One sentence: "behaves like Caffe with ..."."""
        n = len(self.failing)
        if self.exact:
            first = self.exact[0]
            text = (f"behaves like Caffe with {_describe(first)} (variant {'+'.join(first)}: "
                    f"reproduces all {n} failing trace(s) exactly)")
            if len(self.exact) > 1:
                others = ", ".join("+".join(e) for e in self.exact[1:])
                text += f"; equally explained by {others} (no trace in the corpus separates them)"
            return text
        if self.closest:
            return (f"closest known misport: Caffe with {_describe(self.closest)} (variant {'+'.join(self.closest)}: "
                    f"exact on {self.closest_exact_traces} of {n} failing trace(s); "
                    f"distance {self.closest_score:.1f} vs {self.caffe_score:.1f} for Caffe itself)")
        return "no known misport explains it (see harness.ports.variants)"

    def to_dict(self) -> dict:
        return {"solver": self.solver, "failing": self.failing, "text": self.text,
                "exact": ["+".join(e) for e in self.exact],
                "closest": None if self.closest is None else "+".join(self.closest),
                "closest_exact_traces": self.closest_exact_traces,
                "closest_score": round(self.closest_score, 3), "caffe_score": round(self.caffe_score, 3)}


@dataclass
class Diagnosis:
    """Which known misports explain a port's numeric failures, per solver type."""

    groups: list[GroupDiagnosis] = field(default_factory=list)

    @property
    def failing(self) -> int:
        return sum(len(g.failing) for g in self.groups)

    @property
    def exact(self) -> list[tuple[str, ...]]:
        """Combinations that explain every failing trace of every group (all groups agree)."""
        if not self.groups:
            return []
        common = set(self.groups[0].exact)
        for g in self.groups[1:]:
            common &= set(g.exact)
        return [e for e in self.groups[0].exact if e in common]

    @property
    def text(self) -> str:
        if not self.groups:
            return ""
        if len(self.groups) == 1:
            return self.groups[0].text
        return "; ".join(f"{g.solver}: {g.text}" for g in self.groups)

    def to_dict(self) -> dict:
        return {"text": self.text, "failing": self.failing, "groups": [g.to_dict() for g in self.groups]}


def _score(d: float) -> float:
    return math.log2(1 + d) if math.isfinite(d) else 64.0


def _applies(ids: tuple[str, ...], trace: Trace) -> bool:
    return any(VARIANTS[i].applies(trace) for i in ids)


def _diagnose_group(solver: str, failing: list[TraceResult], passing: list[TraceResult], tol: int,
                    cache: VariantCache, pairs: bool) -> GroupDiagnosis:
    gd = GroupDiagnosis(solver, [r.id for r in failing])
    base = {r.id: (float(r.max_ulp) if r.max_ulp is not None else math.inf) for r in failing}
    gd.caffe_score = sum(_score(d) for d in base.values())

    def distances(ids: tuple[str, ...], *, stop_when_inexact: bool = False) -> dict[str, float]:
        out = {}
        for r in failing:
            d = _distance(r.run, cache.run(ids, r.trace)) if _applies(ids, r.trace) else base[r.id]
            out[r.id] = d
            if stop_when_inexact and d > tol:
                break
        return out

    def agrees_on_passing(ids: tuple[str, ...]) -> bool:
        return all(_distance(r.run, cache.run(ids, r.trace)) <= tol for r in passing if _applies(ids, r.trace))

    singles = {(v,): distances((v,)) for v in VARIANTS}
    for r in failing:
        hits = [ids[0] for ids, ds in singles.items() if ds[r.id] <= tol]
        if hits:
            r.diagnosis = "= " + ", ".join(hits)
        else:
            ids, ds = min(singles.items(), key=lambda kv: kv[1][r.id])
            d = ds[r.id]
            r.diagnosis = f"~ {ids[0]} ({_ulp_text(d)} ulp)" if d < base[r.id] else "?"

    def n_exact(ds: dict[str, float]) -> int:
        return sum(d <= tol for d in ds.values())

    def rank(item):
        ids, ds = item
        return (-n_exact(ds), sum(_score(d) for d in ds.values()), len(ids))

    scored = dict(singles)
    gd.exact = [ids for ids, ds in singles.items() if n_exact(ds) == len(failing) and agrees_on_passing(ids)]
    if not gd.exact and pairs:
        ranked = [ids[0] for ids, _ in sorted(singles.items(), key=rank)]
        pool = list(dict.fromkeys([v for v in ranked if n_exact(singles[(v,)])] + ranked[:6]))[:8]
        for i, a in enumerate(pool):
            for b in pool[i + 1:]:
                ids = (a, b)
                ds = distances(ids)
                scored[ids] = ds
                if n_exact(ds) == len(failing) and agrees_on_passing(ids):
                    gd.exact.append(ids)
        if gd.exact:
            for r in failing:
                r.diagnosis = "= " + "+".join(gd.exact[0])
    if not gd.exact:  # the closest: most traces exact, then the fewest variants, then the smallest distance
        ids, ds = min(scored.items(), key=lambda kv: (-n_exact(kv[1]), len(kv[0]), sum(_score(d) for d in kv[1].values())))
        score = sum(_score(d) for d in ds.values())
        if n_exact(ds) or score < gd.caffe_score:
            gd.closest = ids
            gd.closest_exact_traces = n_exact(ds)
            gd.closest_score = score
            for r in failing:
                if ds[r.id] <= tol:
                    r.diagnosis = "= " + "+".join(ids)
    return gd


def diagnose(results: Sequence[TraceResult], *, tolerance: Tolerance | int | None = None,
             cache: VariantCache | None = None, pairs: bool = True) -> Diagnosis:
    """Name the catalogued misports that reproduce the port's numeric failures.

    Failing traces are grouped by solver type. In each group the applicable
    variants (``Variant.applies``) run on every failing trace; a variant
    that matches the port within the tolerance's ULPs on all of them is
    confirmed on the group's passing traces. When no single variant does,
    pairs of the most promising ones are tried; failing that, the closest
    combination is named if it beats Caffe itself. Each failing result's
    ``diagnosis`` is set to a short note for the table.
    """
    cache = cache or VariantCache()
    tol = as_tolerance(tolerance).max_ulp  # variants vs. the port: ULPs only
    failing = [r for r in results if r.numeric_failure]
    passing = [r for r in results if r.result == "pass" and r.run is not None]
    diag = Diagnosis()
    for solver in dict.fromkeys(r.trace.config.type for r in failing):
        fg = [r for r in failing if r.trace.config.type == solver]
        pg = [r for r in passing if r.trace.config.type == solver]
        diag.groups.append(_diagnose_group(solver, fg, pg, tol, cache, pairs))
    return diag


# ---------------------------------------------------------------------------
# a whole check
# ---------------------------------------------------------------------------
@dataclass
class Report:
    """Everything ``check`` found: per-trace results and the overall diagnosis."""

    port: str
    tolerance: Tolerance
    results: list[TraceResult]
    diagnosis: Diagnosis

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in RESULTS}
        for r in self.results:
            c[r.result] += 1
        return c

    @property
    def ok(self) -> bool:
        """True iff no supported trace failed."""
        return not any(r.failed for r in self.results)

    def to_dict(self) -> dict:
        return {
            "port": self.port,
            "tolerance": {"max_ulp": self.tolerance.max_ulp, "rtol": self.tolerance.rtol, "atol": self.tolerance.atol},
            "ok": self.ok,
            "counts": self.counts(),
            "diagnosis": self.diagnosis.to_dict(),
            "results": [r.to_dict() for r in self.results],
        }


def check(runner: Runner, corpus: Sequence[tuple[str, Trace]], *, tolerance: Tolerance | int | None = None, diagnose_failures: bool = True,
          cache: VariantCache | None = None, progress=None) -> Report:
    """Run ``runner`` on every ``(id, trace)`` of ``corpus``; compare, diagnose, report.

    ``progress(result)`` is called after each trace when given.
    """
    tolerance = as_tolerance(tolerance)
    results = []
    for tid, trace in corpus:
        r = evaluate(tid, trace, runner.run(trace), tolerance)
        results.append(r)
        if progress is not None:
            progress(r)
    diag = diagnose(results, tolerance=tolerance, cache=cache) if diagnose_failures else Diagnosis()
    return Report(getattr(runner, "name", "port"), tolerance, results, diag)


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def _summary_line(report: Report) -> str:
    c = report.counts()
    parts = ", ".join(f"{n} {k}" for k, n in c.items() if n)
    t = report.tolerance
    tol = "bit-exact" if t == EXACT else f"tolerance {t.max_ulp} ulp" + (f", rtol {t.rtol:g}, atol {t.atol:g}" if t.rtol or t.atol else "")
    return f"port {report.port}: {len(report.results)} traces ({tol}): {parts or 'none'}"


def render_text(report: Report, *, width: int | None = None) -> str:
    """The conformance table, a summary line and the diagnosis."""
    head = ("trace", "solver", "policy", "options", "result", "max ulp", "first divergence / reason", "diagnosis")
    rows = []
    for r in report.results:
        c = r.trace.config
        detail = str(r.divergence) if r.divergence is not None else r.message
        rows.append((r.id, c.type, c.lr_policy or "-", trace_options(r.trace) or "-", r.result, _ulp_text(r.max_ulp), detail or "-", r.diagnosis or ""))
    widths = [max(len(head[i]), *(len(row[i]) for row in rows)) if rows else len(head[i]) for i in range(len(head))]
    widths[6] = min(widths[6], 110)

    def line(cells):
        out = []
        for i, cell in enumerate(cells):
            cell = cell if len(cell) <= widths[i] else cell[: widths[i] - 1] + "~"
            out.append(cell.ljust(widths[i]) if i < len(cells) - 1 else cell)
        return "  ".join(out).rstrip()

    lines = [line(head), line(tuple("-" * w for w in widths))]
    lines += [line(row) for row in rows]
    lines.append("")
    lines.append(_summary_line(report))
    if report.diagnosis.failing:
        lines.append("diagnosis: " + report.diagnosis.text)
    elif report.ok:
        lines.append("conformant: every supported trace reproduces Caffe" + (" bit for bit" if report.tolerance == EXACT else " within the tolerance"))
    return "\n".join(lines) + "\n"


def render_json(report: Report) -> str:
    """The report as JSON (``Report.to_dict``)."""
    return json.dumps(report.to_dict(), indent=1) + "\n"


def render_junit(report: Report, *, suite: str | None = None) -> str:
    """JUnit XML: one testsuite, a testcase per trace; FAIL -> failure, ERROR -> error, unsupported -> skipped."""
    c = report.counts()
    name = suite or f"caffe-harness check {report.port}"
    total_time = sum((r.run.seconds if r.run else 0.0) for r in report.results)
    out = ['<?xml version="1.0" encoding="utf-8"?>',
           f'<testsuites name={quoteattr(name)} tests="{len(report.results)}" failures="{c["FAIL"]}" errors="{c["ERROR"]}" '
           f'skipped="{c["unsupported"]}" time="{total_time:.3f}">',
           f'  <testsuite name={quoteattr(name)} tests="{len(report.results)}" failures="{c["FAIL"]}" errors="{c["ERROR"]}" '
           f'skipped="{c["unsupported"]}" time="{total_time:.3f}">']
    for r in report.results:
        cls = f"caffe_conformance.{r.trace.blas}"
        t = r.run.seconds if r.run else 0.0
        attrs = f'classname={quoteattr(cls)} name={quoteattr(r.id)} time="{t:.3f}"'
        if r.result == "FAIL":
            body = r.message + (f"\ndiagnosis: {r.diagnosis}" if r.diagnosis else "")
            if report.diagnosis.text:
                body += f"\n{report.diagnosis.text}"
            out.append(f"    <testcase {attrs}>")
            out.append(f"      <failure message={quoteattr(r.message)} type=\"mismatch\">{escape(body)}</failure>")
            out.append("    </testcase>")
        elif r.result == "ERROR":
            out.append(f"    <testcase {attrs}>")
            out.append(f"      <error message={quoteattr(r.message)} type=\"port-error\">{escape(r.message)}</error>")
            out.append("    </testcase>")
        elif r.result == "unsupported":
            out.append(f"    <testcase {attrs}>")
            out.append(f"      <skipped message={quoteattr('unsupported: ' + r.message)}/>")
            out.append("    </testcase>")
        elif r.result == "refused-ok":
            out.append(f"    <testcase {attrs}>")
            out.append(f"      <system-out>{escape(r.message)}</system-out>")
            out.append("    </testcase>")
        else:
            out.append(f"    <testcase {attrs}/>")
    out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out) + "\n"
