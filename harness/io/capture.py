"""Load a capture (one recorded real-Caffe run, docs/CAPTURE_FORMAT.md) as a ``Trace``.

A capture directory holds the run's inputs (``solver.prototxt``,
``net.prototxt``, ``init.caffemodel``, ``gradients.npz``) and what Caffe
produced (``snapshots/``, ``caffe.log``), plus ``config.json`` with the BLAS
it ran with. ``load_capture(dir)`` turns all of it into the one trace type:

* config and learnable blobs from ``solver.prototxt`` + ``net.prototxt``
  (shapes from ``init.caffemodel``);
* init params from ``gradients.npz`` ``init/<layer>/<i>``, checked bit for bit
  against ``init.caffemodel``;
* per iteration ``k``: the gradients ``grad/<k>/<pass>/<layer>/<i>``; the
  expected data/diff from ``<prefix>_iter_{k+1}.caffemodel`` and the history,
  ``current_step`` (and ``iter == k+1``) from ``.solverstate``; the expected
  rate from the log line ``Iteration k, lr = R`` -- printed with 6
  significant digits, so ``Iteration.lr`` holds the printed *text* (a
  ``str``: compare at print precision, see ``harness.compare``) and
  ``provenance["lr_precision"]`` is ``"log-6g"``;
* a refusal from the log's fatal ``F...] message`` line: ``refusal_when`` is
  ``"first-update"`` when Caffe had reached ``Solving NAME``, else ``"start"``.

Every problem (missing snapshot, shape mismatch, a gradients.npz without an
iteration, a snapshot with the wrong ``iter``) raises ``InputError`` naming
the file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import BlobSpec, SolverConfig
from ..errors import InputError
from ..trace import Iteration, Trace

__all__ = [
    "CAPTURE_FILES",
    "LR_PRECISION_LOG",
    "PARTS",
    "capture_parts",
    "is_capture",
    "find_captures",
    "load_capture",
    "read_log_facts",
    "LogFacts",
]

#: Files every capture has (``snapshots/`` is absent when Caffe refused).
CAPTURE_FILES = ("solver.prototxt", "net.prototxt", "init.caffemodel", "gradients.npz", "caffe.log", "config.json")
#: ``provenance["lr_precision"]`` of rates read from a log: glog's ``%g``, 6 significant digits.
LR_PRECISION_LOG = "log-6g"

_GLOG = re.compile(r"^([IWEF])(\d{4} \d\d:\d\d:\d\d\.\d+)\s+\d+\s+([^\]\s]+:\d+)\] ?(.*)$")
_LR = re.compile(r"^Iteration (\d+), lr = (\S+)$")
_SOLVING = re.compile(r"^Solving (.*)$")
_RESTORE = re.compile(r"^Restoring previous solver status from (.*)$")
_GRAD_KEY = re.compile(r"^grad/(\d+)/(\d+)/(.+)$")


# --------------------------------------------------------------------------
# caffe.log: the few facts a capture needs (harness/logs.py parses the rest)
# --------------------------------------------------------------------------
class LogFacts:
    """What ``load_capture`` reads from ``caffe.log``.

    ``lr``: iteration -> (printed text, line number) of ``Iteration k, lr = R``
    (the last one wins when a resumed run prints an iteration again);
    ``solving``: line of ``Solving NAME`` (None if never reached);
    ``fatal``: (message, ``file.cpp:N``, line) of the first ``F`` line;
    ``restored``: the ``.solverstate`` paths of ``Restoring previous solver status``.
    """

    def __init__(self) -> None:
        self.lr: dict[int, tuple[str, int]] = {}
        self.solving: int | None = None
        self.net_name: str | None = None
        self.fatal: tuple[str, str, int] | None = None
        self.restored: list[str] = []
        self.glog_lines = 0


def _parse_float(text: str) -> float | None:
    t = text.lower()
    if t in ("nan", "-nan", "+nan"):
        return float("nan")
    try:
        return float(t)
    except ValueError:
        return None


def read_log_facts(path) -> LogFacts:
    """Scan a ``caffe train`` log for lr lines, ``Solving``, ``Restoring`` and the fatal line.

    Raises ``InputError`` for a missing or non-text file, a log without any
    glog line, and an ``lr`` line whose value is not a number.
    """
    path = Path(path)
    facts = LogFacts()
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise InputError(path, "missing file (the caffe train log)") from None
    with f:
        for ln, raw in enumerate(f, 1):
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            m = _GLOG.match(line)
            if not m:
                continue
            facts.glog_lines += 1
            sev, _, where, msg = m.groups()
            if sev == "F":
                if facts.fatal is None:
                    facts.fatal = (msg.strip(), where, ln)
                continue
            if where.startswith("sgd_solver.cpp") or "lr = " in msg:
                lm = _LR.match(msg.strip())
                if lm:
                    if _parse_float(lm.group(2)) is None:
                        raise InputError(path, f"expected 'lr = <float>', got 'lr = {lm.group(2)}'", line=ln)
                    facts.lr[int(lm.group(1))] = (lm.group(2), ln)
                    continue
            sm = _SOLVING.match(msg)
            if sm and facts.solving is None:
                facts.solving, facts.net_name = ln, sm.group(1).strip()
                continue
            rm = _RESTORE.match(msg)
            if rm:
                facts.restored.append(rm.group(1).strip())
    if facts.glog_lines == 0:
        raise InputError(path, "not a Caffe training log (no glog lines)")
    return facts


# --------------------------------------------------------------------------
# readers (harness/io/blobs.py, harness/io/solver.py)
# --------------------------------------------------------------------------
def _read_caffemodel(path):
    from .blobs import read_caffemodel

    return read_caffemodel(path)


def _read_solverstate(path):
    from .blobs import read_solverstate

    return read_solverstate(path)


def _blob_arrays(weights: dict, names, path, *, want_diff: bool) -> tuple[dict, dict | None]:
    """``(data, diff)`` by ``<layer>/<index>`` for ``names`` from a ``read_caffemodel`` dict."""
    data: dict[str, np.ndarray] = {}
    diff: dict[str, np.ndarray] | None = {} if want_diff else None
    for n in names:
        layer, idx = n.rsplit("/", 1)
        blobs = weights.get(layer)
        if blobs is None or int(idx) >= len(blobs):
            raise InputError(path, f"no blob {n} (layer {layer!r} has {0 if blobs is None else len(blobs)} blobs)")
        b = blobs[int(idx)]
        data[n] = np.asarray(b.data)
        if diff is not None:
            if b.diff is None:
                raise InputError(path, f"blob {n} has no diff (snapshot_diff is true in the solver)")
            diff[n] = np.asarray(b.diff)
    return data, diff


def _load_config(root: Path, solver: Path, *, with_net: bool = True) -> SolverConfig:
    """The capture's solver, with its net's learnable blobs (shapes from init.caffemodel).

    ``check=False``: a capture of settings Caffe refused must still load; the
    refusal comes from its log.
    """
    from .solver import load_solver

    if not solver.is_file():
        raise InputError(solver, "missing file (a capture needs its solver.prototxt)")
    init = root / "init.caffemodel"
    return load_solver(solver, weights=init if init.is_file() else None, check=False, with_net=with_net)


def _check_shape(a: np.ndarray, spec: BlobSpec, path, what: str) -> np.ndarray:
    if a.dtype != np.float32:
        raise InputError(path, f"{what} {spec.name} is {a.dtype}, expected float32")
    if tuple(a.shape) != tuple(spec.shape):
        if a.size == spec.count:  # legacy 4-D shapes hold the same numbers
            return a.reshape(spec.shape)
        raise InputError(path, f"{what} {spec.name} has shape {tuple(a.shape)}, expected {tuple(spec.shape)}")
    return a


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(
        np.ascontiguousarray(a, np.float32).view(np.uint32), np.ascontiguousarray(b, np.float32).view(np.uint32)
    )


def _snapshot_paths(root: Path, cfg: SolverConfig, k: int) -> tuple[Path, Path]:
    prefix = cfg.snapshot_prefix or "snapshots/run"
    ext = ".h5" if cfg.snapshot_format == "HDF5" else ""
    base = Path(prefix) if Path(prefix).is_absolute() else root / prefix
    return Path(f"{base}_iter_{k}.caffemodel{ext}"), Path(f"{base}_iter_{k}.solverstate{ext}")


def _snapshot_iters(cfg: SolverConfig, start: int, stop: int) -> list[int]:
    """The ``K`` of every ``_iter_K`` snapshot Caffe writes for iterations ``start..stop-1``."""
    ks = [k for k in range(start + 1, stop + 1) if cfg.snapshot and k % cfg.snapshot == 0]
    if cfg.snapshot_after_train and stop > start and (not cfg.snapshot or stop % cfg.snapshot):
        ks.append(stop)
    return ks


#: The runs a capture can hold: the straight run, and (when config.json has a
#: completed ``resume`` record) its continuation from ``_iter_K``.
PARTS = ("run", "resume")


@dataclass(frozen=True)
class _Part:
    name: str
    solver: Path
    log: Path
    resume_at: int | None = None
    state: Path | None = None  # the .solverstate the continuation restored
    exit_code: Any = None


def _resume_record(cfgjson: dict, cj: Path) -> dict | None:
    r = cfgjson.get("resume")
    if r is None:
        return None
    if not isinstance(r, dict):
        raise InputError(cj, f"resume is {r!r}, expected an object with 'at'")
    at = r.get("at")
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        raise InputError(cj, f"resume.at is {at!r}, expected a non-negative iteration")
    return r


def _parts(root: Path, cfgjson: dict) -> dict[str, _Part]:
    cj = root / "config.json"
    parts = {"run": _Part("run", root / "solver.prototxt", root / "caffe.log", exit_code=cfgjson.get("caffe_exit"))}
    r = _resume_record(cfgjson, cj)
    if r is not None and "skipped" not in r:
        k = r["at"]
        for key in ("solver", "log", "from"):
            if key in r and not isinstance(r[key], str):
                raise InputError(cj, f"resume.{key} is {r[key]!r}, expected a path relative to the capture")
        state = root / r["from"] if "from" in r else None
        parts["resume"] = _Part(
            "resume",
            root / r.get("solver", "solver.prototxt"),
            root / r.get("log", "caffe.log"),
            resume_at=k,
            state=state,
            exit_code=r.get("caffe_exit"),
        )
    return parts


def _read_config_json(root: Path) -> dict:
    cj = root / "config.json"
    try:
        cfgjson = json.loads(cj.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise InputError(cj, "missing file (a capture records its BLAS there)") from None
    except UnicodeDecodeError:
        raise InputError(cj, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise InputError(cj, f"bad JSON: {e.msg}", line=e.lineno, col=e.colno) from None
    if not isinstance(cfgjson, dict):
        raise InputError(cj, "expected a JSON object")
    return cfgjson


# --------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------
def is_capture(path) -> bool:
    """True when ``path`` looks like a capture directory (solver.prototxt and gradients.npz)."""
    p = Path(path)
    return (p / "solver.prototxt").is_file() and (p / "gradients.npz").is_file()


def find_captures(root) -> list[Path]:
    """Every capture directory under ``root`` (``root`` itself included), sorted."""
    root = Path(root)
    if is_capture(root):
        return [root]
    return sorted(Path(d) for d, _, files in os.walk(root) if "solver.prototxt" in files and "gradients.npz" in files)


def capture_parts(path) -> list[str]:
    """The runs the capture ``path`` holds: ``["run"]``, or ``["run", "resume"]`` for a resumed capture."""
    root = Path(path)
    return list(_parts(root, _read_config_json(root)))


def load_capture(path, *, part: str | None = None, name: str | None = None) -> Trace:
    """Load the capture directory ``path`` as a ``Trace`` (``provenance["origin"] == "caffe"``).

    ``part``: ``"run"`` (the straight run from ``init.caffemodel``) or
    ``"resume"`` (the continuation a resumed capture recorded in
    ``config.json["resume"]``: it starts from the ``_iter_K`` state, with
    ``init_iter``/``init_current_step``/``init_history`` from it). The default
    is ``"resume"`` when the capture has one, else ``"run"``.
    ``name`` defaults to the directory name. A run Caffe refused carries
    ``refusal``/``refusal_when`` and only the inputs (gradients) in its
    iterations. Raises ``InputError`` naming the file for anything missing,
    truncated or inconsistent.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(root, "no such capture directory" if not root.exists() else "not a directory, expected a capture")
    for f in CAPTURE_FILES:
        if not (root / f).is_file():
            raise InputError(root / f, "missing file (a capture holds " + ", ".join(CAPTURE_FILES) + ")")
    cfgjson = _read_config_json(root)
    cj = root / "config.json"
    blas = cfgjson.get("blas")
    if not isinstance(blas, str) or not blas:
        raise InputError(cj, f"blas is {blas!r}, expected the BLAS Caffe ran with (openblas, reference, atlas)")
    parts = _parts(root, cfgjson)
    if part is None:
        part = "resume" if "resume" in parts else "run"
    if part not in PARTS:
        raise InputError(root, f"unknown capture part {part!r} (known: {', '.join(PARTS)})")
    if part not in parts:
        raise InputError(cj, "this capture has no completed resumed run (no 'resume' record, or it was skipped)")
    pt = parts[part]

    cfg = _load_config(root, pt.solver)
    specs = cfg.blobs
    if not specs:
        raise InputError(root / "net.prototxt", "no learnable blobs in the train net")
    names = [b.name for b in specs]
    facts = read_log_facts(pt.log)

    # refusal
    refusal = refusal_when = refusal_at = None
    if facts.fatal is not None:
        refusal, refusal_at, fline = facts.fatal
        refusal_when = "first-update" if facts.solving is not None and facts.solving < fline else "start"
    if refusal is None and isinstance(pt.exit_code, int) and pt.exit_code != 0:
        raise InputError(pt.log, f"Caffe exited with status {pt.exit_code} but the log has no fatal 'F' line")

    # init params: gradients.npz init/... cross-checked with init.caffemodel
    gz = root / "gradients.npz"
    try:
        npz = np.load(gz, allow_pickle=False)
        keys = set(npz.files)
    except Exception as e:  # noqa: BLE001 - zip/npy errors of every kind mean the same thing
        raise InputError(gz, f"not a readable .npz ({e.__class__.__name__}: {e})") from None

    def npz_get(key: str, spec: BlobSpec, what: str) -> np.ndarray:
        if key not in keys:
            raise InputError(gz, f"no array {key!r} ({what})")
        try:
            a = npz[key]
        except Exception as e:  # noqa: BLE001
            raise InputError(gz, f"array {key!r} is unreadable ({e.__class__.__name__}: {e})") from None
        return _check_shape(a, spec, gz, f"{key}:")

    for k in sorted(keys):
        if not (k.startswith("init/") or _GRAD_KEY.match(k)):
            raise InputError(gz, f"unexpected array {k!r}: expected init/<layer>/<i> or grad/<iter>/<pass>/<layer>/<i>")
    init_model = root / "init.caffemodel"
    init_data, _ = _blob_arrays(_read_caffemodel(init_model), names, init_model, want_diff=False)
    init_params = {}
    for s in specs:
        a = npz_get(f"init/{s.name}", s, "initial weights")
        b = _check_shape(init_data[s.name], s, init_model, "blob")
        if not _bits_equal(a, b):
            raise InputError(init_model, f"blob {s.name} differs from gradients.npz init/{s.name}")
        init_params[s.name] = a

    # a continuation starts from the state it restored
    init_iter, init_step, init_history = 0, 0, None
    if pt.resume_at is not None:
        k = pt.resume_at
        run_cfg = cfg if pt.solver == parts["run"].solver else _load_config(root, parts["run"].solver, with_net=False)
        mpath, spath = _snapshot_paths(root, run_cfg, k)
        spath = pt.state or spath
        if not spath.is_file():
            raise InputError(spath, f"missing snapshot (config.json says the run resumed at iteration {k})")
        st = _read_solverstate(spath)
        if st.iter != k:
            raise InputError(spath, f"iter is {st.iter}, expected {k} (config.json resume.at)")
        if getattr(st, "learned_net", "") and (root / st.learned_net).is_file():
            mpath = root / st.learned_net  # Caffe restores the weights named in the state
        if not mpath.is_file():
            raise InputError(mpath, f"missing snapshot (config.json says the run resumed at iteration {k})")
        data, _ = _blob_arrays(_read_caffemodel(mpath), names, mpath, want_diff=False)
        init_params = {s.name: _check_shape(data[s.name], s, mpath, "blob") for s in specs}
        init_iter, init_step = k, int(st.current_step)
        init_history = _history(st.history, cfg, spath)

    # iterations
    stop = max(cfg.max_iter, init_iter)
    grad_iters = {int(m.group(1)) for m in map(_GRAD_KEY.match, keys) if m}
    if refusal is not None:  # only the inputs matter: keep the iterations that have gradients
        k = init_iter
        while k < stop and k in grad_iters:
            k += 1
        stop = k
    npass = max(cfg.iter_size, 1)
    snap_ks = set() if refusal is not None else set(_snapshot_iters(cfg, init_iter, stop))
    iterations: list[Iteration] = []
    for k in range(init_iter, stop):
        if k not in grad_iters:
            raise InputError(gz, f"no gradients for iteration {k} (expected grad/{k}/<pass>/<layer>/<i> for iterations {init_iter}..{stop - 1})")
        grads = [{s.name: npz_get(f"grad/{k}/{p}/{s.name}", s, f"iteration {k} pass {p}") for s in specs} for p in range(npass)]
        it = Iteration(iter=k, grads=grads)
        if k in facts.lr:
            it.lr = facts.lr[k][0]  # the printed text: 6 significant digits
        if k + 1 in snap_ks:
            mpath, spath = _snapshot_paths(root, cfg, k + 1)
            for p in (mpath, spath):
                if not p.is_file():
                    raise InputError(p, f"missing snapshot of iteration {k} (Caffe writes _iter_{k + 1} after it)")
            data, diff = _blob_arrays(_read_caffemodel(mpath), names, mpath, want_diff=cfg.snapshot_diff)
            it.params = {s.name: _check_shape(data[s.name], s, mpath, "blob") for s in specs}
            if diff is not None:
                it.diff = {s.name: _check_shape(diff[s.name], s, mpath, "diff of blob") for s in specs}
            st = _read_solverstate(spath)
            if st.iter != k + 1:
                raise InputError(spath, f"iter is {st.iter}, expected {k + 1}")
            it.current_step = int(st.current_step)
            it.history = _history(st.history, cfg, spath)
        iterations.append(it)
    if refusal is None and pt.resume_at is None:
        extra = sorted(i for i in grad_iters if i >= stop)
        if extra:
            raise InputError(gz, f"gradients for iteration {extra[0]}, past max_iter {cfg.max_iter}")

    return Trace(
        name=name or root.resolve().name,
        config=cfg,
        init_params=init_params,
        iterations=iterations,
        init_history=init_history,
        init_iter=init_iter,
        init_current_step=init_step,
        provenance=_provenance(root, cfgjson, blas, pt, refusal_at, len(parts) > 1),
        refusal=refusal,
        refusal_when=refusal_when,
        source=os.fspath(root),
    )


def _provenance(root: Path, cfgjson: dict, blas: str, pt: _Part, refusal_at, has_parts: bool) -> dict[str, Any]:
    """Provenance in the golden format's vocabulary (docs/TRACE_FORMAT.md), from config.json."""
    from .. import __version__

    prov: dict[str, Any] = {
        "origin": "caffe",
        "blas": blas,
        "caffe_version": None,
        "blas_version": None,
        "cpu_flags": None,
        "date": None,
        "lr_precision": LR_PRECISION_LOG,
    }
    recorded = cfgjson.get("provenance")
    if isinstance(recorded, dict):  # what the oracle recorded (harness/oracle.py)
        for k, v in recorded.items():
            if k not in ("origin", "blas", "lr_precision"):
                prov[k] = v
        prov["caffe_version"] = recorded.get("caffe_version", recorded.get("caffe"))
        prov["blas_version"] = recorded.get("blas_version", recorded.get("blas_package"))
    for k in ("seed", "caffe_exit", "resume"):
        if k in cfgjson:
            prov[k] = cfgjson[k]
    if refusal_at:
        prov["refusal_at"] = refusal_at
    prov["harness_version"] = __version__
    prov["capture"] = root.resolve().name
    if has_parts:
        prov["capture_part"] = pt.name
    return prov


def _history(history, cfg: SolverConfig, path) -> list[np.ndarray]:
    specs = cfg.blobs
    nb = len(specs)
    want = nb * cfg.history_slots
    if len(history) != want:
        raise InputError(path, f"{len(history)} history blobs, expected {want} ({cfg.type}, {nb} learnable blobs)")
    out = []
    for h, a in enumerate(history):
        out.append(_check_shape(np.asarray(a), specs[h % nb], path, f"history[{h}] of"))
    return out
