"""Read a solver.prototxt into a ``SolverConfig`` (with its net's blobs).

``load_solver(path)`` is the one entry point the rest of the harness uses:
strict text parsing (a typo is an error with ``file:line:col``), Caffe's
start-time refusals, and the learnable blob list of the train net with
``lr_mult``/``decay_mult`` resolved and shapes taken from the initial weights
when they are known.

Paths inside the solver (``net``, ``train_net``, ``weights``) are resolved
relative to the solver file's folder first, then the working directory
(Caffe itself uses the working directory; captures keep both the same).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import SolverConfig, config_from_proto, start_refusals

__all__ = ["read_solver_parameter", "load_solver", "resolve_path", "solver_refusals"]


def read_solver_parameter(path):
    """Parse a solver.prototxt strictly into a ``caffe_pb2.SolverParameter``."""
    from ..proto import caffe_pb2
    from .prototxt import parse_text

    return parse_text(path, caffe_pb2.SolverParameter)


def resolve_path(base: Path, name: str) -> Path:
    """``name`` relative to ``base``'s folder if it exists there, else as given."""
    p = Path(name)
    if p.is_absolute():
        return p
    cand = base.parent / p
    if cand.exists():
        return cand
    return p if p.exists() else cand


def _net_and_weights(param, path: Path, weights):
    from .net import load_net, upgrade_net

    net = None
    if param.HasField("train_net_param"):
        net = upgrade_net(param.train_net_param, source=str(path))
    elif param.HasField("net_param"):
        net = upgrade_net(param.net_param, source=str(path))
    elif param.train_net or param.net:
        net_path = resolve_path(path, param.train_net or param.net)
        net = load_net(net_path)
    if weights is None and len(param.weights):
        first = str(param.weights[0]).split(",")[0].strip()
        wpath = resolve_path(path, first)
        weights = wpath if wpath.exists() else None
    if weights is not None and not isinstance(weights, dict):
        from .blobs import read_caffemodel

        weights = read_caffemodel(weights)
    return net, weights


def load_solver(path, *, weights=None, check: bool = True, with_net: bool = True) -> SolverConfig:
    """Load a solver.prototxt as a ``SolverConfig``.

    ``weights``: a caffemodel path or a ``read_caffemodel`` dict giving blob
    shapes (default: the solver's own ``weights`` field, if the file exists).
    ``check``: raise the first start-time ``CaffeRefusal`` as Caffe would.
    ``with_net``: read the train net for the learnable blob list; a missing
    net file is an ``InputError``.
    """
    path = Path(path)
    param = read_solver_parameter(path)
    if check:
        refusals = start_refusals(param, source=os.fspath(path))
        if refusals:
            raise refusals[0]
    blobs = ()
    if with_net:
        from .net import learnable_blobs

        net, w = _net_and_weights(param, path, weights)
        if net is not None:
            state = param.train_state if param.HasField("train_state") else None
            blobs = learnable_blobs(net, w, state=state, source=os.fspath(path))
    return config_from_proto(param, source=os.fspath(path), blobs=blobs)


def solver_refusals(path, *, weights=None) -> tuple[SolverConfig | None, list]:
    """Every refusal Caffe would report for this solver file, in Caffe's order.

    Returns ``(config, refusals)``; Caffe prints the first refusal and dies.
    """
    from ..config import update_refusals
    from ..errors import CaffeRefusal

    path = Path(path)
    param = read_solver_parameter(path)
    out = list(start_refusals(param, source=os.fspath(path)))
    try:
        cfg = load_solver(path, weights=weights, check=False)
    except CaffeRefusal as r:  # e.g. shared params with mismatched multipliers
        out.append(r)
        return None, out
    out.extend(update_refusals(cfg))
    return cfg, out
