"""``SolverConfig``: one immutable model of a Caffe solver, defaults resolved.

Every other module takes a ``SolverConfig``; nothing else reads
``SolverParameter`` messages. Float fields hold the float32 value Caffe
stores (protobuf ``float``), as a Python float that is exactly representable
in float32, so ``np.float32(cfg.base_lr)`` is the bit pattern Caffe uses.

Names are Caffe's (``lr_policy``, ``iter_size``, ``lr_mult``, ...).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "SOLVER_TYPES",
    "LR_POLICIES",
    "REGULARIZATION_TYPES",
    "BlobSpec",
    "SolverConfig",
    "f32",
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
    solver_mode: str = "GPU"
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
