"""The port protocol: how the harness drives a third-party solver implementation.

A *port* is someone else's implementation of Caffe's solver update (a
PyTorch translation, a C++ re-implementation, a fork). The harness feeds it
a trace's inputs -- solver settings, initial weights, every forward-backward
pass's gradients -- and compares what it produces with what real Caffe
produced (``docs/PORTS.md``).

In-process ports implement ``Port``::

    supports(config) -> True | "reason it cannot run this solver"
    init(config, params, history, iter, current_step[, *, blas])
    step(passes) -> {"params": ..., "diff": ..., "history": ..., "lr": ..., "current_step": ...}

Out-of-process ports speak the ``cmd:`` protocol (``harness.ports.cmd``).
``load_port(SPEC)`` turns a spec string into a ``Runner``, the one interface
the conformance engine uses: ``runner.run(trace) -> PortRun``.

SPECs: ``reference``, ``py:module:attr`` (or ``py:path/to/file.py:attr``),
``cmd:COMMAND ARGS...``, ``variant:NAME[+NAME...]``, ``torch``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..config import SolverConfig
from ..errors import CaffeRefusal, HarnessError
from ..trace import Trace

__all__ = [
    "Port",
    "Runner",
    "PortRun",
    "StepOutput",
    "PortSpecError",
    "PortOutputError",
    "Unsupported",
    "InProcessRunner",
    "load_port",
    "normalize_output",
    "PORT_STATUSES",
]

#: What a port did with one trace.
PORT_STATUSES = ("ok", "refused", "unsupported", "error")


class PortSpecError(HarnessError):
    """A ``--port`` SPEC that names nothing loadable (exit code 2)."""


class PortOutputError(Exception):
    """A port's output is malformed (missing blob, wrong shape, not a number)."""


class Unsupported(Exception):
    """Raised by a port's ``init`` when it cannot run this trace (e.g. cannot resume its history).

    The trace is reported *unsupported* with ``str(exception)`` as the reason,
    exactly as when ``supports(config)`` returns a reason.
    """


@runtime_checkable
class Port(Protocol):
    """An in-process implementation of Caffe's solver update.

    ``supports(config)`` returns ``True`` or a string saying why the port
    cannot run this solver (e.g. ``"L1 regularization is not expressible in
    torch.optim"``); such traces are reported *unsupported*, not failed.

    ``init(config, params, history, iter, current_step)`` starts a run:
    ``params`` maps blob names (``"ip0/0"``, ``config.blobs`` order) to
    float32 arrays; ``history`` is ``None`` (fresh run: zeros) or the list of
    history blobs in Caffe's ``SolverState`` order; ``iter`` and
    ``current_step`` are Caffe's counters at the start. A port whose ``init``
    also takes a keyword ``blas`` is told which BLAS build recorded the trace
    (``"openblas"``, ``"reference"``, ``"atlas"``). Raising
    ``harness.CaffeRefusal`` means "Caffe would refuse these settings";
    raising ``harness.ports.Unsupported`` means "this port cannot run it".

    ``step(passes)`` performs one ``ApplyUpdate``: ``passes`` holds
    ``iter_size`` dicts (blob name -> float32 gradient of one
    forward-backward pass, before accumulation). It returns a mapping with

    ``params`` (required)
        blob name -> the weights after the update;
    ``diff`` (optional)
        blob name -> the update value Caffe leaves in the diff (what
        ``snapshot_diff`` saves);
    ``history`` (optional)
        the history blobs in ``SolverState`` order;
    ``lr`` (optional)
        the rate Caffe's ``GetLearningRate`` returns for this iteration;
    ``current_step`` (optional)
        Caffe's ``current_step_`` after the update.

    Optional keys that are absent or ``None`` are not compared. Arrays may be
    anything ``numpy.asarray`` accepts; they are rounded to float32.
    An optional attribute ``blas`` (a collection of build names) restricts
    the traces the port is checked against.
    """

    def supports(self, config: SolverConfig) -> bool | str: ...

    def init(self, config: SolverConfig, params: Mapping[str, np.ndarray], history: Sequence[np.ndarray] | None,
             iter: int, current_step: int) -> None: ...

    def step(self, passes: Sequence[Mapping[str, np.ndarray]]) -> Mapping[str, Any]: ...


@dataclass
class StepOutput:
    """One iteration's output of a port, normalized (float32, Caffe's shapes)."""

    params: dict[str, np.ndarray]
    diff: dict[str, np.ndarray] | None = None
    history: list[np.ndarray] | None = None
    lr: float | None = None
    current_step: int | None = None
    _flat: dict = field(default_factory=dict, repr=False, compare=False)

    def flat(self, kind: str) -> np.ndarray | None:
        """``params``, ``diff`` or ``history`` as one float32 vector (blobs in order; cached)."""
        if kind not in self._flat:
            v = getattr(self, kind)
            if v is None:
                self._flat[kind] = None
            else:
                arrays = list(v.values()) if isinstance(v, dict) else list(v)
                self._flat[kind] = (np.concatenate([a.ravel() for a in arrays]) if arrays
                                    else np.zeros(0, np.float32))
        return self._flat[kind]


@dataclass
class PortRun:
    """What a port did with one trace.

    ``status`` is ``"ok"`` (it ran; ``outputs`` has one ``StepOutput`` per
    iteration), ``"refused"`` (it refused the settings as Caffe would;
    ``message`` is its reason), ``"unsupported"`` (it declared it cannot run
    them) or ``"error"`` (it crashed or wrote malformed output; ``message``
    says how, ``outputs`` holds what came before).
    """

    status: str
    message: str = ""
    outputs: list[StepOutput] = field(default_factory=list)
    seconds: float = 0.0
    _all: dict = field(default_factory=dict, repr=False, compare=False)

    def flat_all(self, kind: str) -> np.ndarray | None:
        """``kind`` (``params``, ``diff``, ``history``, ``lr``) of every iteration as one float32 vector.

        ``None`` when any iteration lacks it. Cached.
        """
        if kind not in self._all:
            if kind == "lr":
                vals = [o.lr for o in self.outputs]
                self._all[kind] = None if any(v is None for v in vals) else np.array(vals, dtype=np.float32)
            else:
                parts = [o.flat(kind) for o in self.outputs]
                self._all[kind] = (None if any(p is None for p in parts)
                                   else np.concatenate(parts) if parts else np.zeros(0, np.float32))
        return self._all[kind]


class Runner(Protocol):
    """What the conformance engine drives: one trace in, one ``PortRun`` out."""

    name: str

    def run(self, trace: Trace) -> PortRun: ...


# ---------------------------------------------------------------------------
# output normalization
# ---------------------------------------------------------------------------
def _as_f32(value, what: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        if hasattr(value, "detach"):  # a torch tensor that slipped through
            value = value.detach().cpu().numpy()
        a = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - any conversion failure means the same
        raise PortOutputError(f"{what} is not an array ({type(value).__name__}: {e})") from None
    if a.dtype.kind not in "fiu":
        raise PortOutputError(f"{what} has dtype {a.dtype}, expected float32")
    a = a.astype(np.float32, copy=True)
    if a.shape != shape:
        if a.size != int(np.prod(shape, dtype=np.int64)):
            raise PortOutputError(f"{what} has shape {a.shape}, expected {shape}")
        a = a.reshape(shape)
    return a


def normalize_output(out: Mapping[str, Any], config: SolverConfig) -> StepOutput:
    """Check one ``step`` result against the solver's blobs; float32 arrays in Caffe's shapes.

    Raises ``PortOutputError`` naming the key and blob for anything
    missing, misshapen or not numeric.
    """
    if not isinstance(out, Mapping):
        raise PortOutputError(f"step returned {type(out).__name__}, expected a mapping with 'params'")
    unknown = set(out) - {"params", "diff", "history", "lr", "current_step"}
    if unknown:
        raise PortOutputError(f"step returned unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    specs = config.blobs

    def blob_dict(key: str) -> dict[str, np.ndarray] | None:
        d = out.get(key)
        if d is None:
            if key == "params":
                raise PortOutputError("step returned no 'params'")
            return None
        if not isinstance(d, Mapping):
            raise PortOutputError(f"'{key}' is {type(d).__name__}, expected a mapping blob name -> array")
        res = {}
        for s in specs:
            if s.name not in d:
                raise PortOutputError(f"'{key}' has no blob {s.name!r}")
            res[s.name] = _as_f32(d[s.name], f"{key}[{s.name!r}]", tuple(s.shape))
        return res

    params = blob_dict("params")
    diff = blob_dict("diff")
    history = None
    if out.get("history") is not None:
        h = list(out["history"])
        want = len(specs) * config.history_slots
        if len(h) != want:
            raise PortOutputError(f"'history' has {len(h)} blobs, expected {want} ({config.type}, {len(specs)} learnable blobs)")
        history = [_as_f32(a, f"history[{i}]", tuple(specs[i % len(specs)].shape)) for i, a in enumerate(h)]
    lr = out.get("lr")
    if lr is not None:
        try:
            lr = float(np.float32(lr))
        except (TypeError, ValueError):
            raise PortOutputError(f"'lr' is {lr!r}, expected a number") from None
    cs = out.get("current_step")
    if cs is not None:
        try:
            cs = int(cs)
        except (TypeError, ValueError):
            raise PortOutputError(f"'current_step' is {cs!r}, expected an integer") from None
    return StepOutput(params=params, diff=diff, history=history, lr=lr, current_step=cs)


# ---------------------------------------------------------------------------
# in-process ports
# ---------------------------------------------------------------------------
def _accepts_blas(fn) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return any(p.name == "blas" or p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


class InProcessRunner:
    """Drives a ``Port`` object through one trace at a time."""

    def __init__(self, port: Any, name: str, *, trusted: bool = False):
        missing = [m for m in ("supports", "init", "step") if not callable(getattr(port, m, None))]
        if missing:
            raise PortSpecError(f"port {name}: {type(port).__name__} has no {', '.join(missing)} method (see docs/PORTS.md)")
        self.port = port
        self.name = name
        self.trusted = trusted  # the harness's own ports: skip output validation
        self._blas_kw = _accepts_blas(port.init)

    def run(self, trace: Trace) -> PortRun:
        """Run the whole trace through the port; never raises for the port's own failures."""
        t0 = time.perf_counter()
        run = self._run(trace)
        run.seconds = time.perf_counter() - t0
        return run

    def _run(self, trace: Trace) -> PortRun:
        cfg = trace.config
        port = self.port
        try:
            ok = port.supports(cfg)
        except Exception as e:  # noqa: BLE001
            return PortRun("error", f"supports() raised {_short(e)}")
        if ok is not True:
            return PortRun("unsupported", str(ok) if ok else "the port does not support this solver")
        blas = getattr(port, "blas", None)
        if blas is not None and trace.blas not in blas:
            return PortRun("unsupported", f"the port targets {'/'.join(blas)}; this trace was recorded with {trace.blas}")
        params = {k: np.array(v, dtype=np.float32, copy=True) for k, v in trace.init_params.items()}
        history = None if trace.init_history is None else [np.array(h, dtype=np.float32, copy=True) for h in trace.init_history]
        kw = {"blas": trace.blas} if self._blas_kw else {}
        try:
            port.init(cfg, params, history, trace.init_iter, trace.init_current_step, **kw)
        except CaffeRefusal as e:
            return PortRun("refused", e.message)
        except Unsupported as e:
            return PortRun("unsupported", str(e) or "the port cannot run this trace")
        except Exception as e:  # noqa: BLE001
            return PortRun("error", f"init() raised {_short(e)}")
        outputs: list[StepOutput] = []
        for it in trace.iterations:
            passes = [{k: np.array(v, dtype=np.float32, copy=True) for k, v in p.items()} for p in it.grads]
            try:
                out = port.step(passes)
            except CaffeRefusal as e:
                return PortRun("refused", e.message, outputs)
            except Exception as e:  # noqa: BLE001
                return PortRun("error", f"step() of iteration {it.iter} raised {_short(e)}", outputs)
            if self.trusted:
                so = StepOutput(out["params"], out.get("diff"), out.get("history"), out.get("lr"), out.get("current_step"))
                flat = getattr(port, "last_flat", None)
                if flat is not None:
                    so._flat.update(flat)
                outputs.append(so)
                continue
            try:
                outputs.append(normalize_output(out, cfg))
            except PortOutputError as e:
                return PortRun("error", f"iteration {it.iter}: {e}", outputs)
        return PortRun("ok", "", outputs)


# ---------------------------------------------------------------------------
# specs
# ---------------------------------------------------------------------------
def _load_py(target: str) -> Any:
    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise PortSpecError(f"py:{target}: expected py:MODULE:ATTR or py:FILE.py:ATTR")
    if mod_name.endswith(".py"):
        path = Path(mod_name)
        if not path.is_file():
            raise PortSpecError(f"py:{target}: no such file {mod_name}")
        unique = f"_caffe_harness_port_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(unique, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            raise PortSpecError(f"py:{target}: importing {mod_name} raised {_short(e)}") from None
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise PortSpecError(f"py:{target}: cannot import {mod_name} ({e})") from None
        except Exception as e:  # noqa: BLE001
            raise PortSpecError(f"py:{target}: importing {mod_name} raised {_short(e)}") from None
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PortSpecError(f"py:{target}: {mod_name} has no attribute {attr!r}") from None
    if not all(callable(getattr(obj, m, None)) for m in ("supports", "init", "step")) or inspect.isclass(obj):
        if not callable(obj):
            raise PortSpecError(f"py:{target}: {attr} is neither a port nor a factory of ports")
        try:
            obj = obj()
        except Exception as e:  # noqa: BLE001
            raise PortSpecError(f"py:{target}: calling the factory {attr}() raised {_short(e)}") from None
    return obj


def load_port(spec: str, *, timeout: float = 60.0) -> Runner:
    """Turn a port SPEC into a ``Runner``.

    ``reference``
        the harness's own numba reference (``harness.reference``);
    ``py:MODULE:ATTR`` / ``py:FILE.py:ATTR``
        an object with the ``Port`` methods, or a class/factory called
        without arguments to make one;
    ``cmd:COMMAND ARGS...``
        a program speaking the ``cmd:`` protocol (``docs/PORTS.md``), run once
        per trace with the input directory as last argument (or where
        ``{dir}`` appears), killed after ``timeout`` seconds;
    ``variant:NAME[+NAME...]``
        Caffe's update with known misports switched on
        (``harness.ports.variants``); ``variant:caffe`` has none;
    ``torch``
        the PyTorch adapter (``harness.ports.torch_port``; needs torch).

    Raises ``PortSpecError`` for a spec that names nothing loadable.
    """
    spec = spec.strip()
    kind, sep, rest = spec.partition(":")
    if spec == "reference":
        from .reference_port import ReferencePort

        return InProcessRunner(ReferencePort(), "reference")
    if kind == "py" and sep:
        return InProcessRunner(_load_py(rest), spec)
    if kind == "cmd" and sep:
        from .cmd import CmdRunner

        return CmdRunner(rest, timeout=timeout, name=spec)
    if kind == "variant" and sep:
        from .variants import variant_port

        try:
            port = variant_port(rest)
        except KeyError as e:
            raise PortSpecError(f"{spec}: {e.args[0]}") from None
        return InProcessRunner(port, spec)
    if kind == "torch":
        from .torch_port import TorchPort

        return InProcessRunner(TorchPort.from_spec(rest), spec)
    raise PortSpecError(
        f"unknown port spec {spec!r}: expected reference, py:MODULE:ATTR, cmd:COMMAND..., variant:NAME or torch"
    )
