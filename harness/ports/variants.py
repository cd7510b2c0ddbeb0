"""The catalogue of known misports: ways a port's update differs from Caffe's.

Each ``Variant`` is Caffe's CPU update (``harness.ports.emulate.CaffeUpdate``)
with one step done the way a known misport does it -- "Caffe with the
learning rate applied outside the momentum history". When a port fails,
``caffe-harness check`` runs the variants on the failing traces and names
those that reproduce the port's output exactly (else the closest by ULP).

Every variant is also a port: ``--port variant:lr-outside-history``, or
several at once ``variant:no-fma+rates-float64``; ``variant:caffe`` has no
misport at all (and must pass every trace).

Known failures are data: ``VARIANTS`` lists each variant with a one-line
description, its reference (SEMANTICS.md section, Caffe issue, framework)
and ``applies(trace)``: whether it can differ from Caffe on that trace at
all (when it cannot, its output *is* Caffe's and running it is wasted work).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..trace import Trace
from .emulate import FLAGS, CaffeUpdate

__all__ = ["Variant", "VARIANTS", "variant", "variant_port", "applicable_variants"]


@dataclass(frozen=True)
class Variant:
    """One known misport.

    ``id`` is the flag ``CaffeUpdate`` understands; ``description`` completes
    the sentence "behaves like Caffe with ..."; ``reference`` points at the
    spec section or issue; ``applies(trace)`` is False when the variant
    cannot change anything on that trace.
    """

    id: str
    description: str
    reference: str
    applies: Callable[[Trace], bool]

    def port(self) -> CaffeUpdate:
        """A fresh in-process port computing this variant."""
        return CaffeUpdate({self.id}, name=f"variant:{self.id}")


def _momentum_solver(t: Trace) -> bool:
    return t.config.type in ("SGD", "Nesterov") and t.config.momentum != 0


def _decays(t: Trace) -> bool:
    c = t.config
    return c.weight_decay != 0 and any(b.decay_mult != 0 for b in c.blobs)


def _adaptive(t: Trace) -> bool:
    return t.config.type in ("AdaGrad", "RMSProp", "AdaDelta", "Adam")


def _clips(t: Trace) -> bool:
    return t.config.clip_gradients >= 0


def _frozen_decayed(t: Trace) -> bool:
    c = t.config
    frozen = [b for b in c.blobs if b.lr_mult == 0 and c.weight_decay * b.decay_mult != 0]
    return bool(frozen) and (_adaptive(t) or t.init_history is not None)


def _not_power_of_two(n: int) -> bool:
    return n > 1 and n & (n - 1) != 0


_LIST = [
    Variant("lr-outside-history",
            "the learning rate applied outside the momentum history (h = mu*h + g; step = lr*h), as PyTorch and TensorFlow do",
            "SEMANTICS.md s4 SGD, s8 PyTorch; STYLE.md optax note",
            _momentum_solver),
    Variant("momentum-init-first-grad",
            "the momentum history initialized with the first gradient instead of zeros",
            "SEMANTICS.md s5 (histories are zero-initialized)",
            lambda t: _momentum_solver(t) and t.init_iter == 0 and t.init_history is None),
    Variant("nesterov-pytorch",
            "PyTorch's Nesterov form (buf = mu*buf + g; step = lr*(g + mu*buf)) instead of (1+mu)*h_new - mu*h_old",
            "SEMANTICS.md s4 Nesterov, s8 PyTorch",
            lambda t: t.config.type == "Nesterov"),
    Variant("adam-eps-after-bias-correction",
            "Adam's epsilon added after the bias correction (m_hat/(sqrt(v_hat)+eps), PyTorch) instead of Caffe's eps_hat",
            "SEMANTICS.md s4 Adam, s8; BVLC/caffe#4224, pytorch#22628",
            lambda t: t.config.type == "Adam"),
    Variant("adam-no-bias-correction",
            "Adam without the bias correction sqrt(1-beta2^t)/(1-beta1^t)",
            "SEMANTICS.md s4 Adam; BVLC/caffe#4224",
            lambda t: t.config.type == "Adam"),
    Variant("rmsprop-eps-inside-sqrt",
            "RMSProp's delta inside the square root (g/sqrt(h+delta), TensorFlow) instead of g/(sqrt(h)+delta)",
            "SEMANTICS.md s4 RMSProp, s8 PyTorch; BVLC/caffe#3930",
            lambda t: t.config.type == "RMSProp"),
    Variant("adadelta-ratio-of-sqrts",
            "AdaDelta's step as a ratio of square roots sqrt(E[dx^2]+delta)/sqrt(E[g^2]+delta) (PyTorch) instead of the root of the ratio",
            "SEMANTICS.md s4 AdaDelta, s8 PyTorch",
            lambda t: t.config.type == "AdaDelta"),
    Variant("powx-as-sqrtf",
            "caffe_powx(x, 0.5) and caffe_powx(x, 2) computed as sqrtf(x) and x*x instead of glibc powf (GCC <= 5 builds, GPU kernels)",
            "SEMANTICS.md s7 libm; CAFFE_ORACLE.md literal-exponent trap",
            _adaptive),
    Variant("decoupled-weight-decay",
            "decoupled weight decay (w -= update + lr*decay*w, AdamW / NVCaffe 'WD') instead of decay*w added to the gradient",
            "SEMANTICS.md s4 Regularize, s8 NVCaffe",
            _decays),
    Variant("decay-mult-zero-decayed",
            "weight decay applied to blobs whose decay_mult is 0 (e.g. biases)",
            "SEMANTICS.md s4 Regularize (local_decay 0 skips the step)",
            lambda t: t.config.weight_decay != 0 and any(b.decay_mult == 0 for b in t.config.blobs)),
    Variant("lr-mult-ignored",
            "lr_mult ignored (one learning rate for every blob)",
            "SEMANTICS.md s4 (local_rate = rate*lr_mult), s6 ParamSpec",
            lambda t: any(b.lr_mult != 1 for b in t.config.blobs)),
    Variant("frozen-blobs-skipped",
            "blobs with lr_mult 0 skipped entirely (no weight decay, no history update), as frameworks skip parameters without gradients",
            "SEMANTICS.md s4 Regularize (applies even when lr_mult=0); CAFFE_ORACLE.md gradient injection",
            _frozen_decayed),
    Variant("l1-sign-zero-positive",
            "L1 regularization with sign(0) = +1 instead of 0",
            "SEMANTICS.md s4 Regularize L1",
            lambda t: t.config.regularization_type == "L1" and _decays(t)),
    Variant("clip-after-normalize",
            "gradient clipping applied to the iter_size-normalized gradient instead of the accumulated sum",
            "SEMANTICS.md s3; BVLC/caffe#6199",
            lambda t: _clips(t) and t.config.iter_size > 1),
    Variant("clip-includes-weight-decay",
            "the clipping norm taken after weight decay was added to the gradient",
            "SEMANTICS.md s3; BVLC/caffe#6199",
            lambda t: _clips(t) and _decays(t)),
    Variant("clip-norm-float64",
            "the clipping norm computed as a double-precision dot product instead of float sdot in the BLAS's order",
            "SEMANTICS.md s3, s7; CAFFE_ORACLE.md clipping norm",
            _clips),
    Variant("itersize-mean",
            "the iter_size passes averaged by dividing by iter_size instead of multiplying by fl(1/iter_size)",
            "SEMANTICS.md s4 Normalize; BVLC/caffe#1977",
            lambda t: _not_power_of_two(t.config.iter_size)),
    Variant("itersize-unscaled-sum",
            "the iter_size passes summed but never normalized",
            "SEMANTICS.md s4 Normalize; BVLC/caffe#1977",
            lambda t: t.config.iter_size > 1),
    Variant("multistep-multi-advance",
            "multistep advancing several steps in one call (while, not if)",
            "SEMANTICS.md s2 multistep; BVLC/caffe#1308",
            lambda t: t.config.lr_policy == "multistep"),
    Variant("rates-float64",
            "inv/poly/sigmoid rates computed in double and rounded once (GCC <= 5 builds)",
            "SEMANTICS.md s2",
            lambda t: t.config.lr_policy in ("inv", "poly", "sigmoid")),
    Variant("rates-numpy-float32",
            "rates computed with numpy float32 (np.power, np.exp) instead of glibc powf/expf and C++'s double pow",
            "CAFFE_ORACLE.md (np.power differs from powf on 20% of inputs)",
            lambda t: t.config.lr_policy in ("step", "exp", "multistep", "inv", "poly", "sigmoid")),
    Variant("rates-float-int-power",
            "step/exp/multistep rates with a float power (__powisf2, -std=c++98 builds) instead of double",
            "SEMANTICS.md s2",
            lambda t: t.config.lr_policy in ("step", "exp", "multistep")),
    Variant("rates-lambdalr",
            "each blob's rate computed in double as (base_lr*lr_mult)*factor(iter) and rounded once, as torch's LambdaLR does",
            "SEMANTICS.md s2, s4 (local_rate = fl(rate*lr_mult)); torch.optim.lr_scheduler.LambdaLR",
            lambda t: t.config.lr_policy != "fixed" or any(b.lr_mult not in (0, 1) for b in t.config.blobs)),
    Variant("lr-off-by-one",
            "the rate of update k computed at iteration k+1",
            "SEMANTICS.md s1 (update k+1 uses lr(k))",
            lambda t: t.config.lr_policy in ("step", "exp", "multistep", "inv", "poly", "sigmoid")),
    Variant("no-fma",
            "two roundings where Caffe's OpenBLAS build fuses saxpy into one FMA",
            "SEMANTICS.md s7; CAFFE_ORACLE.md SGD history",
            lambda t: t.blas == "openblas"),
    Variant("fma-everywhere",
            "saxpy fused into one FMA where this Caffe build (reference BLAS, ATLAS) rounds twice",
            "SEMANTICS.md s7; CAFFE_ORACLE.md three builds",
            lambda t: t.blas != "openblas"),
]

#: Every known misport by id, in catalogue order.
VARIANTS: dict[str, Variant] = {v.id: v for v in _LIST}
assert set(VARIANTS) == FLAGS, "the catalogue and emulate.FLAGS must list the same variants"


def variant(id: str) -> Variant:
    """The catalogue entry ``id``; ``KeyError`` listing the known ids otherwise."""
    try:
        return VARIANTS[id]
    except KeyError:
        raise KeyError(f"unknown variant {id!r}; known: caffe, {', '.join(VARIANTS)}") from None


def variant_port(name: str) -> CaffeUpdate:
    """The port for ``name``: one id, ``a+b`` for several at once, or ``caffe`` for none."""
    name = name.strip()
    if name in ("caffe", ""):
        return CaffeUpdate((), name="variant:caffe")
    ids = [p.strip() for p in name.split("+")]
    for i in ids:
        variant(i)
    return CaffeUpdate(ids, name=f"variant:{name}")


def applicable_variants(trace: Trace) -> list[Variant]:
    """The variants that can differ from Caffe on ``trace``, in catalogue order."""
    return [v for v in _LIST if v.applies(trace)]
