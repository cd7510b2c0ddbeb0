"""The reference solver: Caffe 1.0's ``SGDSolver::ApplyUpdate``, bit for bit.

``Reference(config, params)`` holds what Caffe's solver holds between
iterations -- data of every learnable blob, the history blobs, ``iter_`` and
``current_step_`` -- and ``step(passes)`` runs one iteration the way Caffe
does after its forward/backward passes:

1. accumulate the ``iter_size`` passes' gradients as a plain float32 sum in
   pass order, starting from Caffe's zeroed diff (``ClearParamDiffs``);
2. ``rate = GetLearningRate()`` (``harness.lr``; may raise ``CaffeRefusal``);
3. ``ClipGradients``: ``sumsq`` = float sum over blobs (net order) of each
   blob's ``sdot(g, g)`` in the profile's BLAS summation order, ``l2norm =
   sqrtf(sumsq)``, and when ``l2norm > clip_gradients`` every diff is scaled
   by ``fl(clip_gradients / l2norm)``;
4. per blob in net order: Normalize (``g *= fl(1/iter_size)``), Regularize
   (``local_decay = fl(weight_decay * decay_mult)``), ComputeUpdateValue
   (``local_rate = fl(rate * lr_mult)``) and ``Net::Update`` (``w -= g``),
   fused into one pass per blob (``harness.kernels.update``);
5. ``++iter_``.

``lr_mult == 0`` blobs are regularized and update their history like any
other (their gradient is whatever is passed; Caffe's is 0).

Arithmetic profiles (``PROFILES``) pick how the BLAS rounds:
``caffe-openblas`` (the OpenBLAS 0.3.13 build: FMA in saxpy/axpby, Haswell
``sdot`` order, ``sscal(0)`` zero-fills), ``separate-rounding`` (reference
BLAS: every operation rounded separately, sequential ``sdot``, ``sscal``
multiplies), ``separate-rounding-atlas`` (ATLAS: the same, except for its
``sdot`` order: four round-robin accumulators, and the NaN its ``saxpy``
keeps: y's before the product's) and ``float64`` (the same operation
order evaluated in double throughout: an exact-math yardstick, not Caffe).
Where several operands are NaN, each profile keeps the NaN its Caffe build
keeps (``harness.kernels.update``'s module docstring).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .config import REGULARIZATION_TYPES, BlobSpec, SolverConfig, config_refusals
from .errors import CaffeRefusal, InputError
from .kernels import update as _k
from .lr import learning_rate

__all__ = [
    "Profile",
    "PROFILES",
    "PROFILE_FOR_BLAS",
    "get_profile",
    "profile_for_blas",
    "StepRecord",
    "Reference",
]


@dataclass(frozen=True)
class Profile:
    """How one Caffe build rounds: precision, saxpy's form, ``sscal(0)``, ``sdot`` order.

    ``axpy`` is the form of ``saxpy`` (``harness.kernels.update.AXPY_*``):
    separate roundings with the product's NaN first (reference BLAS), fused
    (OpenBLAS) or separate with y's NaN first (ATLAS); it also decides which
    NaN ``Net::Update`` keeps.
    """

    name: str
    dtype: type
    axpy: int
    zero_fill: int
    sumsq: str
    description: str = ""

    @property
    def fused(self) -> bool:
        """Whether ``saxpy`` is one FMA (``axpy == AXPY_FUSED``)."""
        return self.axpy == _k.AXPY_FUSED

    def sumsq_of(self, x: np.ndarray):
        """``sdot(x, x)`` in this profile's order and precision."""
        return _SUMSQ[self.sumsq](x)


_SUMSQ = {
    "openblas-haswell": _k.sumsq_openblas_haswell,
    "sequential": _k.sumsq_sequential,
    "atlas": _k.sumsq_atlas,
    "float64": _k.sumsq_float64,
}

PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("caffe-openblas", np.float32, _k.AXPY_FUSED, _k.SCAL_ZERO_FILL_NAN, "openblas-haswell",
                "Caffe 1.0 with OpenBLAS 0.3.13 (Haswell/Zen kernels): saxpy fuses into FMA"),
        Profile("separate-rounding", np.float32, _k.AXPY_SEPARATE, _k.SCAL_MULTIPLY, "sequential",
                "Caffe 1.0 with reference BLAS: every operation rounded separately"),
        Profile("separate-rounding-atlas", np.float32, _k.AXPY_SEPARATE_Y_FIRST, _k.SCAL_MULTIPLY, "atlas",
                "Caffe 1.0 with ATLAS: separate rounding (y's NaN first in saxpy), ATLAS's sdot order"),
        Profile("float64", np.float64, _k.AXPY_SEPARATE, _k.SCAL_MULTIPLY, "float64",
                "Caffe's operation order in double: an exact-math yardstick"),
    )
}

#: The profile that reproduces each real Caffe build (``config.json``'s ``blas``).
PROFILE_FOR_BLAS = {
    "openblas": "caffe-openblas",
    "reference": "separate-rounding",
    "atlas": "separate-rounding-atlas",
}


def get_profile(profile: str | Profile) -> Profile:
    """The ``Profile`` named ``profile`` (``KeyError`` lists the known ones)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise KeyError(f"unknown arithmetic profile {profile!r} (known: {', '.join(PROFILES)})") from None


def profile_for_blas(blas: str) -> str:
    """The profile name reproducing a Caffe build that ran with ``blas``."""
    try:
        return PROFILE_FOR_BLAS[blas]
    except KeyError:
        raise KeyError(f"no arithmetic profile for BLAS {blas!r} (known: {', '.join(PROFILE_FOR_BLAS)})") from None


@dataclass(frozen=True)
class StepRecord:
    """What one ``Reference.step`` produced.

    ``iter`` is the update's index ``k`` (Caffe's ``iter_`` during the
    update; Caffe snapshots the result as ``_iter_{k+1}``), ``lr`` the rate
    ``GetLearningRate`` returned, ``params``/``diff`` map blob names to the
    data and diff (the update value Caffe's ``snapshot_diff`` writes) after
    the update, ``history`` lists the history blobs in ``SolverState``
    order, ``current_step`` is ``current_step_`` after the update.
    ``l2norm_diff`` is the clipping norm (``None`` when clipping is off) and
    ``scale_factor`` the clipping scale (``None`` when no clipping happened).
    Arrays are copies unless ``step(..., copy=False)`` asked for read-only
    views of the live state (valid until the next ``step``).
    """

    iter: int
    lr: np.floating
    params: dict[str, np.ndarray]
    diff: dict[str, np.ndarray]
    history: list[np.ndarray]
    current_step: int
    l2norm_diff: np.floating | None = None
    scale_factor: np.floating | None = None


def _where(config: SolverConfig):
    return config.source or None


def _as_array(x) -> np.ndarray:
    return np.asarray(getattr(x, "data", x) if not isinstance(x, np.ndarray) else x)


class Reference:
    """Caffe's solver state plus its update, in one arithmetic profile.

    ``params`` maps blob names (``"ip0/0"``) to initial data; names, order,
    shapes and multipliers come from ``config.blobs`` (when the config has
    none, ``params``' order with ``lr_mult = decay_mult = 1``, Caffe's
    defaults). ``history`` (``SolverState`` order: one blob per learnable
    blob, twice over for AdaDelta/Adam), ``iter`` and ``current_step``
    resume a run; a fresh run starts from zero history, as Caffe does.
    ``parallel=False`` updates each blob on one thread (``kernels.update.SERIAL``);
    the default splits large blobs over numba's threads, with the same bits.

    Settings Caffe refuses before training (unknown solver type, AdaGrad or
    RMSProp with momentum, ``rms_decay`` outside [0, 1), ...) raise that
    ``CaffeRefusal`` here; those it refuses at the first update (lr policy
    checks, unknown regularization type) raise from ``step``.
    """

    def __init__(
        self,
        config: SolverConfig,
        params: Mapping[str, np.ndarray],
        *,
        profile: str | Profile = "caffe-openblas",
        history: Sequence[np.ndarray] | None = None,
        iter: int = 0,
        current_step: int = 0,
        parallel: bool = True,
    ):
        refusals = config_refusals(config)
        if refusals:
            raise refusals[0]
        self.config = config
        self.profile = get_profile(profile)
        self.parallel = bool(parallel)
        dt = self.profile.dtype
        specs = config.blobs or tuple(
            BlobSpec(name, tuple(np.shape(_as_array(v)))) for name, v in params.items()
        )
        self._specs: tuple[BlobSpec, ...] = tuple(specs)
        names = [b.name for b in self._specs]
        missing = [n for n in names if n not in params]
        extra = [n for n in params if n not in names]
        if missing or extra:
            what = "; ".join(
                s for s in (
                    f"missing blob(s) {', '.join(missing)}" if missing else "",
                    f"unknown blob(s) {', '.join(extra)}" if extra else "",
                ) if s
            )
            raise InputError(_where(config), f"params do not match the net's learnable blobs: {what}")
        self._w: list[np.ndarray] = []
        for spec in self._specs:
            a = _as_array(params[spec.name])
            if a.size != spec.count:
                raise InputError(_where(config), f"blob {spec.name}: params have shape {a.shape}, the net has {spec.shape}")
            self._w.append(np.array(a, dtype=dt, copy=True).reshape(-1))
        n = len(self._specs)
        slots = config.history_slots
        if history is None:
            self._h = [np.zeros(spec.count, dtype=dt) for _ in range(slots) for spec in self._specs]
        else:
            history = list(history)
            if len(history) != slots * n:
                raise InputError(_where(config), f"Incorrect length of history blobs: got {len(history)}, "
                                                 f"{config.type} needs {slots * n}")
            self._h = []
            for k, h in enumerate(history):
                spec = self._specs[k % n]
                a = _as_array(h)
                if a.size != spec.count:
                    raise InputError(_where(config), f"history blob {k} ({spec.name}): shape {a.shape}, "
                                                     f"the net has {spec.shape}")
                self._h.append(np.array(a, dtype=dt, copy=True).reshape(-1))
        self._g = [np.zeros(spec.count, dtype=dt) for spec in self._specs]
        self.iter = int(iter)
        self.current_step = int(current_step)

    @classmethod
    def from_solverstate(cls, config: SolverConfig, params: Mapping[str, np.ndarray], state, *,
                         profile: str | Profile = "caffe-openblas", parallel: bool = True) -> "Reference":
        """Resume from a ``.solverstate`` (anything with ``iter``, ``current_step``, ``history``).

        ``params`` are the weights of the ``learned_net`` snapshot. As in
        Caffe's ``Restore``, the state's ``current_step`` wins over whatever
        the stepvalues say.
        """
        return cls(config, params, profile=profile, history=list(state.history),
                   iter=int(state.iter), current_step=int(state.current_step), parallel=parallel)

    @property
    def kernel(self):
        """The update kernel this reference calls (looked up per step: tests may patch the module)."""
        kernels = _k.PARALLEL if self.parallel else _k.SERIAL
        return getattr(_k, kernels[self.config.type].__name__)

    # -- state -------------------------------------------------------------
    @property
    def names(self) -> tuple[str, ...]:
        """Learnable blob names in net order."""
        return tuple(b.name for b in self._specs)

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Current data per blob (read-only views)."""
        return {s.name: _view(w, s.shape) for s, w in zip(self._specs, self._w)}

    @property
    def history(self) -> list[np.ndarray]:
        """Current history blobs in ``SolverState`` order (read-only views)."""
        n = len(self._specs)
        return [_view(h, self._specs[k % n].shape) for k, h in enumerate(self._h)]

    # -- one iteration -------------------------------------------------------
    def _accumulate(self, passes) -> None:
        if isinstance(passes, Mapping):
            passes = [passes]
        passes = list(passes)
        if len(passes) != self.config.iter_size:
            raise InputError(_where(self.config), f"iteration {self.iter}: got {len(passes)} gradient pass(es), "
                                                  f"iter_size is {self.config.iter_size}")
        dt = self.profile.dtype
        for spec, g in zip(self._specs, self._g):
            g[:] = 0
            for p, grads in enumerate(passes):
                if spec.name not in grads:
                    raise InputError(_where(self.config), f"iteration {self.iter} pass {p}: no gradient for blob {spec.name}")
                x = _as_array(grads[spec.name])
                if x.size != spec.count:
                    raise InputError(_where(self.config), f"iteration {self.iter} pass {p}: gradient of {spec.name} "
                                                          f"has shape {x.shape}, the net has {spec.shape}")
                np.add(g, x.reshape(-1).astype(dt, copy=False), out=g)

    def _check_regularization(self) -> None:
        cfg = self.config
        if cfg.regularization_type in REGULARIZATION_TYPES:
            return
        wd = np.float32(cfg.weight_decay)
        if any(wd * np.float32(s.decay_mult) for s in self._specs):
            raise CaffeRefusal(f"Unknown regularization type: {cfg.regularization_type}", when="first-update",
                               caffe_file="sgd_solver.cpp", path=_where(cfg))

    def step(self, passes, *, copy: bool = True) -> StepRecord:
        """Run one iteration on the gradients of its ``iter_size`` passes.

        ``passes`` is a list of ``iter_size`` dicts (blob name -> raw diff of
        one forward/backward pass), or one dict when ``iter_size`` is 1.
        Raises ``CaffeRefusal`` when Caffe would die in this update (unknown
        lr_policy or regularization type, failed lr checks), leaving the
        state untouched.
        """
        cfg = self.config
        prof = self.profile
        dt = prof.dtype
        rate, new_step = learning_rate(cfg, self.iter, self.current_step, dtype=dt)
        self._check_regularization()
        self._accumulate(passes)
        with np.errstate(all="ignore"):
            l2norm = scale = None
            clip_scale = dt(1)
            clip = dt(cfg.clip_gradients)
            if not clip < 0:
                sumsq = dt(0)
                for g in self._g:
                    sumsq = dt(sumsq + dt(prof.sumsq_of(g)))
                l2norm = dt(np.sqrt(sumsq))
                if l2norm > clip:
                    scale = clip_scale = dt(clip / l2norm)
            norm = dt(1) if cfg.iter_size == 1 else dt(dt(1) / dt(cfg.iter_size))
            self._update_all(rate, clip_scale, norm)
        k = self.iter
        self.iter += 1
        self.current_step = new_step
        get = (lambda a, s: a.reshape(s).copy()) if copy else _view
        n = len(self._specs)
        return StepRecord(
            iter=k,
            lr=rate,
            params={s.name: get(w, s.shape) for s, w in zip(self._specs, self._w)},
            diff={s.name: get(g, s.shape) for s, g in zip(self._specs, self._g)},
            history=[get(h, self._specs[j % n].shape) for j, h in enumerate(self._h)],
            current_step=new_step,
            l2norm_diff=l2norm,
            scale_factor=scale,
        )

    def _update_all(self, rate, clip_scale, norm) -> None:
        cfg = self.config
        prof = self.profile
        dt = prof.dtype
        form, zf = prof.axpy, prof.zero_fill
        n = len(self._specs)
        wd = dt(cfg.weight_decay)
        momentum = dt(cfg.momentum)
        delta = dt(cfg.delta)
        one = dt(1)
        kind = cfg.type
        if kind == "Adam":
            corr = _k.adam_correction(np.float64(dt(cfg.momentum)), np.float64(dt(cfg.momentum2)),
                                      np.float64(self.iter + 1))
            corr = dt(corr)
        kernel = self.kernel
        for p, spec in enumerate(self._specs):
            w, g, h = self._w[p], self._g[p], self._h[p]
            local_decay = dt(wd * dt(spec.decay_mult))
            reg = _k.REG_NONE
            if local_decay:
                reg = _k.REG_L2 if cfg.regularization_type == "L2" else _k.REG_L1
            local_rate = dt(rate * dt(spec.lr_mult))
            pro = (clip_scale, norm, reg, local_decay)
            if kind == "SGD":
                kernel(w, g, h, *pro, local_rate, momentum, form, zf)
            elif kind == "Nesterov":
                kernel(w, g, h, *pro, local_rate, momentum, dt(one + momentum), dt(-momentum), form, zf)
            elif kind == "AdaGrad":
                kernel(w, g, h, *pro, local_rate, delta, form, zf)
            elif kind == "RMSProp":
                rho = dt(cfg.rms_decay)
                kernel(w, g, h, *pro, local_rate, rho, dt(one - rho), delta, form, zf)
            elif kind == "AdaDelta":
                kernel(w, g, h, self._h[n + p], *pro, local_rate, momentum, dt(one - momentum), delta, form, zf)
            elif kind == "Adam":
                b2 = dt(cfg.momentum2)
                kernel(w, g, h, self._h[n + p], *pro, dt(local_rate * corr), momentum, dt(one - momentum),
                       b2, dt(one - b2), delta, form, zf)
            else:  # unreachable: __init__ refuses unknown types
                raise AssertionError(kind)


def _view(a: np.ndarray, shape) -> np.ndarray:
    v = a.reshape(shape).view()
    v.flags.writeable = False
    return v
