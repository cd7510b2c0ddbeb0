"""``SolverConfig``: one immutable model of a Caffe solver, defaults resolved.

Every other module takes a ``SolverConfig``; nothing else reads
``SolverParameter`` messages. Float fields hold the float32 value Caffe
stores (protobuf ``float``), as a Python float that is exactly representable
in float32, so ``np.float32(cfg.base_lr)`` is the bit pattern Caffe uses.

Names are Caffe's (``lr_policy``, ``iter_size``, ``lr_mult``, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SOLVER_TYPES",
    "LR_POLICIES",
    "REGULARIZATION_TYPES",
    "BlobSpec",
    "SolverConfig",
    "f32",
    "caffe_float",
    "resolved_type",
    "config_from_proto",
    "start_refusals",
    "config_refusals",
    "lr_policy_refusal",
    "update_refusals",
]

#: Caffe's registered solver types, in the order its error message lists them.
SOLVER_TYPES = ("AdaDelta", "AdaGrad", "Adam", "Nesterov", "RMSProp", "SGD")
#: The deprecated ``solver_type`` enum, by value.
SOLVER_TYPE_ENUM = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")
REGULARIZATION_TYPES = ("L2", "L1")
#: Solvers that keep two history blobs per learnable blob.
TWO_SLOT_SOLVERS = ("AdaDelta", "Adam")


def f32(x) -> float:
    """Round a Python number to float32 and return it as a Python float."""
    return float(np.float32(x))


@dataclass(frozen=True)
class BlobSpec:
    """One learnable blob, named ``<layer>/<index>`` as in CAPTURE_FORMAT.md."""

    name: str
    shape: tuple[int, ...]
    lr_mult: float = 1.0
    decay_mult: float = 1.0

    @property
    def layer(self) -> str:
        return self.name.rsplit("/", 1)[0]

    @property
    def index(self) -> int:
        return int(self.name.rsplit("/", 1)[1])

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


@dataclass(frozen=True)
class SolverConfig:
    """A solver as Caffe runs it: ``SolverParameter`` with defaults resolved.

    ``type`` is the resolved solver type (after ``UpgradeSolverType``).
    ``blobs`` is the learnable blob list of the train net in net order (empty
    when the net is not known). Fields Caffe leaves unset read as 0, as in
    Caffe (``base_lr``, ``gamma``, ``power``, ``momentum``, ``weight_decay``,
    ``stepsize``, ``max_iter``, ``display``); ``lr_policy`` is ``""`` when
    unset (Caffe dies with "Unknown learning rate policy: " at the first
    update).
    """

    type: str = "SGD"
    base_lr: float = 0.0
    lr_policy: str = ""
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple[int, ...] = ()
    max_iter: int = 0
    momentum: float = 0.0
    momentum2: float = f32(0.999)
    delta: float = f32(1e-8)
    rms_decay: float = f32(0.99)
    weight_decay: float = 0.0
    regularization_type: str = "L2"
    clip_gradients: float = -1.0
    iter_size: int = 1
    average_loss: int = 1
    display: int = 0
    snapshot: int = 0
    snapshot_prefix: str = ""
    snapshot_diff: bool = False
    snapshot_format: str = "BINARYPROTO"
    snapshot_after_train: bool = True
    test_interval: int = 0
    test_iter: tuple[int, ...] = ()
    test_initialization: bool = True
    random_seed: int = -1
    #: ``"CPU"``/``"GPU"`` when the solver sets it, ``""`` when unset:
    #: ``caffe train`` only uses the GPU when the field is set explicitly
    #: (the proto default GPU is ignored), and the CPU-only build refuses that.
    solver_mode: str = ""
    #: the deprecated enum's name (``"ADAM"``) when the solver sets it, else
    #: ``""``; ``type`` already holds the upgraded type.
    solver_type: str = ""
    #: True when the solver sets ``type`` itself (Caffe refuses both set).
    type_set: bool = False
    net: str = ""
    blobs: tuple[BlobSpec, ...] = ()
    #: where the config came from (a path, or "<log>:LINE"), for messages
    source: str = ""

    # -- derived -----------------------------------------------------------
    @property
    def history_slots(self) -> int:
        """History blobs per learnable blob: 2 for AdaDelta and Adam, else 1."""
        return 2 if self.type in TWO_SLOT_SOLVERS else 1

    @property
    def blob_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.blobs)

    def blob(self, name: str) -> BlobSpec:
        for b in self.blobs:
            if b.name == name:
                return b
        raise KeyError(name)

    def replace(self, **changes) -> "SolverConfig":
        """A copy with some fields changed (floats re-rounded to float32)."""
        for k, v in list(changes.items()):
            if isinstance(getattr(self, k, None), float) and not isinstance(v, bool):
                changes[k] = f32(v)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["blobs"] = [
            {"name": b.name, "shape": list(b.shape), "lr_mult": b.lr_mult, "decay_mult": b.decay_mult}
            for b in self.blobs
        ]
        d["stepvalue"] = list(self.stepvalue)
        d["test_iter"] = list(self.test_iter)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SolverConfig":
        d = dict(d)
        blobs = tuple(
            BlobSpec(b["name"], tuple(int(x) for x in b["shape"]), f32(b.get("lr_mult", 1.0)), f32(b.get("decay_mult", 1.0)))
            for b in d.pop("blobs", ())
        )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise KeyError(f"unknown SolverConfig field(s): {', '.join(sorted(unknown))}")
        for k in ("stepvalue", "test_iter"):
            if k in d:
                d[k] = tuple(int(x) for x in d[k])
        for f in dataclasses.fields(cls):
            if f.name in d and f.type == "float":
                d[f.name] = f32(d[f.name])
        return cls(blobs=blobs, **d)


# ---------------------------------------------------------------------------
# From a SolverParameter message
# ---------------------------------------------------------------------------

_FLOAT_FIELDS = (
    "base_lr", "gamma", "power", "momentum", "momentum2", "delta", "rms_decay",
    "weight_decay", "clip_gradients",
)
_INT_FIELDS = (
    "stepsize", "max_iter", "iter_size", "average_loss", "display", "snapshot",
    "test_interval", "random_seed",
)


def resolved_type(param) -> str:
    """The solver type after Caffe's ``UpgradeSolverType``.

    ``type`` wins when both are set (Caffe refuses that; see ``start_refusals``).
    """
    if param.HasField("type") or not param.HasField("solver_type"):
        return param.type
    return SOLVER_TYPE_ENUM[param.solver_type]


def config_from_proto(param, *, source: str = "", blobs: tuple[BlobSpec, ...] = ()) -> SolverConfig:
    """Build a ``SolverConfig`` from a ``caffe_pb2.SolverParameter``.

    A pure conversion: Caffe's defaults come from the proto's declared
    defaults, the deprecated ``solver_type`` enum is upgraded, and nothing is
    refused here (see ``start_refusals`` / ``update_refusals``).
    """
    kw: dict = {}
    for name in _FLOAT_FIELDS:
        kw[name] = f32(getattr(param, name))
    for name in _INT_FIELDS:
        kw[name] = int(getattr(param, name))
    kw["type"] = resolved_type(param)
    kw["lr_policy"] = param.lr_policy
    kw["regularization_type"] = param.regularization_type
    kw["stepvalue"] = tuple(int(v) for v in param.stepvalue)
    kw["test_iter"] = tuple(int(v) for v in param.test_iter)
    kw["snapshot_prefix"] = param.snapshot_prefix
    kw["snapshot_diff"] = bool(param.snapshot_diff)
    kw["snapshot_after_train"] = bool(param.snapshot_after_train)
    kw["test_initialization"] = bool(param.test_initialization)
    kw["snapshot_format"] = param.SnapshotFormat.Name(param.snapshot_format)
    kw["solver_mode"] = param.SolverMode.Name(param.solver_mode) if param.HasField("solver_mode") else ""
    kw["solver_type"] = param.SolverType.Name(param.solver_type) if param.HasField("solver_type") else ""
    kw["type_set"] = param.HasField("type")
    kw["net"] = param.net or param.train_net
    return SolverConfig(blobs=tuple(blobs), source=source, **kw)


# ---------------------------------------------------------------------------
# Caffe's refusals, with Caffe's own messages
# ---------------------------------------------------------------------------

def caffe_float(x: float) -> str:
    """Format a number as C++'s ``ostream <<`` does by default (``%g``)."""
    from .compare import log_float_text

    return log_float_text(float(x))


def _check_op(a_expr: str, op: str, b_expr: str, a, b, message: str = "") -> str:
    """glog's CHECK_op text: ``Check failed: a op b (va vs. vb) message``.

    glog leaves a trailing space when there is no message; we strip it, and
    comparisons with log lines strip theirs.
    """
    fa = caffe_float(a) if isinstance(a, float) else str(a)
    fb = caffe_float(b) if isinstance(b, float) else str(b)
    return f"Check failed: {a_expr} {op} {b_expr} ({fa} vs. {fb}) {message}".rstrip()


def start_refusals(param, *, source=None) -> list:
    """Refusals Caffe's ``caffe train`` reports before the first iteration.

    In the order Caffe checks them (the first one is the one Caffe prints):
    solver proto upgrade, GPU mode on the CPU-only build, solver registry,
    ``Solver::Init`` (average_loss, train/test net fields), then the
    AdaGrad/RMSProp constructors. ``param`` is a ``caffe_pb2.SolverParameter``.
    """
    from .errors import CaffeRefusal

    out = []

    def refuse(msg, caffe_file):
        out.append(CaffeRefusal(msg, when="start", caffe_file=caffe_file, path=source))

    cfg = config_from_proto(param, source=source or "")
    solver_checks = config_refusals(cfg)
    # proto upgrade, GPU mode, the registry and Solver::Init's average_loss
    # check come before the nets are built
    out.extend(r for r in solver_checks if r.caffe_file != "sgd_solvers.hpp")
    n_train = sum(int(param.HasField(f)) for f in ("net", "net_param", "train_net", "train_net_param"))
    fields = "net, net_param, train_net, train_net_param"
    if n_train < 1:
        refuse(_check_op("num_train_nets", ">=", "1", n_train, 1,
                         f"SolverParameter must specify a train net using one of these fields: {fields}"),
               "solver.cpp")
    elif n_train > 1:
        refuse(_check_op("num_train_nets", "<=", "1", n_train, 1,
                         f"SolverParameter must not contain more than one of these fields specifying a train_net: {fields}"),
               "solver.cpp")
    n_generic = int(param.HasField("net_param")) + int(param.HasField("net"))
    if n_generic > 1:
        refuse(_check_op("num_generic_nets", "<=", "1", n_generic, 1,
                         "Both net_param and net_file may not be specified."), "solver.cpp")
    n_test = len(param.test_net_param) + len(param.test_net)
    n_iter = len(param.test_iter)
    if n_generic and n_iter < n_test:
        refuse(_check_op("param_.test_iter_size()", ">=", "num_test_nets", n_iter, n_test,
                         "test_iter must be specified for each test network."), "solver.cpp")
    elif not n_generic and n_iter != n_test:
        refuse(_check_op("param_.test_iter_size()", "==", "num_test_nets", n_iter, n_test,
                         "test_iter must be specified for each test network."), "solver.cpp")
    instances = n_test + max(n_iter - n_test, 0) if n_generic else n_test
    if len(param.test_state) and len(param.test_state) != instances:
        refuse(_check_op("param_.test_state_size()", "==", "num_test_net_instances",
                         len(param.test_state), instances,
                         "test_state must be unspecified or specified once per test net."), "solver.cpp")
    if instances and param.test_interval <= 0:
        refuse(_check_op("param_.test_interval()", ">", "0", param.test_interval, 0), "solver.cpp")
    # the AdaGrad/RMSProp constructors check after Solver::Init
    out.extend(r for r in solver_checks if r.caffe_file == "sgd_solvers.hpp")
    return out


def config_refusals(config: SolverConfig) -> list:
    """Start-time refusals that depend on the solver settings alone.

    In Caffe's order: the ``solver_type`` upgrade, GPU mode on the CPU-only
    build, the solver registry (unknown ``type``), ``Solver::Init``'s
    ``average_loss`` check and the AdaGrad/RMSProp constructors.
    ``start_refusals`` adds the net checks that need the raw proto.
    """
    from .errors import CaffeRefusal

    out = []
    src = config.source or None

    def refuse(msg, caffe_file):
        out.append(CaffeRefusal(msg, when="start", caffe_file=caffe_file, path=src))

    if config.solver_type and config.type_set:
        refuse(
            "Check failed: !solver_param->has_solver_type() || !solver_param->has_type() "
            "Failed to upgrade solver: old solver_type field (enum) and new type field (string) "
            "cannot be both specified in solver proto text.",
            "upgrade_proto.cpp",
        )
    if config.solver_mode == "GPU":
        refuse("Cannot use GPU in CPU-only Caffe: check mode.", "common.cpp")
    stype = config.type
    if stype not in SOLVER_TYPES:
        refuse(
            _check_op("registry.count(type)", "==", "1", 0, 1,
                      f"Unknown solver type: {stype} (known types: {', '.join(SOLVER_TYPES)})"),
            "solver_factory.hpp",
        )
    if config.average_loss < 1:
        refuse(_check_op("param_.average_loss()", ">=", "1", config.average_loss, 1,
                         "average_loss should be non-negative."), "solver.cpp")
    if stype in ("AdaGrad", "RMSProp") and config.momentum != 0:
        refuse(_check_op("0", "==", "this->param_.momentum()", 0, config.momentum,
                         f"Momentum cannot be used with {stype}."), "sgd_solvers.hpp")
    if stype == "RMSProp":
        rho = config.rms_decay
        if not rho >= 0:
            refuse(_check_op("this->param_.rms_decay()", ">=", "0", rho, 0,
                             "rms_decay should lie between 0 and 1."), "sgd_solvers.hpp")
        elif not rho < 1:
            refuse(_check_op("this->param_.rms_decay()", "<", "1", rho, 1,
                             "rms_decay should lie between 0 and 1."), "sgd_solvers.hpp")
    return out


def lr_policy_refusal(config: SolverConfig):
    """The refusal ``GetLearningRate`` raises for this config, or ``None``.

    Mirrors the checks in Caffe's ``SGDSolver::GetLearningRate`` (this build
    has master's ``stepsize > 0`` and ``gamma >= 0`` checks), in their order.
    """
    from .errors import CaffeRefusal

    p = config.lr_policy
    gamma_check = _check_op("this->param_.gamma()", ">=", "0", config.gamma, 0)
    stepsize_check = _check_op("this->param_.stepsize()", ">", "0", config.stepsize, 0)
    msg = None
    if p == "fixed" or p == "poly":
        msg = None
    elif p == "step":
        if not config.stepsize > 0:
            msg = stepsize_check
        elif not config.gamma >= 0:
            msg = gamma_check
    elif p in ("exp", "inv", "multistep"):
        if not config.gamma >= 0:
            msg = gamma_check
    elif p == "sigmoid":
        if not config.gamma >= 0:
            msg = gamma_check
        elif not config.stepsize > 0:
            msg = stepsize_check
    else:
        msg = f"Unknown learning rate policy: {p}"
    if msg is None:
        return None
    return CaffeRefusal(msg, when="first-update", caffe_file="sgd_solver.cpp", path=config.source or None)


def update_refusals(config: SolverConfig, *, start_iter: int = 0) -> list:
    """Refusals Caffe reports in its first ``ApplyUpdate``.

    Nothing is reported when no update runs (``max_iter <= start_iter``):
    Caffe never calls ``GetLearningRate`` then, and accepts the solver.
    The regularization type is only looked at for blobs whose
    ``local_decay = weight_decay * decay_mult`` is non-zero; with an unknown
    net (no blobs) a non-zero ``weight_decay`` is taken to reach it.
    """
    from .errors import CaffeRefusal

    if config.max_iter <= start_iter:
        return []
    out = []
    r = lr_policy_refusal(config)
    if r is not None:
        out.append(r)
    if config.regularization_type not in REGULARIZATION_TYPES:
        wd = np.float32(config.weight_decay)
        if config.blobs:
            reached = any(wd * np.float32(b.decay_mult) != 0 for b in config.blobs)
        else:
            reached = wd != 0
        if reached:
            out.append(CaffeRefusal(f"Unknown regularization type: {config.regularization_type}",
                                    when="first-update", caffe_file="sgd_solver.cpp",
                                    path=config.source or None))
    return out
