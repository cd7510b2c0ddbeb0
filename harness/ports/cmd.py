"""``cmd:`` ports: any program, any language, driven through files.

For each trace the harness writes the inputs into a fresh directory, runs the
command once with that directory as its last argument (or in place of
``{dir}``; also in ``$CAFFE_HARNESS_PORT_DIR``), and reads the outputs back.
The layout is specified in ``docs/PORTS.md``; in short::

    DIR/manifest.json        everything below, as JSON (format "caffe-harness-port", version 1)
    DIR/manifest.txt         the same facts as "key value..." lines, for C/shell
    DIR/solver.json          the SolverConfig (harness.config.SolverConfig.to_dict)
    DIR/init/params/B.bin    initial data of blob B (0-based, net order)
    DIR/init/history/H.bin   initial history blob H (only when start_history is 1)
    DIR/grads/K/P/B.bin      gradient of blob B, pass P of iteration K (K counts from 0 in this run)
    DIR/out/                 the port writes here:
        status.txt           optional: "ok", "refused MESSAGE" or "unsupported REASON"
        K/params/B.bin       required: data of blob B after iteration K
        K/diff/B.bin         optional: the update value (snapshot_diff)
        K/history/H.bin      optional: every history blob after iteration K
        K/lr.bin             optional: one float32, the rate of iteration K
        K/current_step.txt   optional: Caffe's current_step_ after iteration K

Every ``.bin`` is raw little-endian float32 in C order (an output may also be
a ``.npy`` file of float32 with the same stem). A non-zero exit status, a
timeout or a missing or short output file make the trace an ``ERROR`` with a
message naming the file.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from ..trace import Trace
from .base import PortRun, StepOutput

__all__ = ["CmdRunner", "write_inputs", "read_outputs", "FORMAT", "VERSION"]

FORMAT = "caffe-harness-port"
VERSION = 1
_LE_F32 = np.dtype("<f4")


def _f(x) -> str:
    """A float32 as a decimal that reads back exactly (``%.9g``; strtof-friendly)."""
    v = float(np.float32(x))
    if v != v:
        return "nan"
    if v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return "%.9g" % v


def _write_bin(path: Path, a) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(a, dtype=_LE_F32).tofile(path)


def write_inputs(trace: Trace, root: str | os.PathLike) -> dict:
    """Write ``trace``'s inputs into ``root`` in the ``cmd:`` layout; return the manifest."""
    root = Path(root)
    cfg = trace.config
    specs = cfg.blobs
    nb = len(specs)
    for i, s in enumerate(specs):
        _write_bin(root / "init" / "params" / f"{i}.bin", trace.init_params[s.name])
    if trace.init_history is not None:
        for h, a in enumerate(trace.init_history):
            _write_bin(root / "init" / "history" / f"{h}.bin", a)
    for k, it in enumerate(trace.iterations):
        for p, grads in enumerate(it.grads):
            for i, s in enumerate(specs):
                _write_bin(root / "grads" / str(k) / str(p) / f"{i}.bin", grads[s.name])
    (root / "out").mkdir(parents=True, exist_ok=True)
    solver = cfg.to_dict()
    solver.pop("source", None)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "trace": trace.name,
        "blas": trace.blas,
        "dtype": "float32",
        "byteorder": "little",
        "solver": solver,
        "blobs": [
            {"index": i, "name": s.name, "shape": list(s.shape), "count": s.count,
             "lr_mult": s.lr_mult, "decay_mult": s.decay_mult}
            for i, s in enumerate(specs)
        ],
        "history_slots": cfg.history_slots,
        "history_blobs": nb * cfg.history_slots,
        "start": {"iter": trace.init_iter, "current_step": trace.init_current_step,
                  "history": trace.init_history is not None},
        "iterations": len(trace.iterations),
        "iter_size": len(trace.iterations[0].grads) if trace.iterations else cfg.iter_size,
        "files": {
            "params": "init/params/{blob}.bin",
            "history": "init/history/{history_blob}.bin",
            "grad": "grads/{iteration}/{pass}/{blob}.bin",
            "out_params": "out/{iteration}/params/{blob}.bin",
            "out_diff": "out/{iteration}/diff/{blob}.bin",
            "out_history": "out/{iteration}/history/{history_blob}.bin",
            "out_lr": "out/{iteration}/lr.bin",
            "out_current_step": "out/{iteration}/current_step.txt",
            "out_status": "out/status.txt",
        },
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (root / "solver.json").write_text(json.dumps(solver, indent=1) + "\n")
    lines = [
        f"format {FORMAT} {VERSION}",
        f"trace {trace.name}",
        f"blas {trace.blas}",
        f"type {cfg.type}",
        f"lr_policy {cfg.lr_policy or '-'}",
        f"base_lr {_f(cfg.base_lr)}",
        f"gamma {_f(cfg.gamma)}",
        f"power {_f(cfg.power)}",
        f"stepsize {cfg.stepsize}",
        "stepvalue " + " ".join(str(x) for x in (len(cfg.stepvalue), *cfg.stepvalue)),
        f"max_iter {cfg.max_iter}",
        f"momentum {_f(cfg.momentum)}",
        f"momentum2 {_f(cfg.momentum2)}",
        f"delta {_f(cfg.delta)}",
        f"rms_decay {_f(cfg.rms_decay)}",
        f"weight_decay {_f(cfg.weight_decay)}",
        f"regularization_type {cfg.regularization_type or '-'}",
        f"clip_gradients {_f(cfg.clip_gradients)}",
        f"iter_size {manifest['iter_size']}",
        f"average_loss {cfg.average_loss}",
        f"solver_mode {cfg.solver_mode or '-'}",
        f"solver_type {cfg.solver_type or '-'}",
        f"type_set {int(cfg.type_set)}",
        f"start_iter {trace.init_iter}",
        f"start_current_step {trace.init_current_step}",
        f"start_history {int(trace.init_history is not None)}",
        f"iterations {len(trace.iterations)}",
        f"history_slots {cfg.history_slots}",
        f"blobs {nb}",
    ]
    for i, s in enumerate(specs):
        dims = " ".join(str(d) for d in s.shape)
        lines.append(f"blob {i} {s.name} {s.count} {_f(s.lr_mult)} {_f(s.decay_mult)} {len(s.shape)} {dims}".rstrip())
    (root / "manifest.txt").write_text("\n".join(lines) + "\n")
    return manifest


class _Missing(Exception):
    pass


def _read_array(stem: Path, count: int, what: str, *, required: bool) -> np.ndarray | None:
    """``stem.bin`` (raw LE float32) or ``stem.npy``; ``None`` when absent and optional."""
    b = stem.with_suffix(".bin")
    n = stem.with_suffix(".npy")
    if b.is_file():
        raw = b.read_bytes()
        if len(raw) != 4 * count:
            raise _Missing(f"{b} has {len(raw)} bytes, expected {4 * count} ({count} float32 for {what})")
        return np.frombuffer(raw, dtype=_LE_F32).astype(np.float32)
    if n.is_file():
        try:
            a = np.load(n, allow_pickle=False)
        except Exception as e:  # noqa: BLE001
            raise _Missing(f"{n} is not a readable .npy ({e})") from None
        if a.dtype != np.float32:
            raise _Missing(f"{n} has dtype {a.dtype}, expected float32 ({what})")
        if a.size != count:
            raise _Missing(f"{n} has {a.size} values, expected {count} ({what})")
        return a.reshape(-1)
    if required:
        raise _Missing(f"the port wrote no {b} ({what})")
    return None


def read_outputs(trace: Trace, out: str | os.PathLike) -> PortRun:
    """Read a ``cmd:`` port's ``out/`` directory back as a ``PortRun``."""
    out = Path(out)
    status_file = out / "status.txt"
    if status_file.is_file():
        text = status_file.read_text(errors="replace").strip()
        word, _, rest = text.partition(" ")
        word = word.strip().lower()
        if word in ("refused", "unsupported"):
            return PortRun(word, rest.strip() or word)
        if word not in ("ok", ""):
            return PortRun("error", f"{status_file} says {text[:80]!r}; expected ok, refused MESSAGE or unsupported REASON")
    cfg = trace.config
    specs = cfg.blobs
    nb = len(specs)
    nh = nb * cfg.history_slots
    outputs: list[StepOutput] = []
    try:
        for k, _ in enumerate(trace.iterations):
            d = out / str(k)
            params = {s.name: _read_array(d / "params" / str(i), s.count, f"iteration {k} params of {s.name}", required=True).reshape(s.shape)
                      for i, s in enumerate(specs)}
            diff = None
            if (d / "diff").is_dir():
                diff = {s.name: _read_array(d / "diff" / str(i), s.count, f"iteration {k} diff of {s.name}", required=True).reshape(s.shape)
                        for i, s in enumerate(specs)}
            history = None
            if (d / "history").is_dir():
                history = [_read_array(d / "history" / str(h), specs[h % nb].count, f"iteration {k} history blob {h}", required=True).reshape(specs[h % nb].shape)
                           for h in range(nh)]
            lr = _read_array(d / "lr", 1, f"iteration {k} lr", required=False)
            cs = None
            csf = d / "current_step.txt"
            if csf.is_file():
                try:
                    cs = int(csf.read_text().strip())
                except ValueError:
                    raise _Missing(f"{csf} holds {csf.read_text()[:40]!r}, expected an integer") from None
            outputs.append(StepOutput(params, diff, history, None if lr is None else float(lr[0]), cs))
    except _Missing as e:
        return PortRun("error", str(e), outputs)
    return PortRun("ok", "", outputs)


def _scratch_dir() -> str | None:
    """Where the per-trace directories go: ``$CAFFE_HARNESS_PORT_TMPDIR``, else
    ``/dev/shm`` when it is a writable directory (hundreds of small files: a
    RAM disk is ~50x faster than a loaded disk), else the system default."""
    env = os.environ.get("CAFFE_HARNESS_PORT_TMPDIR")
    if env:
        return env
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


class CmdRunner:
    """Runs a ``cmd:`` port once per trace (``docs/PORTS.md``).

    ``command`` is split like a shell command line (no shell runs it); the
    input directory is appended as the last argument unless some argument
    contains ``{dir}``. Set ``CAFFE_HARNESS_KEEP_PORT_DIR=1`` to keep the
    directories for debugging (their paths appear in the messages) and
    ``CAFFE_HARNESS_PORT_TMPDIR`` to choose where they are made.
    """

    def __init__(self, command: str, *, timeout: float = 60.0, name: str | None = None):
        from .base import PortSpecError

        try:
            argv = shlex.split(command)
        except ValueError as e:
            raise PortSpecError(f"cmd:{command}: cannot split the command line ({e})") from None
        if not argv:
            raise PortSpecError("cmd: needs a command, e.g. cmd:./my-port")
        self.argv = argv
        self.timeout = float(timeout)
        self.name = name or f"cmd:{command}"

    def run(self, trace: Trace) -> PortRun:
        """Write the inputs, run the command, read the outputs; never raises for the port's failures."""
        t0 = time.perf_counter()
        run = self._run(trace)
        run.seconds = time.perf_counter() - t0
        return run

    def _run(self, trace: Trace) -> PortRun:
        keep = os.environ.get("CAFFE_HARNESS_KEEP_PORT_DIR", "") not in ("", "0")
        root = Path(tempfile.mkdtemp(prefix="caffe-harness-port-", dir=_scratch_dir()))
        try:
            write_inputs(trace, root)
            if any("{dir}" in a for a in self.argv):
                argv = [a.replace("{dir}", str(root)) for a in self.argv]
            else:
                argv = [*self.argv, str(root)]
            env = dict(os.environ, CAFFE_HARNESS_PORT_DIR=str(root))
            where = f" (inputs kept in {root})" if keep else ""
            try:
                proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=self.timeout)
            except FileNotFoundError:
                return PortRun("error", f"command not found: {argv[0]}")
            except PermissionError:
                return PortRun("error", f"command not executable: {argv[0]}")
            except subprocess.TimeoutExpired:
                return PortRun("error", f"timed out after {self.timeout:g} s{where}")
            if proc.returncode != 0:
                err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                last = f": {err[-1][:200]}" if err else ""
                how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with status {proc.returncode}"
                run = read_outputs(trace, root / "out")
                if run.status in ("refused", "unsupported"):
                    return run
                return PortRun("error", f"{how}{last}{where}")
            run = read_outputs(trace, root / "out")
            if run.status == "error" and where:
                run.message += where
            return run
        finally:
            if not keep:
                shutil.rmtree(root, ignore_errors=True)

    def __repr__(self) -> str:
        return f"CmdRunner({self.name!r})"
