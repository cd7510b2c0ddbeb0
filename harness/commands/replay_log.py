"""``caffe-harness replay-log LOG``: check a Caffe training log against the reference schedule.

Every ``Iteration N, lr = R`` line is compared with the reference rate
(``harness.lr``) at print precision: Caffe prints the float32 rate with
``%g`` (6 significant digits), so the line agrees when the reference rate
prints as the same text (NaN agrees with ``nan`` or ``-nan``). Also checked:
``MultiStep Status`` lines (each advance of ``current_step``, and no missing
one), ``Gradient clipping`` lines (the threshold is ``clip_gradients``, the
norm exceeds it, and the scale factor is ``fl(clip / norm)`` for a float32
norm that prints as logged), the ``Learning Rate Policy`` line, and a fatal
``Check failed``/``Unknown`` line against the refusal the harness predicts.

The solver comes from the log's own ``Initializing solver from parameters``
block unless ``--solver`` is given. A resumed run (``Restoring previous
solver status from FILE``) starts at the snapshot's iteration with its
``current_step``: read from FILE when it exists (next to the log or in the
working directory), else inferred as Caffe's restore would have it (the
snapshot's iteration from its name, multistep's ``current_step`` from
replaying the stepvalues). A log that starts mid-run is treated the same
way from its first iteration.

Exit 0 iff every checked line agrees, 1 on a disagreement (the first is
reported with its ``file:line``), 2 on bad input (including a log with
nothing to check).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import CaffeRefusal, HarnessError, InputError

__all__ = ["add_parser", "run", "check_log", "schedule_at", "Disagreement", "RunCheck", "LogCheck", "write_csv", "write_plot"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "replay-log",
        help="check the lr, MultiStep and clipping lines of a caffe train log against the reference",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("log", metavar="LOG", help="the glog output of `caffe train` (several runs may be concatenated)")
    p.add_argument("--solver", metavar="SOLVER", help="solver.prototxt to check against (default: the log's own parameters)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--csv", metavar="OUT.csv", help="also write the parsed series (run, iter, lr, loss, outputs...)")
    p.add_argument("--plot", metavar="OUT.png", help="also draw lr and loss against iteration (needs the plot extra)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class Disagreement:
    """One logged line the reference does not reproduce."""

    path: str
    line: int
    kind: str  # "lr", "multistep", "clipping", "lr_policy", "refusal"
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class RunCheck:
    """What was checked in one run of the log, and how it went."""

    index: int
    first_line: int
    last_line: int
    type: str
    lr_policy: str
    start_iter: int
    current_step: int
    start: str  # "fresh", "solverstate FILE", "inferred from ..."
    checked: dict = field(default_factory=dict)
    disagreements: int = 0
    first: Disagreement | None = None
    notes: list = field(default_factory=list)

    @property
    def total_checked(self) -> int:
        return sum(self.checked.values())

    def add(self, d: Disagreement) -> None:
        self.disagreements += 1
        if self.first is None or d.line < self.first.line:
            self.first = d


@dataclass
class LogCheck:
    """The result of :func:`check_log`."""

    path: str
    solver: str | None
    runs: list

    @property
    def ok(self) -> bool:
        return all(r.disagreements == 0 for r in self.runs)

    @property
    def first(self) -> Disagreement | None:
        firsts = [r.first for r in self.runs if r.first is not None]
        return min(firsts, key=lambda d: d.line) if firsts else None

    @property
    def total_checked(self) -> int:
        return sum(r.total_checked for r in self.runs)


# ---------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------

_ITER_IN_NAME = re.compile(r"_iter_(\d+)\.solverstate(?:\.h5)?$")


def _config_for(run, solver: str | None):
    """``(SolverConfig, SolverParameter or None, where)`` for one run."""
    if solver is not None:
        from ..io.solver import load_solver, read_solver_parameter

        return load_solver(solver, check=False, with_net=False), read_solver_parameter(solver), solver
    if run.params is None:
        raise InputError(
            run.path,
            "the log starts without Caffe's 'Initializing solver from parameters' block: pass --solver",
            line=run.first_line,
        )
    try:
        param = run.params.parameter()
    except InputError as e:
        raise InputError(e.path, f"the log's solver parameters: {e.problem}", line=e.line, col=e.col) from None
    from ..config import config_from_proto

    return config_from_proto(param, source=f"{run.path}:{run.params.line}"), param, f"{run.path}:{run.params.line}"


def _first_iter(run) -> int | None:
    cands = []
    for s in (run.lr, run.multistep, run.loss, run.tests):
        if len(s):
            cands.append(min(s.iter))
    return min(cands) if cands else None


def _start(run, cfg, log_dir: str) -> tuple[int, int, str]:
    """Where the run's schedule starts: ``(iter, current_step, how)``."""
    from ..lr import current_steps

    def inferred_step(it: int) -> int:
        if cfg.lr_policy != "multistep" or it <= 0:
            return 0
        return int(current_steps(cfg, it)[-1])

    if run.restore is not None:
        name = run.restore.file
        for cand in (os.path.join(log_dir, name), name):
            if os.path.isfile(cand):
                from ..io.blobs import read_solverstate

                try:
                    state = read_solverstate(cand)
                except HarnessError:
                    break
                return int(state.iter), int(state.current_step), f"solverstate {cand}"
        m = _ITER_IN_NAME.search(name)
        if m:
            it = int(m.group(1))
            return it, inferred_step(it), f"inferred from {os.path.basename(name)} (file not found)"
        it = _first_iter(run)
        it = 0 if it is None else it
        return it, inferred_step(it), "inferred from the first logged iteration"
    if run.params is None and run.net_name is None:
        it = _first_iter(run) or 0
        return it, inferred_step(it), "inferred from the first logged iteration (log starts mid-run)"
    return 0, 0, "fresh"


def _lr_text(x) -> str:
    from ..compare import log_float_text

    return log_float_text(x)


def _same_print(expected_f32, logged: float) -> bool:
    if expected_f32 != expected_f32 and logged != logged:
        return True  # NaN either way (its printed sign is not compared)
    return _lr_text(np.float32(expected_f32)) == _lr_text(float(logged))


def _expected_refusal(cfg, param, start_iter: int):
    from ..config import start_refusals, update_refusals

    if param is not None:
        # "Cannot use GPU in CPU-only Caffe" is about this harness's CPU
        # build; a log may come from a GPU build
        r = [x for x in start_refusals(param) if x.caffe_file != "common.cpp"]
        if r:
            return r[0]
    r = update_refusals(cfg, start_iter=start_iter)
    return r[0] if r else None


def _check_refusal(rc: RunCheck, run, refusal: CaffeRefusal | None, p: str) -> bool:
    """Compare Caffe's fatal line with the predicted refusal; True when the
    schedule can be checked (the reference does not refuse)."""
    fatal = run.fatal
    if fatal is not None:
        rc.checked["refusal"] = 1
        if refusal is not None:
            if fatal.message.strip() == refusal.message.strip():
                rc.notes.append(f"Caffe refused as predicted: {refusal.message}")
            else:
                rc.add(Disagreement(p, fatal.line, "refusal",
                                    f"Caffe died with {fatal.message!r}, the reference refuses with {refusal.message!r}"))
            return False
        base = fatal.location.split(":", 1)[0].rsplit("/", 1)[-1]
        if "solver" in base:
            rc.add(Disagreement(p, fatal.line, "refusal",
                                f"Caffe died with {fatal.message!r} ({fatal.location}), the reference accepts this solver"))
        else:
            rc.checked["refusal"] = 0
            rc.notes.append(f"Caffe died outside the solver ({fatal.location}): {fatal.message}")
        return True
    if refusal is not None:
        ran = len(run.lr) or run.done or len(run.clipping) or len(run.multistep)
        if refusal.when == "start" and (ran or run.net_name is not None):
            rc.checked["refusal"] = 1
            rc.add(Disagreement(p, run.first_line, "refusal",
                                f"the reference refuses this solver at start ({refusal.message}) but Caffe ran it"))
        elif ran:
            rc.checked["refusal"] = 1
            line = run.lr.line[0] if len(run.lr) else run.first_line
            rc.add(Disagreement(p, line, "refusal",
                                f"the reference refuses this solver at the first update ({refusal.message}) but Caffe ran it"))
        else:
            rc.notes.append(f"the reference refuses this solver ({refusal.message}); the log stops before Caffe would")
        return False
    return True


def schedule_at(cfg, its, start: int = 0, current_step: int = 0):
    """The reference rates at iterations ``its`` of a run whose calls go
    ``start, start+1, ...`` from ``current_step`` (Caffe calls
    ``GetLearningRate`` every iteration, logged or not).

    Returns ``(rates float32, current_step after each call, advances)``;
    ``advances`` maps each iteration where multistep's ``current_step``
    advances to its new value (one advance per call at most: the k-th comes
    at ``max(stepvalue[k], previous advance + 1)``). Needs no array over the
    whole iteration range.
    """
    from ..lr import learning_rate, lr_schedule

    its = np.asarray(its, dtype=np.int64)
    if cfg.lr_policy != "multistep":
        rates = lr_schedule(cfg, its, current_step=current_step) if its.size else np.zeros(0, np.float32)
        if cfg.lr_policy == "step" and cfg.stepsize > 0:
            steps = its // int(cfg.stepsize)
        else:
            steps = np.full(its.shape, current_step, dtype=np.int64)
        return rates, steps, {}
    sv = [int(v) for v in cfg.stepvalue]
    t = []
    prev = start - 1
    for k in range(max(current_step, 0), len(sv)):
        prev = max(sv[k], prev + 1)
        t.append(prev)
    t_arr = np.asarray(t, dtype=np.int64)
    after = current_step + np.searchsorted(t_arr, its, side="right")
    rates = np.empty(its.shape, dtype=np.float32)
    for cs in np.unique(after):
        group = np.flatnonzero(after == cs)
        n = int(its[group[0]])
        before = current_step + int(np.searchsorted(t_arr, n, side="left"))
        rate, got = learning_rate(cfg, n, before)
        assert got == cs, (n, before, got, cs)
        rates[group] = rate
    advances = {int(tk): current_step + k + 1 for k, tk in enumerate(t)}
    return rates, after.astype(np.int64), advances


def _check_lr(rc: RunCheck, run, cfg, start: int, cs0: int, p: str) -> None:
    its = np.frombuffer(run.lr.iter, dtype=np.int64) if len(run.lr) else np.zeros(0, np.int64)
    ms_its = np.frombuffer(run.multistep.iter, dtype=np.int64) if len(run.multistep) else np.zeros(0, np.int64)
    rc.checked["lr"] = int(its.size)
    rc.checked["multistep"] = int(ms_its.size)
    if not its.size and not ms_its.size:
        return
    lo = start
    hi = int(max(its.max() if its.size else lo, ms_its.max() if ms_its.size else lo))
    # lines about iterations before the run's start cannot come from this schedule
    for arr, series, kind in ((its, run.lr, "lr"), (ms_its, run.multistep, "multistep")):
        bad = np.flatnonzero(arr < lo)
        if bad.size:
            k = int(bad[0])
            rc.add(Disagreement(p, series.line[k], kind,
                                f"iteration {int(arr[k])} is before the run's first iteration {lo} ({rc.start})"))
    ok_idx = its >= lo
    rates, steps, advances = schedule_at(cfg, np.where(ok_idx, its, lo), lo, cs0)
    if its.size:
        vals = np.frombuffer(run.lr.value, dtype=np.float64)
        # compare at print precision; the schedule is piecewise constant, so
        # format each distinct (expected, logged) pair once
        key = np.stack([rates.astype(np.float64).view(np.int64), vals.view(np.int64)], axis=1)
        uniq, inv = np.unique(key, axis=0, return_inverse=True)
        agree_u = np.array([
            _same_print(np.int64(e).view(np.float64), np.int64(v).view(np.float64)) for e, v in uniq
        ], dtype=bool)
        agree = agree_u[inv.reshape(-1)] | ~ok_idx
        bad = np.flatnonzero(~agree)
        if bad.size:
            k = int(bad[0])
            extra = f", current_step {int(steps[k])}" if cfg.lr_policy in ("multistep", "step") else ""
            rc.add(Disagreement(
                p, run.lr.line[k], "lr",
                f"Iteration {int(its[k])}, lr = {_lr_text(vals[k])} but the reference gives {_lr_text(rates[k])} "
                f"({cfg.lr_policy}{extra}; {int(bad.size)} of {its.size} lr lines disagree)",
            ))
            rc.disagreements += int(bad.size) - 1
    # MultiStep Status: one line per advance of current_step, at its iteration
    if cfg.lr_policy != "multistep":
        if ms_its.size:
            rc.add(Disagreement(p, run.multistep.line[0], "multistep",
                                f"a MultiStep Status line, but lr_policy is {cfg.lr_policy!r}"))
        return
    logged = {int(i): (int(s), int(ln)) for i, s, ln in zip(run.multistep.iter, run.multistep.value, run.multistep.line)}
    expected = {it: step for it, step in advances.items() if lo <= it <= hi}
    for it, (step, ln) in sorted(logged.items()):
        if it < lo:
            continue
        if it not in expected:
            stays = int(schedule_at(cfg, [it], lo, cs0)[1][0])
            rc.add(Disagreement(p, ln, "multistep",
                                f"MultiStep Status: Iteration {it}, step = {step} but the reference does not advance "
                                f"at iteration {it} (current_step stays {stays}; stepvalue {list(cfg.stepvalue)})"))
        elif expected[it] != step:
            rc.add(Disagreement(p, ln, "multistep",
                                f"MultiStep Status: Iteration {it}, step = {step} but the reference gives step = "
                                f"{expected[it]}"))
    # an advance inside the logged range must have its line (it is printed whatever display is)
    lr_line_of = dict(zip(run.lr.iter, run.lr.line))
    for it, step in sorted(expected.items()):
        if it in logged:
            continue
        ln = lr_line_of.get(it)
        if ln is None:
            later = [l for i, l in lr_line_of.items() if i > it]
            ln = min(later) if later else run.last_line
        rc.add(Disagreement(p, ln, "multistep",
                            f"no 'MultiStep Status: Iteration {it}, step = {step}' line, but the reference "
                            f"advances current_step at iteration {it}"))
        rc.checked["multistep"] += 1


def _f32_interval(text_vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest float32 that print (``%g``) as each value."""
    v = np.asarray(text_vals, dtype=np.float64)
    a = np.abs(v)
    with np.errstate(all="ignore"):
        e = np.floor(np.log10(np.where(a > 0, a, 1.0)))
        e = np.where(10.0 ** (e + 1) <= a, e + 1, e)
        e = np.where(10.0 ** e > a, e - 1, e)
        half = np.where(a > 0, 0.5 * 10.0 ** (e - 5), 0.0)
    lo64, hi64 = v - half, v + half
    lo = lo64.astype(np.float32)
    lo = np.where(lo.astype(np.float64) < lo64, np.nextafter(lo, np.float32(np.inf)), lo)
    hi = hi64.astype(np.float32)
    hi = np.where(hi.astype(np.float64) > hi64, np.nextafter(hi, np.float32(-np.inf)), hi)
    fin = ~np.isfinite(v)
    return np.where(fin, v.astype(np.float32), lo), np.where(fin, v.astype(np.float32), hi)


def _check_clipping(rc: RunCheck, run, cfg, p: str) -> None:
    c = run.clipping
    rc.checked["clipping"] = len(c)
    if not len(c):
        return
    clip = np.float32(cfg.clip_gradients)
    if not clip >= 0:
        rc.add(Disagreement(p, c.line[0], "clipping",
                            f"a Gradient clipping line, but clip_gradients is {_lr_text(clip)} (clipping is off)"))
        return
    norm = np.frombuffer(c.l2norm, dtype=np.float64)
    clipv = np.frombuffer(c.clip_gradients, dtype=np.float64)
    scale = np.frombuffer(c.scale_factor, dtype=np.float64)
    ct = _lr_text(clip)
    bad_clip = np.flatnonzero([_lr_text(x) != ct for x in np.unique(clipv)])
    if bad_clip.size:
        wrong = np.unique(clipv)[bad_clip[0]]
        k = int(np.flatnonzero(clipv == wrong)[0])
        rc.add(Disagreement(p, c.line[k], "clipping",
                            f"clipping threshold {_lr_text(wrong)} but clip_gradients is {ct}"))
    n_lo, n_hi = _f32_interval(norm)
    with np.errstate(all="ignore"):
        s_hi = (clip / n_lo).astype(np.float32)  # fl(clip / l2): smaller norm, larger scale
        s_lo = (clip / n_hi).astype(np.float32)
    p_lo, p_hi = _f32_interval(scale)
    ok = (norm == norm) & (n_hi > clip) & (p_lo <= s_hi) & (p_hi >= s_lo)
    bad = np.flatnonzero(~ok)
    if bad.size:
        k = int(bad[0])
        if not (norm[k] == norm[k]) or not n_hi[k] > clip:
            why = f"the L2 norm {_lr_text(norm[k])} does not exceed clip_gradients {ct}"
        else:
            why = (f"scale factor {_lr_text(scale[k])} but fl({ct} / norm) for a float32 norm printed as "
                   f"{_lr_text(norm[k])} is {_lr_text(s_lo[k])}..{_lr_text(s_hi[k])}")
        rc.add(Disagreement(p, c.line[k], "clipping", f"{why} ({int(bad.size)} of {len(c)} clipping lines disagree)"))
        rc.disagreements += int(bad.size) - 1


def check_log(path, *, solver: str | None = None, runs=None) -> LogCheck:
    """Check every run of a ``caffe train`` log against the reference.

    ``solver``: a solver.prototxt to use instead of each run's own
    parameter block. ``runs``: already parsed ``read_runs(path)``.
    Raises ``InputError`` for bad input.
    """
    from ..logs import read_runs

    p = os.fspath(path)
    if runs is None:
        runs = read_runs(p)
    log_dir = os.path.dirname(os.path.abspath(p))
    out = []
    for i, run in enumerate(runs, 1):
        cfg, param, _src = _config_for(run, solver)
        start, cs0, how = _start(run, cfg, log_dir)
        rc = RunCheck(i, run.first_line, run.last_line, cfg.type, cfg.lr_policy, start, cs0, how)
        if run.lr_policy is not None:
            rc.checked["lr_policy"] = 1
            if run.lr_policy != cfg.lr_policy:
                rc.add(Disagreement(p, run.lr_policy_line, "lr_policy",
                                    f"Learning Rate Policy: {run.lr_policy} but the solver has {cfg.lr_policy!r}"))
        if run.fatal is None and not run.complete:
            rc.notes.append("the run ends without 'Optimization Done.' (killed, or the log is cut)")
        if _check_refusal(rc, run, _expected_refusal(cfg, param, start), p):
            _check_lr(rc, run, cfg, start, cs0, p)
            _check_clipping(rc, run, cfg, p)
        out.append(rc)
    result = LogCheck(p, solver, out)
    substantive = sum(n for r in out for k, n in r.checked.items() if k != "lr_policy")
    if substantive == 0 and result.ok:
        raise InputError(p, "nothing to check: no lr, MultiStep, clipping or fatal solver line "
                            "(was the solver's display 0?)")
    return result


# ---------------------------------------------------------------------------
# Exports
# ---------------------------------------------------------------------------


def _columns(runs):
    keys = []
    seen = set()
    for run in runs:
        for k in sorted(run.outputs, key=lambda k: (k.phase != "train", k.net, k.index)):
            if k.label not in seen:
                seen.add(k.label)
                keys.append(k.label)
        for net in sorted(run.test_loss):
            lab = f"test{net}:loss"
            if lab not in seen:
                seen.add(lab)
                keys.append(lab)
    return keys


def write_csv(runs, out: str) -> int:
    """Write the parsed series (``run, iter, lr, loss``, then one column per
    output) to ``out`` atomically; returns the number of rows."""
    import csv

    cols = _columns(runs)
    tmp = f"{out}.tmp{os.getpid()}"
    rows = 0
    try:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["run", "iter", "lr", "loss"] + cols)
            for i, run in enumerate(runs, 1):
                table: dict[int, dict] = {}

                def put(it, col, v):
                    table.setdefault(int(it), {})[col] = v

                for it, v in zip(run.lr.iter, run.lr.value):
                    put(it, "lr", v)
                for it, v in zip(run.loss.iter, run.loss.value):
                    put(it, "loss", v)
                for k, s in run.outputs.items():
                    for it, v in zip(s.iter, s.value):
                        put(it, k.label, v)
                for net, s in run.test_loss.items():
                    for it, v in zip(s.iter, s.value):
                        put(it, f"test{net}:loss", v)
                for it in sorted(table):
                    row = table[it]
                    w.writerow([i, it] + ["" if c not in row else repr(row[c]) for c in ["lr", "loss"] + cols])
                    rows += 1
        os.replace(tmp, out)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise InputError(out, f"cannot write: {e.strerror or e}") from None
    return rows


def write_plot(runs, out: str, title: str = "") -> None:
    """Draw lr and loss against iteration (one colour per run) into ``out``."""
    try:
        import matplotlib
    except ImportError:
        raise HarnessError("--plot needs matplotlib: pip install 'caffe-harness[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_loss) = plt.subplots(2, 1, sharex=True, figsize=(8, 6))
    for i, run in enumerate(runs, 1):
        label = f"run {i}" if len(runs) > 1 else None
        if len(run.lr):
            ax_lr.plot(np.frombuffer(run.lr.iter, np.int64), np.frombuffer(run.lr.value, np.float64), label=label)
        if len(run.loss):
            ax_loss.plot(np.frombuffer(run.loss.iter, np.int64), np.frombuffer(run.loss.value, np.float64), label=label)
    ax_lr.set_ylabel("lr")
    ax_loss.set_ylabel("loss")
    ax_loss.set_xlabel("iteration")
    if title:
        ax_lr.set_title(title)
    if len(runs) > 1:
        ax_lr.legend()
    tmp = f"{out}.tmp{os.getpid()}.png"
    try:
        fig.savefig(tmp)
        os.replace(tmp, out)
    except OSError as e:
        raise InputError(out, f"cannot write: {e.strerror or e}") from None
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def _text(result: LogCheck) -> str:
    lines = [f"{result.path}: {len(result.runs)} run{'s' if len(result.runs) != 1 else ''}"
             + (f", solver {result.solver}" if result.solver else "")]
    for rc in result.runs:
        counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in rc.checked.items() if n)
        status = "agree" if rc.disagreements == 0 else f"{rc.disagreements} DISAGREE"
        lines.append(f"  run {rc.index} (lines {rc.first_line}-{rc.last_line}, {rc.type}, {rc.lr_policy or 'no lr_policy'}, "
                     f"start iter {rc.start_iter} current_step {rc.current_step}: {rc.start}): "
                     f"{counts or 'nothing checked'}: {status}")
        if rc.first is not None:
            lines.append(f"    first: {rc.first}")
        for note in rc.notes:
            lines.append(f"    note: {note}")
    first = result.first
    if first is None:
        lines.append(f"result: all {result.total_checked} checked lines agree with the reference")
    else:
        lines.append(f"result: DISAGREE, first at {first}")
    return "\n".join(lines)


def _json(result: LogCheck) -> str:
    def rc_dict(rc):
        d = asdict(rc)
        d["first"] = None if rc.first is None else asdict(rc.first)
        return d

    return json.dumps({
        "log": result.path,
        "solver": result.solver,
        "ok": result.ok,
        "checked": result.total_checked,
        "first_disagreement": None if result.first is None else asdict(result.first),
        "runs": [rc_dict(rc) for rc in result.runs],
    }, indent=1)


def run(args) -> int:
    from ..logs import read_runs

    runs = read_runs(args.log)
    result = check_log(args.log, solver=args.solver, runs=runs)
    if args.csv:
        write_csv(runs, args.csv)
    if args.plot:
        write_plot(runs, args.plot, title=os.path.basename(args.log))
    print(_json(result) if args.format == "json" else _text(result))
    return 0 if result.ok else 1
