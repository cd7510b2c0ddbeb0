"""``--port torch``: Caffe's solver as a careful person would port it to PyTorch.

Not a reproduction of Caffe -- the translation a careful porter writes with
``torch.optim``, measured against real Caffe (``tools/torch-conformance``
writes the table to ``docs/TORCH_CONFORMANCE.md``):

* optimizer by ``type``: ``SGD`` -> ``torch.optim.SGD(momentum=momentum)``,
  ``Nesterov`` -> ``SGD(momentum, nesterov=True)``, ``AdaGrad`` ->
  ``Adagrad(eps=delta)``, ``RMSProp`` -> ``RMSprop(alpha=rms_decay,
  eps=delta)``, ``AdaDelta`` -> ``Adadelta(rho=momentum, eps=delta)``,
  ``Adam`` -> ``Adam(betas=(momentum, momentum2), eps=delta)``;
* one param group per learnable blob: ``lr = base_lr*lr_mult``,
  ``weight_decay = weight_decay*decay_mult`` (coupled L2, as Caffe's);
* the lr policy as a ``LambdaLR`` factor computed in Python floats
  (``gamma ** (it // stepsize)``, ``(1 + gamma*it) ** -power``, ...);
* float32 tensors; the ``iter_size`` passes summed in order and scaled by
  ``fl(1/iter_size)``; ``clip_grad_norm_(params, clip_gradients)``.

It declares unsupported what torch.optim cannot express: L1
regularization, Nesterov without momentum, resuming SGD/Nesterov from a
Caffe history (torch keeps ``v`` where Caffe keeps ``lr*v``), and settings
torch.optim rejects (a negative learning rate, ``alpha < 0``). torch is
imported only when the port is made (``pip install caffe-harness[torch]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..config import SolverConfig
from .base import PortSpecError, Unsupported
from .emulate import lambdalr_factor

__all__ = ["TorchPort", "lr_factor"]

_OPTIMIZERS = {
    "SGD": "SGD",
    "Nesterov": "SGD(nesterov=True)",
    "AdaGrad": "Adagrad",
    "RMSProp": "RMSprop",
    "AdaDelta": "Adadelta",
    "Adam": "Adam",
}


def lr_factor(config: SolverConfig, it: int) -> float:
    """The LambdaLR factor ``rate(it) / base_lr`` a porter writes for Caffe's ``lr_policy``, in Python floats."""
    return lambdalr_factor(config, it)


class TorchPort:
    """torch.optim + LambdaLR, one param group per blob (module docstring)."""

    name = "torch"

    def __init__(self) -> None:
        import torch  # noqa: F401 - fail early when torch is missing

        self._torch = torch

    @classmethod
    def from_spec(cls, rest: str) -> "TorchPort":
        """``torch`` (no options yet); ``PortSpecError`` when torch is not installed."""
        if rest.strip():
            raise PortSpecError(f"torch:{rest}: the torch port takes no options")
        try:
            return cls()
        except ImportError as e:
            raise PortSpecError(f"torch: PyTorch is not installed ({e}); pip install 'caffe-harness[torch]'") from None

    def supports(self, config: SolverConfig) -> bool | str:
        """Everything except what torch.optim cannot express."""
        if config.type not in _OPTIMIZERS:
            return f"no torch.optim optimizer for solver type {config.type!r}"
        if config.regularization_type == "L1" and config.weight_decay != 0 and any(b.decay_mult for b in config.blobs):
            return "torch.optim has no L1 regularization (regularization_type L1)"
        if config.regularization_type not in ("L1", "L2") and config.weight_decay != 0:
            return f"no torch equivalent of regularization_type {config.regularization_type!r}"
        if config.type == "Nesterov" and config.momentum <= 0:
            return "torch.optim.SGD(nesterov=True) needs momentum > 0"
        if config.lr_policy not in ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"):
            return f"no LambdaLR factor for lr_policy {config.lr_policy!r}"
        return True

    def init(self, config: SolverConfig, params: Mapping[str, np.ndarray], history: Sequence[np.ndarray] | None,
             iter: int, current_step: int) -> None:
        """Build the tensors, the optimizer with one group per blob, and the LambdaLR."""
        torch = self._torch
        self.config = config
        self.names = [b.name for b in config.blobs]
        self.tensors = [torch.tensor(np.array(params[n], dtype=np.float32)) for n in self.names]
        groups = []
        for b, t in zip(config.blobs, self.tensors):
            groups.append({"params": [t], "lr": config.base_lr * b.lr_mult,
                           "weight_decay": config.weight_decay * b.decay_mult})
        try:
            self._make_optimizer(config, groups, history, iter)
        except ValueError as e:  # torch.optim validates its arguments (negative lr, alpha < 0, ...)
            raise Unsupported(f"torch.optim rejects these settings: {e}") from None
        self.iter = iter

    def _make_optimizer(self, config, groups, history, iter) -> None:
        torch = self._torch
        opt = torch.optim
        t = config.type
        if t in ("SGD", "Nesterov"):
            self.opt = opt.SGD(groups, lr=config.base_lr, momentum=config.momentum, dampening=0,
                               nesterov=(t == "Nesterov"))
        elif t == "AdaGrad":
            self.opt = opt.Adagrad(groups, lr=config.base_lr, eps=config.delta)
        elif t == "RMSProp":
            self.opt = opt.RMSprop(groups, lr=config.base_lr, alpha=config.rms_decay, eps=config.delta)
        elif t == "AdaDelta":
            self.opt = opt.Adadelta(groups, lr=config.base_lr, rho=config.momentum, eps=config.delta)
        else:
            self.opt = opt.Adam(groups, lr=config.base_lr, betas=(config.momentum, config.momentum2), eps=config.delta)
        if history is not None and any(np.any(np.asarray(h) != 0) for h in history):
            self._load_history(history, iter)
        for g in self.opt.param_groups:
            g["initial_lr"] = g["lr"]
        self.sched = opt.lr_scheduler.LambdaLR(self.opt, lambda it: lr_factor(config, it), last_epoch=iter - 1)

    def _load_history(self, history: Sequence[np.ndarray], iter: int) -> None:
        torch = self._torch
        t = self.config.type
        n = len(self.tensors)
        keys = {"AdaGrad": ("sum",), "RMSProp": ("square_avg",), "AdaDelta": ("square_avg", "acc_delta"),
                "Adam": ("exp_avg", "exp_avg_sq")}.get(t)
        if keys is None:
            raise Unsupported("torch's SGD momentum buffer holds v, Caffe's history lr*v: cannot resume from a Caffe history")
        for i, p in enumerate(self.tensors):
            st = self.opt.state[p]
            for slot, key in enumerate(keys):
                st[key] = torch.tensor(np.array(history[slot * n + i], dtype=np.float32))
            st["step"] = torch.tensor(float(iter))

    def _history(self) -> list[np.ndarray] | None:
        keys = {"AdaGrad": ("sum",), "RMSProp": ("square_avg",), "AdaDelta": ("square_avg", "acc_delta"),
                "Adam": ("exp_avg", "exp_avg_sq")}.get(self.config.type)
        if keys is None:  # SGD/Nesterov: torch's buffer is not Caffe's history
            return None
        return [self.opt.state[p][k].detach().numpy().copy() for k in keys for p in self.tensors]

    def step(self, passes: Sequence[Mapping[str, np.ndarray]]) -> dict:
        """Sum the passes, scale by fl(1/iter_size), clip, ``optimizer.step()``, ``scheduler.step()``."""
        torch = self._torch
        cfg = self.config
        n = len(passes)
        for name, p in zip(self.names, self.tensors):
            g = np.zeros(p.shape, dtype=np.float32)
            for ps in passes:
                g = g + np.asarray(ps[name], dtype=np.float32)
            if n > 1:
                g = g * np.float32(np.float32(1) / np.float32(n))
            p.grad = torch.from_numpy(np.ascontiguousarray(g))
        if cfg.clip_gradients >= 0:
            torch.nn.utils.clip_grad_norm_(self.tensors, max_norm=cfg.clip_gradients)
        lr = np.float32(cfg.base_lr * lr_factor(cfg, self.iter))
        self.opt.step()
        self.sched.step()
        self.iter += 1
        return {
            "params": {name: p.detach().numpy().copy() for name, p in zip(self.names, self.tensors)},
            "history": self._history(),
            "lr": lr,
        }
