"""The golden corpus as data: one :class:`Case` per real-Caffe run in ``golden/``.

Every case names its solver settings (``SolverParameter`` fields, Caffe's
names), the injection-net layers (``harness.oracle`` layer spec), the
gradient stream (a seeded ``GradientSpec``), the number of iterations
(``max_iter``) and the BLAS builds it is recorded with. ``tools/regen-golden``
runs real Caffe on each (``harness.oracle.capture``) and writes
``golden/<blas>/<id>/`` (or ``golden/rejected/<id>/`` for settings Caffe
refuses) with :func:`build`; nobody edits ``golden/`` by hand.

The families (``FAMILIES``) say why each case is there: the solver type x
lr policy grid, regularization, clipping (incl. blob sizes that exercise
the BLAS's ``sdot`` blocking and tail), ``iter_size``, multipliers and
shapes, lr policy edge cases, special gradients, momentum and epsilon
corner cases, resumed runs, the deprecated ``solver_type`` field, the
representative subset repeated on the reference BLAS and ATLAS builds, and
the refusals (``rejected``). ``docs/CORPUS.md`` is the prose version.

Determinism: a case's seed is fixed in the table, the oracle pins
``OPENBLAS_NUM_THREADS=1``, and :func:`build` removes what would differ
between two regenerations (the capture's clock date, temporary paths), so
regenerating on the same machine gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "BLAS_BUILDS",
    "REJECTED",
    "FAMILIES",
    "DEFAULT_LAYERS",
    "Case",
    "CASES",
    "case",
    "select",
    "golden_entries",
    "initial_weights",
    "build",
    "MACHINE_FIELDS",
    "trace_dirs",
    "compare_trees",
]

#: The real Caffe builds (``harness.oracle.BLAS_CHOICES``): one folder each under ``golden/``.
BLAS_BUILDS = ("openblas", "reference", "atlas")
#: The folder under ``golden/`` that holds the refusals (recorded with OpenBLAS; no arithmetic runs).
REJECTED = "rejected"

#: Why each family of cases is in the corpus.
FAMILIES = {
    "grid": "every solver type x every lr policy, with L2 decay, lr_mult/decay_mult 0 and a bias-less layer",
    "regularization": "L1 on every solver type, sign(0) of zero weights, odd multipliers, unknown types Caffe never reads",
    "clipping": "clip_gradients active/inactive/0/negative, with decay and iter_size, 33/1073/5120-element blobs, NaN/Inf/huge norms",
    "iter_size": "iter_size 2 and 3 (3: the rounded reciprocal 1/3 is not exact) on every solver type",
    "shapes": "1x1 blobs, 33 and 1073 elements, all layers without bias, non-power-of-two multipliers",
    "lr-edge": "exact step boundaries, multistep unsorted/repeated/zero/empty stepvalues, poly's last iteration, exp gamma 0/1, "
               "inv gamma/power 0, saturated and overflowing sigmoid, base_lr 0 and negative, gamma unused by fixed/poly",
    "gradients": "zero, subnormal, huge, NaN and Inf gradients on every solver type",
    "momentum": "momentum 0 (BLAS sscal(0) quirk with Inf), Adam with the proto default beta1 = 0, proto defaults of "
                "momentum2/delta/rms_decay, rms_decay 0",
    "epsilon": "large delta (where eps placement shows), delta 0",
    "resume": "runs resumed mid-way from a snapshot (multistep current_step restored, Adam's t, iter_size rows)",
    "deprecated": "the deprecated solver_type enum, upgraded by Caffe",
    "rejected": "settings real Caffe refuses, with its fatal line",
}

#: The fixtures' three layers: bias with lr_mult 2/decay_mult 0, a bias-less layer with lr_mult 0.5/decay_mult 2,
#: and a layer whose bias has lr_mult 0 and decay_mult 1.
DEFAULT_LAYERS = "7x3,5x2:nobias:lr_w=0.5:decay_w=2.0,3x4:lr_w=1.5:lr_b=0:decay_b=1"
#: Iterations of an ordinary case (a refusal needs fewer).
DEFAULT_ITERS = 12


@dataclass(frozen=True, eq=False)
class Case:
    """One real-Caffe run of the corpus.

    ``solver``: ``SolverParameter`` fields by Caffe's names, ``max_iter``
    included (the number of iterations). ``layers``: the injection net
    (``harness.oracle.parse_layers`` spec). ``gradients``: ``GradientSpec``
    keyword arguments (``special``, ``rate``, ``positions``); empty = plain
    normal rows. ``seed``: the generator's (and Caffe's ``random_seed``).
    ``blas``: the builds it is recorded with. ``resume_at``: also run the
    continuation from ``_iter_K`` (the golden is the continuation).
    ``init_set``: ``(blob, flat index or "*", value)`` overrides of the
    generated initial weights (exact zeros, ``-0.0``). ``solver_edits``:
    ``(old, new)`` text replacements in the capture's solver.prototxt, for
    settings the oracle's dict cannot express (``solver_type``,
    ``solver_mode``); the edited solver is re-run with
    ``harness.oracle.capture_like``. ``refused``: ``None`` when Caffe runs
    it, else ``"start"``/``"first-update"``: :func:`build` fails if real
    Caffe disagrees. ``why``: one line for the docs and failure messages.
    """

    id: str
    family: str
    solver: Mapping[str, Any]
    layers: str = DEFAULT_LAYERS
    gradients: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    blas: tuple[str, ...] = ("openblas",)
    resume_at: int | None = None
    init_set: tuple[tuple[str, Any, float], ...] = ()
    solver_edits: tuple[tuple[str, str], ...] = ()
    refused: str | None = None
    why: str = ""

    @property
    def iters(self) -> int:
        """The number of iterations (``max_iter``)."""
        return int(self.solver["max_iter"])

    def golden_path(self, blas: str) -> str:
        """``<blas>/<id>`` (or ``rejected/<id>``), relative to the corpus root."""
        return f"{REJECTED}/{self.id}" if self.refused else f"{blas}/{self.id}"

    def trace_name(self, blas: str) -> str:
        """The trace's name: the case id (the BLAS is in the path and in ``provenance.blas``)."""
        return self.id


# =============================================================================
# Building blocks of the table
# =============================================================================
#: per solver type: its own settings (besides lr_policy) in the grid
_TYPE_BASE = {
    "SGD": {"base_lr": 0.02, "momentum": 0.9, "weight_decay": 0.005},
    "Nesterov": {"base_lr": 0.02, "momentum": 0.9, "weight_decay": 0.005},
    "AdaGrad": {"base_lr": 0.05, "weight_decay": 0.005},
    "RMSProp": {"base_lr": 0.01, "rms_decay": 0.95, "weight_decay": 0.005},
    "AdaDelta": {"base_lr": 0.5, "momentum": 0.95, "delta": 1e-6, "weight_decay": 0.005},
    "Adam": {"base_lr": 0.02, "momentum": 0.9, "momentum2": 0.999, "delta": 1e-8, "weight_decay": 0.005},
}
#: per lr policy: its settings in the grid (12 iterations: step boundaries at 4 and 8, multistep at 3, 7, 10)
_POLICY = {
    "fixed": {},
    "step": {"gamma": 0.5, "stepsize": 4},
    "exp": {"gamma": 0.9},
    "inv": {"gamma": 0.1, "power": 0.75},
    "multistep": {"gamma": 0.5, "stepvalue": [3, 7, 10]},
    "poly": {"power": 1.5},
    "sigmoid": {"gamma": 0.5, "stepsize": 6},
}
_TYPES = tuple(_TYPE_BASE)
_ALL_BLAS = BLAS_BUILDS


def _seed(case_id: str) -> int:
    """A case's seed: fixed by its id (CRC-32, so it never depends on the table's order)."""
    return zlib.crc32(case_id.encode()) % 100_000 + 1


def _solver(stype: str, policy: str | None, iters: int = DEFAULT_ITERS, **over) -> dict:
    """Grid settings of ``stype`` under ``policy``, with ``over`` applied (``None`` removes a field)."""
    s: dict[str, Any] = {"type": stype, **_TYPE_BASE[stype]}
    if policy is not None:
        s["lr_policy"] = policy
        s.update(_POLICY[policy])
    s["max_iter"] = iters
    for k, v in over.items():
        if v is None:
            s.pop(k, None)
        else:
            s[k] = v
    return s


def _c(case_id: str, family: str, solver: Mapping, *, why: str, **kw) -> Case:
    return Case(id=case_id, family=family, solver=dict(solver), seed=kw.pop("seed", _seed(case_id)), why=why, **kw)


def _nan_inf_at(iter_: int) -> dict:
    """NaN and Inf placed from iteration ``iter_`` on (earlier iterations stay clean)."""
    return {"positions": (
        {"iter": iter_, "layer": 0, "d": 2, "kind": "nan"},
        {"iter": iter_ + 1, "layer": 1, "d": 0, "kind": "inf"},
        {"iter": iter_ + 2, "layer": 2, "d": 1, "kind": "inf"},
    )}


def _table() -> tuple[Case, ...]:
    cases: list[Case] = []
    add = cases.append
    low = {t: t.lower() for t in _TYPES}

    # --- grid: 6 solver types x 7 lr policies ------------------------------------------------
    for t in _TYPES:
        for p in _POLICY:
            blas = _ALL_BLAS if (p == "step" or t == "SGD" or (t == "Adam" and p in ("inv", "poly", "sigmoid"))) else ("openblas",)
            add(_c(f"{low[t]}-{p}", "grid", _solver(t, p), blas=blas,
                   why=f"{t} under {p}: L2 decay, lr_mult 0 bias, decay_mult 0/2, a bias-less layer"))

    # --- regularization --------------------------------------------------------------------------
    for t in _TYPES:
        add(_c(f"{low[t]}-l1", "regularization", _solver(t, "step", regularization_type="L1", weight_decay=0.02),
               blas=_ALL_BLAS if t in ("SGD", "Adam") else ("openblas",), why=f"{t} with L1 decay (sign(w), exact saxpy)"))
    add(_c("sgd-l1-zero-weights", "regularization", _solver("SGD", "fixed", regularization_type="L1", weight_decay=0.05),
           init_set=(("ip0/0", 0, 0.0), ("ip0/0", 4, -0.0), ("ip0/0", 9, 0.0), ("ip2/0", "*", 0.0)),
           why="L1 where weights are exactly 0 or -0: Caffe's sign(0) is 0"))
    add(_c("adagrad-l1-frozen-zero", "regularization",
           _solver("AdaGrad", "fixed", regularization_type="L1", weight_decay=0.05),
           layers="6x3:lr_w=0:lr_b=0:decay_b=1,4x2", init_set=(("ip0/0", "*", 0.0), ("ip0/1", 1, 0.0), ("ip0/1", 2, -0.0)),
           why="L1 on frozen (lr_mult 0) zero weights: the history sees sign(0) = 0 every iteration"))
    add(_c("rmsprop-l1-frozen", "regularization", _solver("RMSProp", "step", regularization_type="L1", weight_decay=0.05),
           layers="6x3:lr_w=0:lr_b=0:decay_b=1,4x2", why="L1 decay reaches frozen blobs and moves RMSProp's history"))
    add(_c("adam-l2-frozen", "regularization", _solver("Adam", "multistep", weight_decay=0.05),
           layers="6x3:lr_w=0:lr_b=0:decay_b=1,4x2", why="L2 decay on lr_mult 0 blobs still moves Adam's m and v"))
    add(_c("sgd-decay-mults", "regularization", _solver("SGD", "inv", weight_decay=0.01),
           layers="6x3:lr_w=1.7:decay_w=0.3:lr_b=0.6:decay_b=1.5,5x2:nobias:lr_w=3:decay_w=0",
           why="local_decay = fl(weight_decay*decay_mult) and local_rate = fl(rate*lr_mult) with inexact products"))
    add(_c("nesterov-decay-large", "regularization", _solver("Nesterov", "exp", weight_decay=0.5),
           why="decay dominating the gradient: where the decay term enters the update shows"))
    add(_c("sgd-no-decay", "regularization", _solver("SGD", "step", weight_decay=None), why="weight_decay unset (0): no Regularize"))
    add(_c("sgd-regtype-unknown-no-decay", "regularization",
           _solver("SGD", "step", regularization_type="L3", weight_decay=None),
           why="an unknown regularization_type is never read when weight_decay is 0: Caffe runs"))
    add(_c("adam-regtype-unknown-decay-mult-0", "regularization",
           _solver("Adam", "fixed", regularization_type="L3", weight_decay=0.01),
           layers="7x3:decay_w=0,5x2:nobias:decay_w=0",
           why="weight_decay set but every decay_mult 0: local_decay 0 skips the type check, Caffe runs"))

    # --- clipping ---------------------------------------------------------------------------------
    add(_c("sgd-clip-active", "clipping", _solver("SGD", "step", clip_gradients=1.0), blas=_ALL_BLAS,
           why="clip_gradients below the norm every iteration: sumsq by sdot, sqrtf, fl(clip/norm), sscal"))
    add(_c("sgd-clip-inactive", "clipping", _solver("SGD", "step", clip_gradients=1000.0),
           why="clip_gradients above the norm: no scaling (the comparison is strict)"))
    add(_c("sgd-clip-zero", "clipping", _solver("SGD", "fixed", clip_gradients=0.0), blas=_ALL_BLAS,
           why="clip_gradients 0 scales every gradient by 0 (sscal(0): NaN-free zeros in OpenBLAS)"))
    add(_c("sgd-clip-zero-zero-grads", "clipping", _solver("SGD", "fixed", clip_gradients=0.0),
           gradients={"special": ("zeros",), "rate": 1.0},
           why="clip 0 with all-zero gradients: norm 0 is not > 0, no scaling"))
    add(_c("sgd-clip-negative", "clipping", _solver("SGD", "fixed", clip_gradients=-0.5),
           why="any negative clip_gradients (not only -1) disables clipping"))
    for t in _TYPES[1:]:
        add(_c(f"{low[t]}-clip", "clipping", _solver(t, "multistep" if t != "Adam" else "poly", clip_gradients=0.8),
               blas=_ALL_BLAS, why=f"{t} with active clipping"))
    add(_c("sgd-clip-itersize3", "clipping", _solver("SGD", "step", clip_gradients=1.5, iter_size=3), blas=_ALL_BLAS,
           why="clipping sees the sum of the iter_size passes, before Normalize (#6199)"))
    add(_c("adam-clip-itersize2", "clipping", _solver("Adam", "inv", clip_gradients=1.0, iter_size=2),
           why="Adam: clip the accumulated sum, then scale by 1/iter_size"))
    add(_c("sgd-clip-decay", "clipping", _solver("SGD", "fixed", clip_gradients=0.5, weight_decay=0.2),
           why="clipping happens before weight decay is added (decay is not clipped)"))
    add(_c("sgd-clip-33", "clipping", _solver("SGD", "fixed", clip_gradients=1.0, momentum=0.5),
           layers="11x3:nobias", blas=_ALL_BLAS, why="one 33-element blob: OpenBLAS sdot's 32-block plus a 1-element tail"))
    add(_c("sgd-clip-1073", "clipping", _solver("SGD", "step", iters=8, clip_gradients=2.0),
           layers="37x29,5x2:nobias", blas=_ALL_BLAS,
           why="1073- and 29-element blobs: sdot blocking, tails and the summation order matter for the norm"))
    add(_c("adam-clip-5120", "clipping", _solver("Adam", "fixed", iters=8, clip_gradients=5.0),
           layers="64x80,33x1:nobias", blas=_ALL_BLAS, why="5120-element blob: long sdot, every BLAS's own order"))
    add(_c("rmsprop-clip-1073", "clipping", _solver("RMSProp", "fixed", iters=8, clip_gradients=2.0),
           layers="37x29:nobias", blas=_ALL_BLAS, why="RMSProp after clipping a 1073-element blob"))
    add(_c("sgd-clip-nan", "clipping", _solver("SGD", "fixed", clip_gradients=1.0), gradients={"positions": ({"iter": 4, "layer": 0, "d": 2, "kind": "nan"},)}, blas=_ALL_BLAS,
           why="a NaN gradient makes the norm NaN: NaN > clip is false, so nothing is scaled"))
    add(_c("sgd-clip-inf", "clipping", _solver("SGD", "fixed", clip_gradients=1.0),
           gradients={"positions": ({"iter": 3, "layer": 1, "d": 1, "kind": "inf"},)}, blas=_ALL_BLAS,
           why="an Inf gradient: norm Inf, scale clip/Inf = 0, then 0*Inf (BLAS-dependent sscal(0))"))
    add(_c("sgd-clip-huge", "clipping", _solver("SGD", "fixed", clip_gradients=1.0),
           gradients={"positions": ({"iter": 2, "layer": 0, "d": 3, "kind": "huge"},)}, blas=_ALL_BLAS,
           why="a 2^120 gradient: sumsq overflows to Inf, scale 0 zeroes every finite gradient"))

    # --- iter_size ----------------------------------------------------------------------------------
    for t in _TYPES:
        add(_c(f"{low[t]}-itersize3", "iter_size", _solver(t, "step", iter_size=3),
               blas=_ALL_BLAS if t in ("SGD", "Adam", "AdaGrad") else ("openblas",),
               why=f"{t}: three passes summed in order, then scaled by fl(1/3) (not divided)"))
    add(_c("sgd-itersize2", "iter_size", _solver("SGD", "multistep", iter_size=2), why="iter_size 2: exact 1/2"))
    add(_c("adadelta-itersize2", "iter_size", _solver("AdaDelta", "fixed", iter_size=2), why="AdaDelta with iter_size 2"))

    # --- shapes and multipliers ---------------------------------------------------------------------
    add(_c("sgd-shape-1x1", "shapes", _solver("SGD", "step"), layers="1x1", why="the smallest blobs: a 1x1 weight and a 1-bias"))
    add(_c("adam-shape-1x1-nobias", "shapes", _solver("Adam", "fixed"), layers="1x1:nobias,1x1:nobias",
           why="two scalar-sized blobs, no bias"))
    add(_c("sgd-nobias", "shapes", _solver("SGD", "inv"), layers="7x3:nobias,5x2:nobias,3x4:nobias",
           why="layers without bias only"))
    add(_c("rmsprop-shape-33", "shapes", _solver("RMSProp", "inv"), layers="33x1,11x3:nobias", why="33-element blobs"))
    add(_c("adagrad-shape-1073", "shapes", _solver("AdaGrad", "fixed", iters=8), layers="37x29",
           why="a 1073-element blob through AdaGrad's powf path"))
    add(_c("sgd-lr-mult-odd", "shapes", _solver("SGD", "fixed", base_lr=0.03),
           layers="7x3:lr_w=0.3:lr_b=1.1,5x2:nobias:lr_w=7", why="lr_mult 0.3, 1.1 and 7: local_rate rounds"))
    add(_c("adam-lr-mult-0-all", "shapes", _solver("Adam", "fixed"), layers="7x3:lr_w=0:lr_b=0,5x2:nobias:lr_w=0",
           why="every blob frozen (lr_mult 0): params stay, decay still moves the history"))

    # --- lr policy edge cases -----------------------------------------------------------------------
    edge = [
        ("sgd-step-size1", _solver("SGD", "step", gamma=0.9, stepsize=1), "stepsize 1: a new step every iteration"),
        ("sgd-step-boundary", _solver("SGD", "step", gamma=0.5, stepsize=6), "stepsize 6 of 12: the boundary iteration itself"),
        ("sgd-step-size-maxiter", _solver("SGD", "step", gamma=0.5, stepsize=12), "stepsize = max_iter: never steps"),
        ("sgd-step-gamma0", _solver("SGD", "step", gamma=0.0, stepsize=3), "gamma 0: pow(0, 0) = 1 then rate 0"),
        ("sgd-step-gamma2", _solver("SGD", "step", gamma=2.0, stepsize=4), "gamma > 1: a growing rate"),
        ("sgd-multistep-unsorted", _solver("SGD", "multistep", stepvalue=[6, 2, 9]),
         "unsorted stepvalues: Caffe only compares with the next one, at most one step per iteration"),
        ("sgd-multistep-repeated", _solver("SGD", "multistep", stepvalue=[3, 3, 5]),
         "repeated stepvalue: two steps on consecutive iterations, never two at once"),
        ("adam-multistep-repeated", _solver("Adam", "multistep", stepvalue=[2, 2, 2, 6]),
         "Adam with a stepvalue repeated three times"),
        ("sgd-multistep-zero", _solver("SGD", "multistep", stepvalue=[0, 0, 4]), "stepvalue 0: steps at iterations 0 and 1"),
        ("sgd-multistep-empty", _solver("SGD", "multistep", stepvalue=None), "no stepvalue: multistep is fixed"),
        ("sgd-multistep-beyond", _solver("SGD", "multistep", stepvalue=[5, 100]), "a stepvalue past max_iter"),
        ("sgd-multistep-gamma0", _solver("SGD", "multistep", gamma=0.0, stepvalue=[4]), "multistep to rate 0"),
        ("sgd-poly-power-half", _solver("SGD", "poly", power=0.5), "poly with power 0.5 up to the last iteration (1/12)^0.5"),
        ("sgd-poly-power0", _solver("SGD", "poly", power=0.0), "poly with power 0: powf(x, 0) = 1"),
        ("sgd-poly-power-negative", _solver("SGD", "poly", power=-0.5), "poly with a negative power: the rate grows"),
        ("adam-poly-power3", _solver("Adam", "poly", iters=16, power=3.0), "poly's last iterations: tiny rates"),
        ("sgd-exp-gamma0", _solver("SGD", "exp", gamma=0.0), "exp with gamma 0: base_lr, then 0"),
        ("sgd-exp-gamma1", _solver("SGD", "exp", gamma=1.0), "exp with gamma 1: constant"),
        ("adam-exp-gamma0", _solver("Adam", "exp", gamma=0.0), "Adam with a zero rate after iteration 0"),
        ("sgd-inv-gamma0", _solver("SGD", "inv", gamma=0.0), "inv with gamma 0: constant"),
        ("sgd-inv-power0", _solver("SGD", "inv", power=0.0), "inv with power 0: powf(x, -0) = 1"),
        ("sgd-sigmoid-saturated", _solver("SGD", "sigmoid", gamma=50.0, stepsize=6),
         "sigmoid far from stepsize: exactly 0 or base_lr"),
        ("sgd-sigmoid-overflow", _solver("SGD", "sigmoid", gamma=100.0, stepsize=6),
         "expf overflows to Inf: 1/(1+Inf) = 0"),
        ("adam-sigmoid-saturated", _solver("Adam", "sigmoid", gamma=20.0, stepsize=5), "Adam under a saturated sigmoid"),
        ("sgd-base-lr-zero", _solver("SGD", "step", base_lr=0.0), "base_lr 0: no parameter moves, decay still reaches history"),
        ("sgd-base-lr-negative", _solver("SGD", "step", base_lr=-0.01), "a negative base_lr (no check in Caffe)"),
        ("sgd-fixed-gamma-negative", _solver("SGD", "fixed", gamma=-0.5, stepsize=0),
         "fixed ignores gamma and stepsize: no check fires"),
        ("sgd-poly-gamma-negative", _solver("SGD", "poly", gamma=-0.5), "poly ignores gamma: no check fires"),
    ]
    for cid, s, why in edge:
        add(_c(cid, "lr-edge", s, why=why))

    # --- special gradients --------------------------------------------------------------------------
    for t in _TYPES:
        add(_c(f"{low[t]}-grad-zeros-subnormal", "gradients", _solver(t, "step"),
               gradients={"special": ("zeros", "subnormal"), "rate": 0.2},
               blas=_ALL_BLAS if t == "AdaGrad" else ("openblas",),
               why=f"{t} with zero and subnormal gradients (zero bias gradients too)"))
        add(_c(f"{low[t]}-grad-huge", "gradients", _solver(t, "fixed"), gradients={"special": ("huge",), "rate": 0.08},
               why=f"{t} with 2^100..2^125 gradients: overflow in squares and products"))
        add(_c(f"{low[t]}-grad-nan-inf", "gradients", _solver(t, "fixed"), gradients=_nan_inf_at(5),
               blas=_ALL_BLAS if t in ("SGD", "Adam") else ("openblas",),
               why=f"{t} with NaN and Inf from iteration 5 on"))
    add(_c("sgd-grad-all-zero", "gradients", _solver("SGD", "step"), gradients={"special": ("zeros",), "rate": 1.0},
           why="every gradient 0: only decay and momentum move"))

    # --- momentum -----------------------------------------------------------------------------------
    add(_c("sgd-momentum0", "momentum", _solver("SGD", "step", momentum=None), why="SGD without momentum"))
    add(_c("nesterov-momentum0", "momentum", _solver("Nesterov", "step", momentum=None), blas=_ALL_BLAS,
           why="Nesterov without momentum"))
    add(_c("sgd-momentum0-inf", "momentum", _solver("SGD", "fixed", momentum=None),
           gradients={"positions": ({"iter": 3, "layer": 0, "d": 1, "kind": "inf"},)}, blas=_ALL_BLAS,
           why="momentum 0 then an Inf: sscal(0, h) zero-fills in OpenBLAS, gives NaN in reference BLAS/ATLAS"))
    add(_c("adam-beta1-default", "momentum", _solver("Adam", "step", momentum=None), blas=_ALL_BLAS,
           why="Adam with momentum unset: beta1 = 0 (the proto default), not 0.9"))
    add(_c("adam-defaults", "momentum", _solver("Adam", "fixed", momentum=None, momentum2=None, delta=None),
           why="Adam with momentum, momentum2 and delta all at proto defaults (0, 0.999, 1e-8)"))
    add(_c("rmsprop-decay-default", "momentum", _solver("RMSProp", "fixed", rms_decay=None), why="rms_decay unset: 0.99"))
    add(_c("rmsprop-decay0", "momentum", _solver("RMSProp", "fixed", rms_decay=0.0), why="rms_decay 0: history = g^2"))
    add(_c("adadelta-momentum0", "momentum", _solver("AdaDelta", "fixed", momentum=None), why="AdaDelta with decay 0"))
    add(_c("sgd-momentum-high", "momentum", _solver("SGD", "multistep", momentum=0.999),
           why="momentum 0.999: history dominates, lr changes phase in through the history"))

    # --- epsilon ------------------------------------------------------------------------------------
    add(_c("adam-delta-large", "epsilon", _solver("Adam", "step", delta=0.1), blas=_ALL_BLAS,
           why="Adam's eps-hat 0.1: not bias-corrected, so its placement shows"))
    add(_c("rmsprop-delta-large", "epsilon", _solver("RMSProp", "step", delta=0.1), why="RMSProp's delta outside the sqrt"))
    add(_c("adagrad-delta-large", "epsilon", _solver("AdaGrad", "step", delta=0.1), why="AdaGrad's delta outside the sqrt"))
    add(_c("adadelta-delta-large", "epsilon", _solver("AdaDelta", "step", delta=0.1), why="AdaDelta's delta in both roots"))
    add(_c("adagrad-delta0", "epsilon", _solver("AdaGrad", "fixed", delta=0.0),
           gradients={"special": ("zeros",), "rate": 0.3}, why="delta 0 with zero gradients: 0/0 = NaN"))

    # --- resumed runs -------------------------------------------------------------------------------
    add(_c("sgd-multistep-resume", "resume", _solver("SGD", "multistep", stepvalue=[3, 5, 8]), resume_at=5, blas=_ALL_BLAS,
           why="resumed at 5 = a stepvalue: current_step restored from the solverstate"))
    add(_c("sgd-multistep-resume-repeated", "resume", _solver("SGD", "multistep", stepvalue=[4, 4, 9]), resume_at=4,
           why="resumed between two equal stepvalues"))
    add(_c("adam-multistep-resume", "resume", _solver("Adam", "multistep", iter_size=2), resume_at=6,
           why="Adam resumed: t = iter + 1 continues, iter_size rows restart at K*iter_size"))
    add(_c("nesterov-step-resume", "resume", _solver("Nesterov", "step"), resume_at=3, why="Nesterov resumed inside a step"))

    # --- deprecated solver_type ---------------------------------------------------------------------
    add(_c("adam-solver-type-enum", "deprecated", _solver("Adam", "step"),
           solver_edits=(('type: "Adam"', "solver_type: ADAM"),),
           why="solver_type: ADAM alone is upgraded to type Adam"))
    add(_c("nesterov-solver-type-enum", "deprecated", _solver("Nesterov", "inv"),
           solver_edits=(('type: "Nesterov"', "solver_type: NESTEROV"),),
           why="solver_type: NESTEROV alone is upgraded to type Nesterov"))

    # --- refusals -----------------------------------------------------------------------------------
    def rej(cid, solver, when, why, **kw):
        add(_c(cid, "rejected", {**solver, "max_iter": 2}, refused=when, why=why, **kw))

    sgd = _solver("SGD", "step")
    rej("unknown-type", {**sgd, "type": "Foo"}, "start", "an unregistered solver type")
    rej("unknown-type-lowercase", {**sgd, "type": "sgd"}, "start", "solver types are case-sensitive")
    rej("unknown-lr-policy", {**sgd, "lr_policy": "bogus"}, "first-update", "an unknown lr_policy dies at the first update")
    rej("lr-policy-case", {**sgd, "lr_policy": "Step"}, "first-update", "lr policies are case-sensitive")
    rej("lr-policy-unset", _solver("SGD", None), "first-update", "no lr_policy: the empty policy is unknown")
    rej("adam-unknown-lr-policy", {**_solver("Adam", "step"), "lr_policy": "cosine"}, "first-update",
        "the same refusal from an adaptive solver")
    rej("regtype-unknown", {**sgd, "regularization_type": "L3"}, "first-update", "an unknown regularization with decay")
    rej("regtype-lowercase", {**sgd, "regularization_type": "l2"}, "first-update", "regularization types are case-sensitive")
    rej("step-stepsize0", {**sgd, "stepsize": 0}, "first-update", "step with stepsize 0 (CHECK_GT, else SIGFPE)")
    rej("step-stepsize-negative", {**sgd, "stepsize": -3}, "first-update", "step with a negative stepsize")
    rej("step-stepsize0-gamma-negative", {**sgd, "stepsize": 0, "gamma": -0.5}, "first-update",
        "both step checks fail: which one Caffe reports")
    rej("sigmoid-stepsize0", _solver("SGD", "sigmoid", stepsize=0), "first-update", "sigmoid with stepsize 0")
    rej("sigmoid-stepsize0-gamma-negative", _solver("SGD", "sigmoid", stepsize=0, gamma=-0.5), "first-update",
        "both sigmoid checks fail: which one Caffe reports")
    for p in ("step", "exp", "inv", "multistep", "sigmoid"):
        rej(f"{p}-gamma-negative", _solver("SGD", p, gamma=-0.5), "first-update", f"{p} with a negative gamma")
    rej("multistep-gamma-negative-at-0", _solver("Adam", "multistep", gamma=-0.5, stepvalue=[0, 5]), "first-update",
        "multistep advances current_step (and logs it) before the gamma check")
    rej("adagrad-momentum", _solver("AdaGrad", "fixed", momentum=0.9), "start", "AdaGrad refuses momentum")
    rej("rmsprop-momentum", _solver("RMSProp", "fixed", momentum=0.5), "start", "RMSProp refuses momentum")
    rej("rmsprop-momentum-rms-decay1", _solver("RMSProp", "fixed", momentum=0.5, rms_decay=1.0), "start",
        "both RMSProp checks fail: momentum is checked first")
    rej("rmsprop-rms-decay1", _solver("RMSProp", "fixed", rms_decay=1.0), "start", "rms_decay must be < 1")
    rej("rmsprop-rms-decay-large", _solver("RMSProp", "fixed", rms_decay=1.5), "start", "rms_decay 1.5")
    rej("rmsprop-rms-decay-negative", _solver("RMSProp", "fixed", rms_decay=-0.1), "start", "rms_decay must be >= 0")
    rej("average-loss0", {**sgd, "average_loss": 0}, "start", "average_loss must be >= 1")
    rej("average-loss-negative", {**sgd, "average_loss": -2}, "start", "a negative average_loss")
    rej("type-and-solver-type", sgd, "start", "type and the deprecated solver_type both set",
        solver_edits=(('type: "SGD"', 'type: "SGD"\nsolver_type: ADAM'),))
    rej("type-and-solver-type-same", _solver("Adam", "step"), "start", "both set even when they agree",
        solver_edits=(('type: "Adam"', 'type: "Adam"\nsolver_type: ADAM'),))
    rej("gpu-mode", sgd, "start", "solver_mode GPU in the CPU-only build",
        solver_edits=(("solver_mode: CPU", "solver_mode: GPU"),))
    return tuple(cases)


#: The corpus, in table order.
CASES: tuple[Case, ...] = _table()


# =============================================================================
# Looking cases up
# =============================================================================
def case(case_id: str) -> Case:
    """The case named ``case_id``; ``InputError`` listing near names when there is none."""
    for c in CASES:
        if c.id == case_id:
            return c
    near = [c.id for c in CASES if case_id.split("-")[0] in c.id][:8]
    raise InputError(None, f"no corpus case {case_id!r}" + (f" (similar: {', '.join(near)})" if near else ""))


def golden_entries(cases: Iterable[Case] | None = None) -> list[tuple[Case, str]]:
    """Every ``(case, blas)`` the corpus records, in table order (refusals: OpenBLAS only)."""
    out = []
    for c in CASES if cases is None else cases:
        for b in (("openblas",) if c.refused else c.blas):
            out.append((c, b))
    return out


def select(patterns: Iterable[str] | str | None = None) -> list[tuple[Case, str]]:
    """The ``(case, blas)`` entries matching any of ``patterns`` (shell globs, comma-separated allowed).

    A pattern matches a case id (``adam-*``), a golden path (``atlas/*``,
    ``rejected/*``) or a family (``clipping``). No pattern: everything.
    A pattern that matches nothing is an ``InputError``.
    """
    entries = golden_entries()
    if patterns is None:
        return entries
    if isinstance(patterns, str):
        patterns = [patterns]
    pats = [p.strip() for text in patterns for p in text.split(",") if p.strip()]
    if not pats:
        return entries
    chosen = []
    for pat in pats:
        hit = [(c, b) for c, b in entries
               if fnmatch.fnmatchcase(c.id, pat) or fnmatch.fnmatchcase(c.golden_path(b), pat) or c.family == pat]
        if not hit:
            raise InputError(None, f"--only {pat!r} matches no corpus case (ids like sgd-step, paths like atlas/*, families like clipping)")
        chosen += [e for e in hit if e not in chosen]
    return [e for e in entries if e in chosen]


# =============================================================================
# Building one golden
# =============================================================================
def _gradient_spec(c: Case):
    from .oracle import GradientSpec

    return GradientSpec(**dict(c.gradients))


def initial_weights(c: Case) -> dict[str, np.ndarray] | None:
    """The case's initial weights when it overrides some (``init_set``), else ``None`` (the generator's own)."""
    if not c.init_set:
        return None
    from .oracle import generate_injection

    iter_size = int(c.solver.get("iter_size", 1))
    _, init = generate_injection(c.layers, c.iters, iter_size, _gradient_spec(c), seed=c.seed)
    for blob, index, value in c.init_set:
        if blob not in init:
            raise InputError("harness/corpus.py", f"case {c.id}: init_set names blob {blob!r}, not one of {', '.join(init)}")
        a = init[blob].reshape(-1)
        if index == "*":
            a[:] = np.float32(value)
        else:
            a[int(index)] = np.float32(value)
    return init


def _apply_edits(text: str, edits, where: str) -> str:
    for old, new in edits:
        n = text.count(old)
        if n != 1:
            raise InputError("harness/corpus.py", f"{where}: solver edit {old!r} occurs {n} times in the capture's solver.prototxt, expected once")
        text = text.replace(old, new)
    return text


def _normalize(trace, c: Case, blas: str):
    """Make the trace a pure function of the case and the machine: no clock, no temporary paths."""
    trace.name = c.trace_name(blas)
    trace.source = f"corpus:{c.golden_path(blas)}"
    trace.config = dataclasses.replace(trace.config, source=f"harness/corpus.py:{c.id}")
    prov = dict(trace.provenance)
    prov["date"] = None  # regenerations must be byte-identical; the commit of golden/ dates it
    prov["capture"] = c.id
    prov["corpus"] = {"case": c.id, "family": c.family, "definition": "harness/corpus.py", "tool": "tools/regen-golden"}
    if c.solver_edits:
        prov["solver_edits"] = [list(e) for e in c.solver_edits]
    trace.provenance = prov
    return trace


def build(c: Case, blas: str, out_dir, *, install=None, keep_capture=None) -> Path:
    """Run real Caffe on case ``c`` with ``blas`` and write its golden trace to ``out_dir`` (replaced).

    The capture is made in a temporary folder (kept at ``keep_capture`` when
    given) and converted with ``load_capture``; provenance is normalized so
    the same case gives the same bytes on the same machine. Raises
    ``OracleUnavailable`` without real Caffe and ``InputError`` when Caffe's
    outcome contradicts the case (a refusal where the case expects a run, or
    the reverse, or refused at another stage).
    """
    from . import oracle
    from .io.capture import load_capture
    from .io.golden import write_golden

    if blas not in BLAS_BUILDS:
        raise InputError(None, f"unknown blas {blas!r}: expected one of {', '.join(BLAS_BUILDS)}")
    if c.solver_edits and c.resume_at is not None:
        raise InputError("harness/corpus.py", f"case {c.id}: solver_edits and resume_at cannot be combined")
    install = install or oracle.find_caffe()
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix=f"corpus-{c.id}-") as tmp:
        cap = Path(keep_capture) if keep_capture else Path(tmp) / "run" / c.id
        first = Path(tmp) / "first" / c.id if c.solver_edits else cap
        oracle.capture(dict(c.solver), c.layers, _gradient_spec(c), first, blas=blas, seed=c.seed,
                       resume_at=c.resume_at, init=initial_weights(c), install=install, force=True)
        if c.solver_edits:
            sp = first / "solver.prototxt"
            sp.write_text(_apply_edits(sp.read_text(), c.solver_edits, f"case {c.id}"))
            oracle.capture_like(first, cap, blas=blas, install=install, force=True)
        trace = load_capture(cap)
        if trace.refusal_when != c.refused:
            got = f"refused at {trace.refusal_when}: {trace.refusal}" if trace.refusal else "ran"
            want = f"refused at {c.refused}" if c.refused else "a run"
            raise InputError("harness/corpus.py", f"case {c.id} ({blas}): expected {want}, real Caffe {got}")
        write_golden(_normalize(trace, c, blas), out, overwrite=True)
    return out


# =============================================================================
# Comparing two corpus trees bit for bit
# =============================================================================
def trace_dirs(root) -> set[str]:
    """The golden trace folders under ``root``, relative (``openblas/sgd-step``)."""
    root = Path(root)
    if not root.is_dir():
        return set()
    return {str(Path(d).relative_to(root)) for d, _, files in os.walk(root) if "trace.json" in files or "SHA256SUMS" in files}


def _manifest_keys(a: bytes, b: bytes) -> list[str]:
    import json

    try:
        ja, jb = json.loads(a), json.loads(b)
    except ValueError:
        return ["(unparsable)"]
    keys = []
    for k in sorted(set(ja) | set(jb)):
        if ja.get(k) != jb.get(k):
            if k == "provenance" and isinstance(ja.get(k), dict) and isinstance(jb.get(k), dict):
                pa, pb = ja[k], jb[k]
                keys += [f"provenance.{p}" for p in sorted(set(pa) | set(pb)) if pa.get(p) != pb.get(p)]
            else:
                keys.append(k)
    return keys


#: Manifest fields that describe the machine a golden was recorded on, not what Caffe computed.
MACHINE_FIELDS = ("provenance.cpu", "provenance.cpu_flags")


def compare_trees(expected, got, paths: Iterable[str] | None = None, *, ignore: Iterable[str] = ()) -> list[str]:
    """Differences between two corpus trees, one line each (empty: identical bytes).

    ``paths``: the trace folders (``openblas/sgd-step``) to compare; default:
    every trace folder in either tree. Lists missing and extra traces and
    files, and for each differing file which one; for ``trace.json``, which
    manifest fields differ (``provenance.cpu`` alone means another machine).
    ``ignore``: manifest fields whose difference is not reported (e.g.
    :data:`MACHINE_FIELDS`); ``SHA256SUMS`` follows the files it lists and is
    never reported on its own.
    """
    ignore = set(ignore)
    expected, got = Path(expected), Path(got)
    rel = sorted(set(paths) if paths is not None else trace_dirs(expected) | trace_dirs(got))
    out = []
    for r in rel:
        a, b = expected / r, got / r
        if not a.is_dir():
            out.append(f"{r}: not in {expected} (new trace)")
            continue
        if not b.is_dir():
            out.append(f"{r}: missing from {got}")
            continue
        fa = {f.name for f in a.iterdir() if f.is_file()}
        fb = {f.name for f in b.iterdir() if f.is_file()}
        for n in sorted(fa - fb):
            out.append(f"{r}/{n}: missing from {got}")
        for n in sorted(fb - fa):
            out.append(f"{r}/{n}: not in {expected}")
        for n in sorted(fa & fb):
            x, y = (a / n).read_bytes(), (b / n).read_bytes()
            if x != y:
                if n == "trace.json":
                    keys = _manifest_keys(x, y)
                    if not keys or set(keys) - ignore:
                        out.append(f"{r}/{n}: differs in {', '.join(k for k in keys if k not in ignore) or 'formatting'}")
                elif n == "SHA256SUMS":
                    continue  # follows from the data files reported below
                else:
                    out.append(f"{r}/{n}: differs ({len(x)} vs {len(y)} bytes)")
    return out
