"""Hypothesis strategies for Caffe solvers: settings, nets, gradient streams, whole runs.

Public API in hypothesis's own style: plural-noun names, required arguments
positional, options keyword-only, every argument checked when the strategy
is built (``hypothesis.errors.InvalidArgument`` naming the argument and its
value). Every float a strategy draws is exactly representable in float32,
so it is the bit pattern Caffe reads from a prototxt.

>>> from hypothesis import given
>>> from harness import strategies as hs
>>> @given(hs.solver_parameters(solver_types=["SGD", "Nesterov"]))
... def test_something(config):
...     assert config.type in ("SGD", "Nesterov")

What the strategies draw:

``solver_parameters()``
    a :class:`~harness.config.SolverConfig` with its learnable blobs; with
    ``valid=True`` settings real Caffe 1.0 accepts (kept in ranges where 16
    iterations neither overflow nor stall), with ``valid=False`` settings it
    refuses, exactly one fault per config (see :data:`REFUSAL_KINDS`).
``solver_types()``, ``lr_policies()``
    Caffe's exact strings, or (``valid=False``) strings Caffe does not know.
``learnable_blobs()``
    the blobs of a stack of ``InnerProduct`` layers: weight ``(O, D)``,
    optional bias ``(O,)``, ``lr_mult``/``decay_mult`` from small exact sets.
``initial_weights(blobs)``
    starting data for those blobs.
``gradient_streams(blobs, iterations)``
    what the backward passes produce: a list of iterations, each a list of
    ``iter_size`` pass dicts ``{blob name: float32 array}``.
``injectable_gradient_streams(blobs, iterations)``
    the same shape, restricted to what the gradient-injection net of
    ``harness.oracle`` can make real Caffe produce: weight ``c[o]*x[d]``,
    bias ``c[o]``, ``c`` zero or a power of two in ±2^-3..2^3.
``solver_runs()``
    a whole run as a :class:`~harness.trace.Trace` holding only inputs
    (config, initial weights, gradients), ready for ``Reference`` or
    ``harness.oracle.capture``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Sequence

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

from .config import LR_POLICIES, REGULARIZATION_TYPES, SOLVER_TYPES, BlobSpec, SolverConfig, f32
from .trace import Iteration, Trace

__all__ = [
    "LR_MULTS",
    "DECAY_MULTS",
    "REFUSAL_KINDS",
    "START_REFUSALS",
    "UPDATE_REFUSALS",
    "solver_types",
    "lr_policies",
    "learnable_blobs",
    "solver_parameters",
    "initial_weights",
    "gradient_streams",
    "injectable_gradient_streams",
    "solver_runs",
]

#: ``lr_mult`` values drawn by default: Caffe's customary 1 (weights) and 2
#: (biases), frozen 0, and a few other exact float32 values.
LR_MULTS = (1.0, 2.0, 0.0, 0.5, 1.5, 10.0)
#: ``decay_mult`` values drawn by default: customary 1 (weights) and 0 (biases).
DECAY_MULTS = (1.0, 0.0, 0.5, 2.0)

#: Faults ``solver_parameters(valid=False)`` can plant, named by the
#: ``SolverParameter`` field that is wrong. Caffe refuses the first four
#: before the first iteration, the other four in the first ``ApplyUpdate``.
START_REFUSALS = ("type", "average_loss", "momentum", "rms_decay")
UPDATE_REFUSALS = ("lr_policy", "gamma", "stepsize", "regularization_type")
REFUSAL_KINDS = START_REFUSALS + UPDATE_REFUSALS

#: policies whose ``GetLearningRate`` checks ``gamma >= 0`` / ``stepsize > 0``
_GAMMA_CHECKED = ("step", "exp", "inv", "multistep", "sigmoid")
_STEPSIZE_CHECKED = ("step", "sigmoid")
#: solver types that check ``momentum == 0``
_NO_MOMENTUM = ("AdaGrad", "RMSProp")

#: misspellings and foreign names Caffe refuses (the registries are case-sensitive)
_NOT_SOLVER_TYPES = ("sgd", "Sgd", "nesterov", "ADAM", "Adadelta", "Adagrad", "RmsProp", "LBFGS", "AdamW", "")
_NOT_LR_POLICIES = ("", "Step", "FIXED", "Exp", "cosine", "plateau", "multifixed", "warmup", "linear", "steps")
_NOT_REGULARIZATION_TYPES = ("l2", "l1", "L3", "WD", "none", "")

#: gradient elements: finite, |g| <= 2^10, zeros and subnormals included
_GRAD_BOUND = 1024.0
#: initial weights: |w| <= 4
_WEIGHT_BOUND = 4.0
#: exponents of the injection multipliers c (harness.oracle uses the same range)
_C_EXP_MIN, _C_EXP_MAX = -3, 3
#: rows holding |x| below this get c >= 1 (x*2^-3 would round); above the other, c <= 1
_X_TINY = 2.0 ** -120
_X_HUGE = 2.0 ** 124


# ---------------------------------------------------------------------------
# argument checks: InvalidArgument naming the argument and its value
# ---------------------------------------------------------------------------
def _check_bool(name: str, value) -> None:
    if not isinstance(value, bool):
        raise InvalidArgument(f"{name}={value!r} must be True or False")


def _check_int(name: str, value, *, min_value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidArgument(f"{name}={value!r} must be an integer")
    if value < min_value:
        raise InvalidArgument(f"{name}={value!r} must be at least {min_value}")


def _check_names(name: str, value, known: Sequence[str], *, must_be_known: bool = True) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise InvalidArgument(f"{name}={value!r} must be a collection of strings, e.g. {tuple(known[:2])!r}")
    items = tuple(value)
    if not items:
        raise InvalidArgument(f"{name}={value!r} must not be empty")
    for v in items:
        if not isinstance(v, str):
            raise InvalidArgument(f"{name}={value!r}: {v!r} is not a string")
        if must_be_known and v not in known:
            raise InvalidArgument(f"{name}={value!r}: {v!r} is not one of Caffe's ({', '.join(known)})")
    return tuple(dict.fromkeys(items))


def _check_mults(name: str, value) -> tuple[float, ...]:
    if isinstance(value, str) or not isinstance(value, Collection) or not value:
        raise InvalidArgument(f"{name}={value!r} must be a non-empty collection of numbers")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v):
            raise InvalidArgument(f"{name}={value!r}: {v!r} is not a finite number")
        if float(np.float32(v)) != float(v):
            raise InvalidArgument(f"{name}={value!r}: {v!r} is not exactly representable in float32 "
                                  f"(the nearest float32 is {float(np.float32(v))!r})")
        out.append(float(v))
    return tuple(dict.fromkeys(out))


def _check_blobs(name: str, value, *, allow_strategy: bool = False, injectable: bool = False,
                 allow_empty: bool = False):
    """A tuple of BlobSpec with unique names (or a strategy, when allowed)."""
    if allow_strategy and isinstance(value, st.SearchStrategy):
        return value
    if allow_empty and isinstance(value, Sequence) and not isinstance(value, (str, bytes)) and len(value) == 0:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise InvalidArgument(f"{name}={value!r} must be a non-empty sequence of BlobSpec"
                              + (" (or a strategy drawing one)" if allow_strategy else ""))
    names = set()
    for b in value:
        if not isinstance(b, BlobSpec):
            raise InvalidArgument(f"{name}={value!r}: {b!r} is not a BlobSpec")
        if b.name in names:
            raise InvalidArgument(f"{name}={value!r}: blob name {b.name!r} appears twice")
        names.add(b.name)
        if any(isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1 for d in b.shape):
            raise InvalidArgument(f"{name}={value!r}: blob {b.name!r} has shape {b.shape!r}; dimensions must be positive integers")
    blobs = tuple(value)
    if injectable:
        _injection_layers(name, blobs)
    return blobs


def _injection_layers(name: str, blobs: tuple[BlobSpec, ...]) -> list[tuple[str, BlobSpec, BlobSpec | None]]:
    """Group blobs into InnerProduct layers: ``<layer>/0`` (O, D) and optional ``<layer>/1`` (O,)."""
    layers: dict[str, dict[int, BlobSpec]] = {}
    for b in blobs:
        if "/" not in b.name or not b.name.rsplit("/", 1)[1].isdigit():
            raise InvalidArgument(f"{name}: blob name {b.name!r} is not '<layer>/<index>'")
        layers.setdefault(b.layer, {})[b.index] = b
    out = []
    for layer, group in layers.items():
        w, bias = group.get(0), group.get(1)
        if w is None or len(w.shape) != 2 or set(group) - {0, 1}:
            raise InvalidArgument(f"{name}: layer {layer!r} is not an InnerProduct layer of the injection net "
                                  f"(needs {layer}/0 of shape (O, D) and optionally {layer}/1 of shape (O,), "
                                  f"got {sorted((b.name, b.shape) for b in group.values())!r})")
        if bias is not None and tuple(bias.shape) != (w.shape[0],):
            raise InvalidArgument(f"{name}: bias {bias.name!r} has shape {bias.shape!r}, the injection net needs "
                                  f"({w.shape[0]},) to match weight shape {w.shape!r}")
        out.append((layer, w, bias))
    return out


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------
def _unknown_names(known: Sequence[str], typos: Sequence[str]) -> st.SearchStrategy[str]:
    invented = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,11}\Z").filter(lambda s: s not in known)
    return st.one_of(st.sampled_from([t for t in typos if t not in known]), invented)


def solver_types(*, valid: bool = True) -> st.SearchStrategy[str]:
    """Solver type strings: Caffe's six (``valid=True``) or names its registry refuses.

    >>> solver_types().example() in SOLVER_TYPES
    True

    With ``valid=False``: misspellings (``"sgd"``, ``"Adagrad"``: the
    registry is case-sensitive), foreign names (``"LBFGS"``), ``""``, and
    invented identifiers.
    """
    _check_bool("valid", valid)
    if valid:
        return st.sampled_from(SOLVER_TYPES)
    return _unknown_names(SOLVER_TYPES, _NOT_SOLVER_TYPES)


def lr_policies(*, valid: bool = True) -> st.SearchStrategy[str]:
    """``lr_policy`` strings: Caffe's seven (``valid=True``) or ones it refuses.

    >>> lr_policies().example() in LR_POLICIES
    True

    With ``valid=False``: ``""`` (unset), wrong case (``"Step"``), policies
    of other forks (``"plateau"``, ``"multifixed"``) and invented
    identifiers. Caffe dies on them in the first update with
    ``Unknown learning rate policy: <name>``.
    """
    _check_bool("valid", valid)
    if valid:
        return st.sampled_from(LR_POLICIES)
    return _unknown_names(LR_POLICIES, _NOT_LR_POLICIES)


# ---------------------------------------------------------------------------
# blobs
# ---------------------------------------------------------------------------
def learnable_blobs(
    *,
    min_blobs: int = 1,
    max_blobs: int = 4,
    max_size: int = 32,
    lr_mults: Collection[float] = LR_MULTS,
    decay_mults: Collection[float] = DECAY_MULTS,
) -> st.SearchStrategy[tuple[BlobSpec, ...]]:
    """The learnable blobs of a stack of ``InnerProduct`` layers, in net order.

    Layer ``J`` is named ``ip<J>``; its weight ``ip<J>/0`` has shape
    ``(O, D)`` and its optional bias ``ip<J>/1`` shape ``(O,)`` -- the
    layout ``harness.oracle``'s injection net builds, so every draw can run
    in real Caffe. Between ``min_blobs`` and ``max_blobs`` blobs in all;
    ``max_size`` bounds the element count of each weight. ``lr_mult`` and
    ``decay_mult`` come from ``lr_mults`` / ``decay_mults`` (exact float32
    values; the defaults include 0, frozen and undecayed blobs).

    >>> blobs = learnable_blobs(max_blobs=2).example()
    >>> 1 <= len(blobs) <= 2 and blobs[0].name == "ip0/0"
    True
    """
    _check_int("min_blobs", min_blobs, min_value=1)
    _check_int("max_blobs", max_blobs, min_value=1)
    if max_blobs < min_blobs:
        raise InvalidArgument(f"max_blobs={max_blobs!r} must be at least min_blobs={min_blobs!r}")
    _check_int("max_size", max_size, min_value=1)
    lr_mults = _check_mults("lr_mults", lr_mults)
    decay_mults = _check_mults("decay_mults", decay_mults)

    @st.composite
    def draw_blobs(draw):
        total = draw(st.integers(min_blobs, max_blobs))
        out: list[BlobSpec] = []
        j = 0
        while len(out) < total:
            room = total - len(out)
            # a lone blob left to place must be a weight; otherwise maybe a bias too
            bias = room >= 2 and draw(st.booleans())
            o = draw(st.integers(1, max_size))
            d = draw(st.integers(1, max(1, max_size // o)))
            out.append(BlobSpec(f"ip{j}/0", (o, d), draw(st.sampled_from(lr_mults)), draw(st.sampled_from(decay_mults))))
            if bias:
                out.append(BlobSpec(f"ip{j}/1", (o,), draw(st.sampled_from(lr_mults)), draw(st.sampled_from(decay_mults))))
            j += 1
        return tuple(out)

    return draw_blobs()


# ---------------------------------------------------------------------------
# solver settings
# ---------------------------------------------------------------------------
def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    """float32 values in [lo, hi] (bounds rounded to float32), as Python floats."""
    return st.floats(f32(lo), f32(hi), width=32, allow_nan=False, allow_infinity=False)


def _normal_floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(f32(lo), f32(hi), width=32, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _possible_refusals(types, policies, blobs) -> tuple[str, ...]:
    kinds = ["type", "average_loss", "lr_policy"]
    if any(t in _NO_MOMENTUM for t in types):
        kinds.append("momentum")
    if "RMSProp" in types:
        kinds.append("rms_decay")
    if any(p in _GAMMA_CHECKED for p in policies):
        kinds.append("gamma")
    if any(p in _STEPSIZE_CHECKED for p in policies):
        kinds.append("stepsize")
    if not isinstance(blobs, tuple) or any(b.decay_mult != 0 for b in blobs):
        kinds.append("regularization_type")
    return tuple(k for k in REFUSAL_KINDS if k in kinds)


def solver_parameters(
    *,
    solver_types: Collection[str] = SOLVER_TYPES,
    lr_policies: Collection[str] = LR_POLICIES,
    valid: bool = True,
    blobs=None,
    min_iterations: int = 1,
    max_iterations: int = 16,
    max_iter_size: int = 2,
    clip: bool | None = None,
    regularization_types: Collection[str] = REGULARIZATION_TYPES,
    refusals: Collection[str] | None = None,
) -> st.SearchStrategy[SolverConfig]:
    """A ``SolverConfig`` (with its learnable blobs) drawn from Caffe's settings.

    ``solver_types`` / ``lr_policies``: the types and policies to draw from
    (Caffe's exact strings). ``blobs``: ``None`` draws them with
    :func:`learnable_blobs`, a sequence of ``BlobSpec`` fixes them (``()``:
    no net, for settings alone), a strategy draws them. ``max_iter`` is in ``min_iterations..max_iterations`` and
    ``iter_size`` in ``1..max_iter_size``. ``clip``: ``None`` sometimes sets
    ``clip_gradients`` (sometimes 0, which zeroes every gradient), ``True``
    always, ``False`` never.

    ``valid=True`` draws what real Caffe accepts, in ranges where a run
    stays meaningful: ``base_lr`` in [1e-4, 1], ``momentum`` up to 0.99,
    ``gamma`` in [0, 1] where it is checked (anything, even negative, for
    ``fixed`` and ``poly``, which never read it), ``stepsize`` and the
    sorted ``stepvalue`` within the run, ``power`` in [0, 2], ``delta`` in
    [1e-8, 1e-4], ``rms_decay`` in [0, 0.999], ``momentum2`` in
    [0.9, 0.9999], ``weight_decay`` 0 or up to 0.05.

    ``valid=False`` draws a config Caffe refuses, with exactly one fault
    from ``refusals`` (default: every kind of :data:`REFUSAL_KINDS` the
    types and policies allow): an unknown ``type``, ``average_loss < 1``,
    ``momentum != 0`` with AdaGrad/RMSProp, ``rms_decay`` outside [0, 1)
    with RMSProp (refused at start); an unknown ``lr_policy``, a negative
    ``gamma`` or ``stepsize <= 0`` where ``GetLearningRate`` checks them,
    an unknown ``regularization_type`` reached by a non-zero
    ``weight_decay * decay_mult`` (refused at the first update). The
    message Caffe prints is ``harness.config``'s first refusal.

    >>> cfg = solver_parameters(solver_types=["Adam"], lr_policies=["poly"]).example()
    >>> (cfg.type, cfg.lr_policy, cfg.max_iter >= 1)
    ('Adam', 'poly', True)
    """
    _check_bool("valid", valid)
    types = _check_names("solver_types", solver_types, SOLVER_TYPES)
    policies = _check_names("lr_policies", lr_policies, LR_POLICIES)
    regs = _check_names("regularization_types", regularization_types, REGULARIZATION_TYPES)
    blobs = _check_blobs("blobs", blobs, allow_strategy=True, allow_empty=True) if blobs is not None else None
    _check_int("min_iterations", min_iterations, min_value=1)
    _check_int("max_iterations", max_iterations, min_value=1)
    if max_iterations < min_iterations:
        raise InvalidArgument(f"max_iterations={max_iterations!r} must be at least min_iterations={min_iterations!r}")
    _check_int("max_iter_size", max_iter_size, min_value=1)
    if clip is not None:
        _check_bool("clip", clip)
    if refusals is not None and valid:
        raise InvalidArgument(f"refusals={refusals!r} only applies with valid=False")
    kinds: tuple[str, ...] = ()
    if not valid:
        possible = _possible_refusals(types, policies, blobs)
        if refusals is None:
            kinds = possible
        else:
            kinds = _check_names("refusals", refusals, REFUSAL_KINDS)
            impossible = [k for k in kinds if k not in possible]
            if impossible:
                raise InvalidArgument(f"refusals={refusals!r}: {impossible[0]!r} cannot be planted with "
                                      f"solver_types={types!r}, lr_policies={policies!r} and these blobs")
    blob_strategy = learnable_blobs() if blobs is None else (blobs if isinstance(blobs, st.SearchStrategy) else st.just(blobs))

    @st.composite
    def draw_config(draw):
        stype = draw(st.sampled_from(types))
        policy = draw(st.sampled_from(policies))
        max_iter = draw(st.integers(min_iterations, max_iterations))
        kw = dict(type=stype, lr_policy=policy, max_iter=max_iter)
        kw["base_lr"] = draw(_normal_floats(1e-4, 1.0))
        kw["iter_size"] = draw(st.integers(1, max_iter_size))
        kw.update(_draw_policy(draw, policy, max_iter))
        kw.update(_draw_solver(draw, stype))
        if draw(st.booleans()):
            kw["weight_decay"] = draw(_normal_floats(1e-4, 0.05))
            kw["regularization_type"] = draw(st.sampled_from(regs))
        use_clip = draw(st.integers(0, 3)) == 0 if clip is None else clip
        if use_clip:
            kw["clip_gradients"] = draw(st.one_of(st.just(0.0), _normal_floats(0.01, 10.0)))
        net = draw(blob_strategy)
        if blobs is not None and not isinstance(blobs, tuple):
            net = _check_blobs("blobs (drawn)", net)
        if not valid:
            kw, net = _plant(draw, draw(st.sampled_from(kinds)), kw, net, types, policies)
        return SolverConfig(blobs=tuple(net), **kw)

    return draw_config()


def _draw_policy(draw, policy: str, max_iter: int) -> dict:
    kw: dict = {}
    if policy in ("step", "sigmoid"):
        kw["stepsize"] = draw(st.integers(1, max_iter + 1))
    if policy in _GAMMA_CHECKED:
        if policy == "exp":
            kw["gamma"] = draw(st.one_of(_floats(0.5, 1.0), _floats(0.0, 1.0)))
        elif policy == "sigmoid":
            kw["gamma"] = draw(_floats(0.0, 2.0))
        else:
            kw["gamma"] = draw(_floats(0.0, 1.0))
    else:
        # fixed and poly never read gamma or stepsize: anything goes, even what
        # other policies refuse
        if draw(st.booleans()):
            kw["gamma"] = draw(_floats(-1.0, 1.0))
        if draw(st.booleans()):
            kw["stepsize"] = draw(st.integers(-2, max_iter))
    if policy in ("inv", "poly"):
        kw["power"] = draw(_floats(0.0, 2.0 if policy == "poly" else 1.0))
    if policy == "multistep":
        values = draw(st.lists(st.integers(1, max_iter + 1), unique=True, max_size=4))
        kw["stepvalue"] = tuple(sorted(values))
    return kw


def _draw_solver(draw, stype: str) -> dict:
    kw: dict = {}
    if stype in ("SGD", "Nesterov", "Adam"):
        kw["momentum"] = draw(st.one_of(st.just(0.0), _floats(0.0, 0.99), st.sampled_from([f32(0.9), f32(0.99)])))
    elif stype == "AdaDelta":
        kw["momentum"] = draw(st.one_of(st.sampled_from([f32(0.95), f32(0.9)]), _floats(0.0, 0.99)))
    if stype in ("AdaGrad", "RMSProp", "AdaDelta", "Adam"):
        kw["delta"] = draw(st.one_of(st.sampled_from([f32(1e-8), f32(1e-6)]), _normal_floats(1e-8, 1e-4)))
    if stype == "RMSProp":
        kw["rms_decay"] = draw(st.one_of(st.sampled_from([f32(0.99), f32(0.9), 0.0]), _floats(0.0, 0.999)))
    if stype == "Adam":
        kw["momentum2"] = draw(st.one_of(st.just(f32(0.999)), _floats(0.9, 0.9999)))
    return kw


def _plant(draw, kind: str, kw: dict, net, types, policies):
    """Put exactly one fault of ``kind`` into an otherwise valid config."""
    kw = dict(kw)
    stype, policy = kw["type"], kw["lr_policy"]
    if kind == "type":
        kw["type"] = draw(_unknown_names(SOLVER_TYPES, _NOT_SOLVER_TYPES))
    elif kind == "average_loss":
        kw["average_loss"] = draw(st.integers(-3, 0))
    elif kind == "momentum":
        if stype not in _NO_MOMENTUM:
            kw = _retype(draw, kw, [t for t in types if t in _NO_MOMENTUM])
        kw["momentum"] = draw(st.one_of(st.sampled_from([f32(0.9), 0.5]), _floats(-1.0, 1.0).filter(bool)))
    elif kind == "rms_decay":
        if kw["type"] != "RMSProp":
            kw = _retype(draw, kw, ["RMSProp"])
        kw["rms_decay"] = draw(st.one_of(st.just(1.0), _floats(1.0, 2.0), _normal_floats(-1.0, -1e-6)))
    elif kind == "lr_policy":
        kw = _repolicy(draw, kw, draw(_unknown_names(LR_POLICIES, _NOT_LR_POLICIES)))
    elif kind == "gamma":
        if policy not in _GAMMA_CHECKED:
            kw = _repolicy(draw, kw, draw(st.sampled_from([p for p in policies if p in _GAMMA_CHECKED])))
        kw["gamma"] = draw(st.one_of(st.just(-0.5), _normal_floats(-2.0, -1e-6)))
    elif kind == "stepsize":
        if policy not in _STEPSIZE_CHECKED:
            kw = _repolicy(draw, kw, draw(st.sampled_from([p for p in policies if p in _STEPSIZE_CHECKED])))
        kw["stepsize"] = draw(st.integers(-3, 0))
    elif kind == "regularization_type":
        kw["weight_decay"] = draw(_normal_floats(1e-4, 0.05))
        kw["regularization_type"] = draw(_unknown_names(REGULARIZATION_TYPES, _NOT_REGULARIZATION_TYPES))
        if not any(b.decay_mult != 0 for b in net):
            # only reached through a blob that is decayed: decay the first one
            net = (dataclasses.replace(net[0], decay_mult=1.0),) + tuple(net[1:])
    else:  # pragma: no cover - kinds are checked when the strategy is built
        raise InvalidArgument(f"unknown refusal kind {kind!r}")
    return kw, net


def _retype(draw, kw: dict, candidates) -> dict:
    """Switch to another (valid) solver type, redrawing its settings."""
    kw = {k: v for k, v in kw.items() if k not in ("momentum", "momentum2", "delta", "rms_decay")}
    kw["type"] = draw(st.sampled_from(candidates))
    kw.update(_draw_solver(draw, kw["type"]))
    return kw


def _repolicy(draw, kw: dict, policy: str) -> dict:
    """Switch to another lr_policy, redrawing its settings."""
    kw = {k: v for k, v in kw.items() if k not in ("gamma", "power", "stepsize", "stepvalue")}
    kw["lr_policy"] = policy
    if policy in LR_POLICIES:
        kw.update(_draw_policy(draw, policy, kw["max_iter"]))
    return kw


# ---------------------------------------------------------------------------
# weights and gradients
# ---------------------------------------------------------------------------
def _finite_elements(bound: float) -> st.SearchStrategy[float]:
    return st.floats(-bound, bound, width=32, allow_nan=False, allow_infinity=False)


def _special_elements() -> st.SearchStrategy[float]:
    return st.one_of(
        _finite_elements(_GRAD_BOUND),
        st.floats(width=32),  # huge, inf, nan
        st.sampled_from([math.nan, math.inf, -math.inf, f32(3e38), f32(-3e38)]),
    )


def _array(shape, elements) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(np.float32, tuple(int(d) for d in shape), elements=elements)


def _blob_dicts(blobs, strategy_of) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """``{name: array}`` in net order (``fixed_dictionaries`` may reorder keys)."""
    names = [b.name for b in blobs]
    return st.tuples(*[strategy_of(b) for b in blobs]).map(lambda arrays: dict(zip(names, arrays)))


def initial_weights(blobs, *, bound: float = _WEIGHT_BOUND, allow_special: bool = False
                    ) -> st.SearchStrategy[dict[str, np.ndarray]]:
    """Starting data for ``blobs``: ``{name: float32 array of the blob's shape}``.

    Finite values in ``[-bound, bound]`` (zeros of both signs and subnormals
    included); ``allow_special=True`` adds NaN, ±Inf and huge values.

    >>> w = initial_weights((BlobSpec("ip0/0", (2, 3)),)).example()
    >>> w["ip0/0"].shape, w["ip0/0"].dtype
    ((2, 3), dtype('float32'))
    """
    blobs = _check_blobs("blobs", blobs)
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not 0 < bound < 3e38:
        raise InvalidArgument(f"bound={bound!r} must be a positive finite number below 3e38")
    _check_bool("allow_special", allow_special)
    elements = _special_elements() if allow_special else _finite_elements(f32(bound))
    return _blob_dicts(blobs, lambda b: _array(b.shape, elements))


def _check_stream_args(blobs, iterations, iter_size, allow_special, *, injectable: bool):
    blobs = _check_blobs("blobs", blobs, injectable=injectable)
    _check_int("iterations", iterations, min_value=1)
    _check_int("iter_size", iter_size, min_value=1)
    _check_bool("allow_special", allow_special)
    return blobs


def gradient_streams(blobs, iterations: int, *, iter_size: int = 1, allow_special: bool = False,
                     frozen_zero: bool = True) -> st.SearchStrategy[list[list[dict[str, np.ndarray]]]]:
    """Gradients of ``iterations`` iterations of ``iter_size`` backward passes.

    Returns ``stream[k][p][name]``: the float32 diff of blob ``name`` from
    pass ``p`` of iteration ``k`` (what ``Reference.step(stream[k])``
    takes). Values are finite, ``|g| <= 1024``, with zeros of both signs and
    subnormals; ``allow_special=True`` adds huge values, ±Inf and NaN.
    ``frozen_zero`` (default): blobs with ``lr_mult == 0`` get zeros, as
    Caffe's backward pass never writes their diff; ``False`` draws them too.

    >>> blobs = (BlobSpec("ip0/0", (2, 3)),)
    >>> s = gradient_streams(blobs, 4, iter_size=2).example()
    >>> len(s), len(s[0]), s[0][0]["ip0/0"].shape
    (4, 2, (2, 3))
    """
    blobs = _check_stream_args(blobs, iterations, iter_size, allow_special, injectable=False)
    _check_bool("frozen_zero", frozen_zero)
    elements = _special_elements() if allow_special else _finite_elements(_GRAD_BOUND)

    def one_blob(b: BlobSpec):
        if frozen_zero and b.lr_mult == 0:
            return st.just(b.shape).map(lambda s: np.zeros(s, np.float32))
        return _array(b.shape, elements)

    def one_pass():
        return _blob_dicts(blobs, one_blob)

    return st.lists(st.lists(one_pass(), min_size=iter_size, max_size=iter_size),
                    min_size=iterations, max_size=iterations)


def _c_values(allow_zero: bool) -> st.SearchStrategy[float]:
    powers = st.builds(lambda s, e: s * 2.0 ** e, st.sampled_from([1.0, -1.0]), st.integers(_C_EXP_MIN, _C_EXP_MAX))
    return st.one_of(powers, st.just(0.0)) if allow_zero else powers


def injectable_gradient_streams(blobs, iterations: int, *, iter_size: int = 1, allow_special: bool = False
                                ) -> st.SearchStrategy[list[list[dict[str, np.ndarray]]]]:
    """Gradient streams real Caffe can be made to produce by ``harness.oracle``'s injection net.

    Same shape as :func:`gradient_streams`. For each pass and
    ``InnerProduct`` layer a row ``x`` (length D) and a row ``c`` (length O)
    are drawn; the weight gradient is ``c[o]*x[d]`` and the bias gradient
    ``c[o]``, with ``c[o]`` 0 or ``±2^e``, ``e`` in -3..3, so every product
    is exact. Rows holding tiny ``x`` get ``c >= 1`` and rows holding huge
    ``x`` ``c <= 1`` (no product rounds); rows holding NaN/Inf never get
    ``c = 0``, and get ``c = 1`` throughout when no element of ``x`` is
    finite and non-zero (then only that ``c`` can be read back from the
    weight gradient). Products pass through Caffe's zeroed diff, so ``-0`` reads
    ``+0``; blobs with ``lr_mult == 0`` get zeros (Caffe does not
    back-propagate into them). ``blobs`` must be ``ip``-style layers as
    :func:`learnable_blobs` draws them. Pass the stream to
    ``harness.oracle.capture`` as ``grad/<k>/<p>/<blob>`` arrays.

    >>> blobs = (BlobSpec("ip0/0", (2, 3)), BlobSpec("ip0/1", (2,)))
    >>> s = injectable_gradient_streams(blobs, 2).example()
    >>> g = s[0][0]
    >>> set(np.abs(g["ip0/1"]).tolist()) <= {0.0, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0}
    True
    """
    blobs = _check_stream_args(blobs, iterations, iter_size, allow_special, injectable=True)
    layers = _injection_layers("blobs", blobs)
    x_elements = _special_elements() if allow_special else _finite_elements(_GRAD_BOUND)

    def one_layer(w: BlobSpec):
        o, d = w.shape
        return st.tuples(_array((d,), x_elements),
                         st.lists(_c_values(True), min_size=o, max_size=o))

    def one_pass():
        return st.tuples(*[one_layer(w) for _, w, _ in layers]).map(_injected_pass)

    def _injected_pass(rows):
        out = {}
        zero = np.float32(0)
        for (layer, w, bias), (x, c) in zip(layers, rows):
            c = _fix_c(np.asarray(c, np.float64), x)
            with np.errstate(all="ignore"):
                wg = (c[:, None] * x[None, :]) + zero
            out[w.name] = wg.astype(np.float32) if w.lr_mult != 0 else np.zeros(w.shape, np.float32)
            if bias is not None:
                out[bias.name] = (c + zero).astype(np.float32) if bias.lr_mult != 0 else np.zeros(bias.shape, np.float32)
        return out

    return st.lists(st.lists(one_pass(), min_size=iter_size, max_size=iter_size),
                    min_size=iterations, max_size=iterations)


def _fix_c(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Adjust the multipliers of one row so that every product ``c*x`` is exact."""
    a = np.abs(x.astype(np.float64))
    c = c.copy()
    if np.any((a > 0) & (a < _X_TINY)):
        c = np.where((c != 0) & (np.abs(c) < 1), np.sign(c), c)
    if np.any(np.isfinite(a) & (a > _X_HUGE)):
        c = np.where(np.abs(c) > 1, np.sign(c), c)
    if not np.all(np.isfinite(x)):
        c = np.where(c == 0, 1.0, c)
        if not np.any(np.isfinite(a) & (a > 0)):
            # c*x is then ±inf/NaN/0 whatever |c| is: only one c reads back from the weight gradient
            c = np.ones_like(c)
    return c.astype(np.float32)


# ---------------------------------------------------------------------------
# whole runs
# ---------------------------------------------------------------------------
def solver_runs(*, injectable: bool = False, allow_special: bool = False, valid: bool = True,
                **solver_options) -> st.SearchStrategy[Trace]:
    """A whole run's inputs as a ``Trace``: config, initial weights, gradients.

    ``solver_options`` go to :func:`solver_parameters` (``solver_types``,
    ``lr_policies``, ``blobs``, ``max_iterations``, ...). The trace holds
    ``config.max_iter`` iterations of ``config.iter_size`` passes each, and
    no expectations (``Iteration.params`` etc. are ``None``): feed it to
    ``harness.reference.Reference`` or to ``harness.oracle.capture``.
    ``injectable=True`` draws :func:`injectable_gradient_streams`, which real
    Caffe can be made to reproduce. ``provenance["origin"]`` is
    ``"hypothesis"``.

    >>> run = solver_runs(solver_types=["SGD"], max_iterations=3).example()
    >>> len(run.iterations) == run.config.max_iter
    True
    """
    _check_bool("injectable", injectable)
    _check_bool("allow_special", allow_special)
    configs = solver_parameters(valid=valid, **solver_options)

    @st.composite
    def draw_run(draw):
        cfg = draw(configs)
        init = draw(initial_weights(cfg.blobs))
        streams = injectable_gradient_streams if injectable else gradient_streams
        stream = draw(streams(cfg.blobs, cfg.max_iter, iter_size=cfg.iter_size, allow_special=allow_special))
        iterations = [Iteration(iter=k, grads=passes) for k, passes in enumerate(stream)]
        return Trace(name="hypothesis", config=cfg, init_params=init, iterations=iterations,
                     provenance={"origin": "hypothesis", "blas": "openblas"})

    return draw_run()
