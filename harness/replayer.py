"""Replay traces (captures and golden traces) through the reference solver.

``replay(path)`` finds every run under ``path`` (a capture directory, a
golden trace directory, or a folder holding any number of them), feeds each
run's gradients through ``Reference`` and compares every expected number
with what the reference computed, in Caffe's order within an iteration:
the learning rate, the history, the update value (``diff``), the parameters
and ``current_step``. The first disagreement beyond the tolerance stops that
run and is reported with its iteration, stage, blob, flat index, expected and
computed values and their ULP distance.

Runs Caffe refused are replayed as refusals: the harness must refuse the same
settings with the same message.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .compare import EXACT, Tolerance, log_float_matches, summarize, ulp_distance
from .config import SolverConfig
from .errors import InputError
from .io.golden import release
from .trace import Trace

__all__ = [
    "Divergence",
    "RunResult",
    "find_runs",
    "load_traces",
    "profile_for",
    "replay",
    "replay_trace",
    "trace_options",
]



@dataclass
class Divergence:
    """Where a replay first departs from the expected trace."""

    iter: int
    stage: str  # lr | history | history2 | diff | params | current_step | refusal
    blob: str = ""
    index: int | None = None
    expected: object = None
    got: object = None
    ulps: float | None = None

    def describe(self) -> str:
        where = f"iter {self.iter} {self.stage}"
        if self.blob:
            where += f" {self.blob}"
        if self.index is not None:
            where += f"[{self.index}]"
        text = f"{where}: expected {_fmt(self.expected)}, got {_fmt(self.got)}"
        if self.ulps is not None:
            text += f" ({_fmt_ulps(self.ulps)} ulp)"
        return text


@dataclass
class RunResult:
    """The outcome of replaying one run."""

    name: str
    path: str
    type: str
    lr_policy: str
    options: list[str]
    profile: str
    blas: str
    iterations: int
    status: str  # exact | within-tolerance | mismatch | refused | refusal-mismatch
    max_ulp: float = 0.0
    compared: int = 0
    divergence: Divergence | None = None
    message: str = ""
    origin: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("exact", "within-tolerance", "refused")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        d["divergence_text"] = self.divergence.describe() if self.divergence else None
        return d


def _fmt(x) -> str:
    """Floats as the shortest text that reads back as the same float32."""
    if isinstance(x, (float, np.floating)):
        return str(np.float32(x))
    return repr(x)


def _fmt_ulps(u: float) -> str:
    if u == float("inf"):
        return "inf"
    return f"{u:.0f}" if float(u).is_integer() else f"{u:.3g}"


def trace_options(config: SolverConfig) -> list[str]:
    """Short tags for what a run exercises beyond type and policy."""
    opts = []
    if config.regularization_type != "L2" and config.weight_decay:
        opts.append(config.regularization_type.lower())
    if config.clip_gradients >= 0:
        opts.append("clip")
    if config.iter_size != 1:
        opts.append(f"iter_size={config.iter_size}")
    if any(b.lr_mult == 0 for b in config.blobs):
        opts.append("lr_mult=0")
    if any(b.decay_mult == 0 for b in config.blobs):
        opts.append("decay_mult=0")
    if config.type in ("SGD", "Nesterov") and config.momentum == 0:
        opts.append("momentum=0")
    return opts


def profile_for(trace: Trace, profile: str | None = None) -> str:
    """The profile to replay ``trace`` with: ``profile`` or the one of its BLAS."""
    if profile:
        return profile
    from .reference import profile_for_blas

    try:
        return profile_for_blas(trace.blas)
    except (KeyError, ValueError) as e:
        raise InputError(trace.source or trace.name, str(e).strip("'\"")) from None


# ---------------------------------------------------------------------------
# finding and loading runs
# ---------------------------------------------------------------------------

def _kind(path: Path) -> str | None:
    from .io.capture import is_capture
    from .io.golden import is_golden

    if is_golden(path):
        return "golden"
    if is_capture(path):
        return "capture"
    return None


def find_runs(paths: Iterable) -> list[tuple[Path, str, str]]:
    """Every capture or golden directory at or below ``paths``.

    Returns ``(path, kind, name)`` sorted by path; ``name`` is the run's
    path relative to the argument it was found under (its folder name when
    the argument is the run itself), so runs of the same case made with
    different BLAS builds stay apart.
    """
    out: list[tuple[Path, str, str]] = []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise InputError(p, "no such file or directory")
        kind = _kind(p)
        if kind:
            out.append((p, kind, p.resolve().name))
            continue
        if not p.is_dir():
            raise InputError(p, "not a capture directory or golden trace")
        found = []
        for root, dirs, files in os.walk(p):
            dirs.sort()
            r = Path(root)
            k = _kind(r)
            if k:
                found.append((r, k, r.relative_to(p).as_posix()))
                dirs[:] = []  # a run's own subfolders (snapshots/) hold no runs
        if not found:
            raise InputError(p, "holds no capture directory or golden trace")
        out.extend(found)
    return out


def load_traces(path: Path, kind: str | None = None, name: str | None = None) -> list[Trace]:
    """The traces of one capture or golden directory.

    A resumed capture holds two runs, the straight one and the continuation
    from its ``_iter_K`` state: both are returned (the second named
    ``NAME@resume``).
    """
    path = Path(path)
    kind = kind or _kind(path)
    name = name or path.name
    if kind == "golden":
        from .io.golden import read_golden

        t = read_golden(path)
        t.name = name
        return [t]
    if kind == "capture":
        from .io.capture import capture_parts, load_capture

        parts = capture_parts(path)
        out = []
        for part in parts:
            t = load_capture(path, part=part)
            t.name = name if part == parts[0] else f"{name}@{part}"
            out.append(t)
        return out
    raise InputError(path, "not a capture directory or golden trace")


# ---------------------------------------------------------------------------
# replaying
# ---------------------------------------------------------------------------

def _expected_refusal(trace: Trace) -> str:
    return (trace.refusal or "").strip()


def _our_refusal(trace: Trace):
    from .config import config_refusals, update_refusals

    refusals = list(config_refusals(trace.config)) + list(update_refusals(trace.config, start_iter=trace.init_iter))
    return refusals[0] if refusals else None


def _lr_matches(expected, got: np.float32, tol: Tolerance) -> tuple[bool, float]:
    """Compare an expected lr (float32 value, or the log's 6-digit text) with ours.

    Log text must be exactly what Caffe prints for our rate (``%g``); a
    float32 value is held to ``tol``.
    """
    if isinstance(expected, str):
        return log_float_matches(expected, got), 0.0
    e = np.float32(expected)
    u = float(ulp_distance(e, np.float32(got)))
    return bool(tol.accepts(e, np.float32(got), u)), u


def replay_trace(
    trace: Trace,
    *,
    profile: str | None = None,
    tolerance: Tolerance = EXACT,
    progress=None,
    release_inputs: bool = False,
) -> RunResult:
    """Replay one trace; return where (if anywhere) it departs from Caffe.

    ``release_inputs`` drops each iteration's memory-mapped arrays from
    memory once they are used (``harness.io.golden.release``): for traces
    read only to be replayed, such as ``replay``'s.
    """
    from .reference import Reference

    cfg = trace.config
    prof = profile_for(trace, profile)
    res = RunResult(
        name=trace.name,
        path=trace.source,
        type=cfg.type,
        lr_policy=cfg.lr_policy,
        options=trace_options(cfg),
        profile=prof,
        blas=trace.blas,
        iterations=len(trace.iterations),
        status="exact",
        origin=str(trace.provenance.get("origin", "")),
    )
    expected_refusal = _expected_refusal(trace)
    ours = _our_refusal(trace)
    if expected_refusal or ours is not None:
        got = ours.message.strip() if ours is not None else ""
        if expected_refusal and got == expected_refusal:
            res.status, res.message = "refused", got
        else:
            res.status = "refusal-mismatch"
            res.divergence = Divergence(0, "refusal", expected=expected_refusal or "(accepted)", got=got or "(accepted)")
            res.message = res.divergence.describe()
        return res

    ref = Reference(
        cfg,
        trace.init_params,
        profile=prof,
        history=trace.init_history,
        iter=trace.init_iter,
        current_step=trace.init_current_step,
    )
    names = cfg.blob_names or tuple(trace.init_params)
    n = len(names)
    worst = 0.0
    compared = 0
    if release_inputs:
        release(*trace.init_params.values(), *(trace.init_history or ()))
    for it in trace.iterations:
        rec = ref.step(it.grads, copy=False)  # views, compared before the next step changes them
        if release_inputs:
            release(*(a for p in ([it.grads] if isinstance(it.grads, dict) else it.grads) for a in p.values()))
        if it.lr is not None:
            ok, u = _lr_matches(it.lr, rec.lr, tolerance)
            compared += 1
            worst = max(worst, u)
            if not ok:
                res.divergence = Divergence(it.iter, "lr", expected=it.lr, got=float(rec.lr), ulps=u)
                break
        div = None
        # history[0:N] is SGD's/Nesterov's momentum, AdaGrad's/RMSProp's
        # E[g^2], AdaDelta's E[g^2], Adam's m; history[N:2N] ("history2")
        # AdaDelta's E[dx^2] and Adam's v
        exp_h = it.history
        for stage, exp, got, labels in (
            ("history", None if exp_h is None else exp_h[:n], rec.history[:n], names),
            ("history2", None if exp_h is None or len(exp_h) <= n else exp_h[n:], rec.history[n:], names),
            ("diff", it.diff, rec.diff, names),
            ("params", it.params, rec.params, names),
        ):
            if exp is None:
                continue
            pairs = zip(labels, exp, got) if isinstance(exp, list) else ((n, exp[n], got[n]) for n in names if n in exp)
            for label, e, g in pairs:
                e = np.asarray(e, dtype=np.float32)
                g = np.asarray(g, dtype=np.float32)
                if e.shape != g.shape:
                    div = Divergence(it.iter, stage, label, None, f"shape {e.shape}", f"shape {g.shape}")
                    break
                cmp = summarize(e, g, tolerance)
                compared += cmp.count
                worst = max(worst, cmp.max_ulp)
                if cmp.first is not None:
                    f = cmp.first
                    div = Divergence(it.iter, stage, label, f.index, f.expected, f.got, f.ulps)
                    break
            if div is not None:
                break
        if release_inputs:
            release(*(it.history or ()), *(it.diff or {}).values(), *(it.params or {}).values())
        if div is None and it.current_step is not None and int(it.current_step) != int(rec.current_step):
            div = Divergence(it.iter, "current_step", expected=int(it.current_step), got=int(rec.current_step))
        if div is not None:
            res.divergence = div
            break
        if progress is not None:
            progress(1)
    res.max_ulp = worst
    res.compared = compared
    if res.divergence is not None:
        res.status = "mismatch"
        res.message = res.divergence.describe()
    elif worst > 0:
        res.status = "within-tolerance"
    return res


def replay(
    paths,
    *,
    profile: str | None = None,
    tolerance: Tolerance = EXACT,
    progress: bool = False,
) -> list[RunResult]:
    """Replay every run found under ``paths`` (see ``find_runs``)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    runs = find_runs(paths)
    results = []
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(runs), unit="run", leave=False, disable=None)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            bar = None
    try:
        for path, kind, name in runs:
            for trace in load_traces(path, kind, name):
                if not trace.source:
                    trace.source = os.fspath(path)
                results.append(replay_trace(trace, profile=profile, tolerance=tolerance, release_inputs=True))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return results
