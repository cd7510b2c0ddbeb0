"""Net definitions: load a net prototxt as Caffe does, list its learnable blobs.

``load_net`` parses strictly (a typo in a net or layer field is an error with
file:line:col) except for layer-specific ``*_param`` blocks this project's
schema does not declare (``crop_param``, a fork's ``my_layer_param``...):
those do not change a solver and are skipped. Then it applies Caffe's
upgrades that matter here:

- V1 nets (``layers { type: INNER_PRODUCT blobs_lr: 1 weight_decay: 1 }``)
  become ``layer`` nets: type enum → type string, ``blobs_lr`` → ``lr_mult``,
  ``weight_decay`` → ``decay_mult``, ``param`` → ``ParamSpec.name``,
  ``blob_share_mode`` → ``share_mode`` (Caffe's ``UpgradeV1LayerParameter``);
- deprecated net inputs (``input`` + ``input_shape``/``input_dim``) become an
  ``Input`` layer named ``input`` in front (``UpgradeNetInput``);
- a BatchNorm layer with exactly three ``param`` gets lr_mult and decay_mult
  0 on each (``UpgradeNetBatchNorm``).

``learnable_blobs`` reproduces ``Net::Init``/``AppendParam`` for one phase:
layers filtered by include/exclude rules, blobs in net order, lr_mult and
decay_mult from ``param`` (1.0 when absent), shared blobs (same non-empty
``ParamSpec.name``) learnable once, under their first owner, BatchNorm's
statistics fixed at lr_mult 0. Caffe's start-up refusals on these points are
raised as :class:`CaffeRefusal` with Caffe's text.
"""

from __future__ import annotations

import difflib
import os
from typing import Mapping, Sequence

from ..config import BlobSpec, f32
from ..errors import CaffeRefusal, InputError
from ..proto import caffe_pb2
from .prototxt import parse_text, parse_text_string

__all__ = [
    "load_net",
    "parse_net_string",
    "upgrade_net",
    "learnable_blobs",
    "blob_count",
    "V1_LAYER_TYPES",
]

#: V1 ``LayerType`` enum name → Caffe's layer type string (UpgradeV1LayerType)
V1_LAYER_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

#: Caffe's own layer-specific parameters our schema leaves out (skipped on load)
CAFFE_PARAMS_NOT_MODELLED = frozenset({
    "clip_param", "contrastive_loss_param", "crop_param", "elu_param", "hinge_loss_param",
    "image_data_param", "infogain_loss_param", "log_param", "mvn_param", "recurrent_param",
    "reduction_param", "spp_param", "swish_param", "tile_param", "window_data_param",
})

_LAYER_MESSAGES = {"LayerParameter": caffe_pb2.LayerParameter, "V1LayerParameter": caffe_pb2.V1LayerParameter}


def _skip_layer_param(message: str, field: str) -> bool:
    """Accept an unknown ``*_param`` block in a layer, unless it looks like a typo."""
    cls = _LAYER_MESSAGES.get(message)
    if cls is None or not field.endswith("_param"):
        return False
    if field in CAFFE_PARAMS_NOT_MODELLED:
        return True
    declared = [f.name for f in cls.DESCRIPTOR.fields]
    return not difflib.get_close_matches(field, declared, n=1, cutoff=0.85)


def _parse(parse, *args, **kwargs) -> caffe_pb2.NetParameter:
    try:
        return parse(*args, caffe_pb2.NetParameter, skip_unknown=_skip_layer_param, **kwargs)
    except InputError as e:
        if e.problem.startswith("unknown field 'layer' in V1LayerParameter"):
            raise InputError(
                e.path, "V0 layer definitions (layers { layer { ... } }) are not supported; "
                "upgrade the net with Caffe's upgrade_net_proto_text", line=e.line, col=e.col,
            ) from None
        raise


def load_net(path: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Read a net prototxt and upgrade it as Caffe does (see the module docstring)."""
    net = _parse(parse_text, path)
    return upgrade_net(net, source=os.fspath(path))


def parse_net_string(text: str, *, source: str = "<string>") -> caffe_pb2.NetParameter:
    """:func:`load_net` for a net given as text."""
    return upgrade_net(_parse(parse_text_string, text, source=source), source=source)


def upgrade_net(net: caffe_pb2.NetParameter, *, source: str | None = None) -> caffe_pb2.NetParameter:
    """Caffe's V1 → layer, input → Input layer and BatchNorm upgrades; returns a new message.

    Also for nets given inline in a solver (``net_param``, ``train_net_param``).
    A net with both ``layer`` and ``layers`` is refused as Caffe refuses it.
    """
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    if len(out.layers):
        if len(out.layer):
            raise InputError(
                source,
                "Refusing to upgrade inconsistent NetParameter input; the definition includes both 'layer' and 'layers' fields",
            )
        for v1 in out.layers:
            _upgrade_v1_layer(v1, out.layer.add())
        out.ClearField("layers")
    if len(out.input_shape) or len(out.input_dim):
        _upgrade_input(out, source)
    out.ClearField("input")
    out.ClearField("input_shape")
    out.ClearField("input_dim")
    for layer in out.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return out


_V1_PARAM_FIELDS = [
    f.name for f in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
    if f.name.endswith("_param") and f.message_type is not None
]


def _upgrade_v1_layer(v1, layer) -> None:
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    for rule in v1.include:
        layer.include.add().CopyFrom(rule)
    for rule in v1.exclude:
        layer.exclude.add().CopyFrom(rule)
    if v1.HasField("type"):
        layer.type = V1_LAYER_TYPES[caffe_pb2.V1LayerParameter.LayerType.Name(v1.type)]
    for b in v1.blobs:
        layer.blobs.add().CopyFrom(b)

    def spec(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        spec(i).share_mode = mode  # same enum values in V1 and ParamSpec
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_PARAM_FIELDS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))


def _upgrade_input(net, source) -> None:
    has_shape = len(net.input_shape) > 0
    if has_shape and len(net.input_shape) != len(net.input):
        raise InputError(source, f"{len(net.input)} 'input' but {len(net.input_shape)} 'input_shape'")
    if not has_shape and len(net.input_dim) != 4 * len(net.input):
        raise InputError(source, f"{len(net.input)} 'input' need {4 * len(net.input)} 'input_dim', got {len(net.input_dim)}")
    layer = caffe_pb2.LayerParameter(name="input", type="Input")
    for i, top in enumerate(net.input):
        layer.top.append(top)
        shape = layer.input_param.shape.add()
        if has_shape:
            shape.CopyFrom(net.input_shape[i])
        else:
            shape.dim.extend(net.input_dim[4 * i : 4 * i + 4])
    layers = [layer] + [l for l in net.layer]
    copies = []
    for l in layers:
        c = caffe_pb2.LayerParameter()
        c.CopyFrom(l)
        copies.append(c)
    net.ClearField("layer")
    for c in copies:
        net.layer.add().CopyFrom(c)


# ---------------------------------------------------------------------------
# learnable blobs
# ---------------------------------------------------------------------------


def blob_count(layer: caffe_pb2.LayerParameter) -> int | None:
    """How many parameter blobs Caffe's layer of this type creates; None when unknown.

    InnerProduct, Convolution, Deconvolution, Embed: 1 + bias_term; Scale:
    (1 if one bottom) + bias_term; Bias: 1 with one bottom; BatchNorm: 3;
    PReLU, Parameter: 1; LSTM: 3; RNN: 5; Python: unknown (None); others 0.
    """
    t = layer.type
    if t == "InnerProduct":
        return 1 + bool(layer.inner_product_param.bias_term)
    if t in ("Convolution", "Deconvolution"):
        return 1 + bool(layer.convolution_param.bias_term)
    if t == "Embed":
        return 1 + bool(layer.embed_param.bias_term)
    if t == "Scale":
        return (1 if len(layer.bottom) == 1 else 0) + bool(layer.scale_param.bias_term)
    if t == "Bias":
        return 1 if len(layer.bottom) == 1 else 0
    if t == "BatchNorm":
        return 3
    if t in ("PReLU", "Parameter"):
        return 1
    if t == "LSTM":
        return 3
    if t == "RNN":
        return 5
    if t == "Python":
        return None
    return 0


def _state_meets_rule(state, rule) -> bool:
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def _included(layer, state, source) -> bool:
    if len(layer.include) and len(layer.exclude):
        raise CaffeRefusal(
            "Specify either include rules or exclude rules; not both.", when="start", caffe_file="net.cpp", path=source
        )
    if len(layer.include) == 0:
        return not any(_state_meets_rule(state, r) for r in layer.exclude)
    return any(_state_meets_rule(state, r) for r in layer.include)


def _native_shape(layer_type: str, index: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Undo legacy 4-D padding (1, 1, M, N) where Caffe's layer holds fewer axes."""
    want = None
    if layer_type == "InnerProduct":
        want = 2 if index == 0 else 1
    elif layer_type in ("Convolution", "Deconvolution") and index == 1:
        want = 1
    if want is not None and len(shape) == 4 and all(d == 1 for d in shape[: 4 - want]):
        return shape[4 - want :]
    return shape


def _shape_string(shape: Sequence[int]) -> str:
    n = 1
    for d in shape:
        n *= d
    return " ".join(str(d) for d in shape) + f" ({n})"


def learnable_blobs(
    net: caffe_pb2.NetParameter,
    weights: Mapping[str, Sequence] | None = None,
    *,
    phase: str = "TRAIN",
    state: caffe_pb2.NetState | None = None,
    source: str | os.PathLike | None = None,
) -> tuple[BlobSpec, ...]:
    """The learnable blobs of ``net`` in Caffe's order, as :class:`BlobSpec`.

    ``phase`` (``"TRAIN"`` or ``"TEST"``) starts the NetState; the net's own
    ``state`` and then ``state`` (a solver's ``train_state``) are merged over
    it, as ``Solver::InitTrainNet`` does. Names are ``<layer>/<index>``.

    ``weights`` (from :func:`harness.io.blobs.read_caffemodel`) gives the
    shapes and, for layer types whose blob count is unknown (Python), the
    count. Without weights, or for a layer the weights lack, the shape is
    ``()`` (unknown): shapes come from bottom shapes, which this module does
    not compute. Legacy 4-D weights are reported in the layer's own rank.

    Raises :class:`CaffeRefusal` where Caffe refuses the net at start:
    include and exclude rules together, mismatched lr_mult/decay_mult or
    shapes between sharers, a learnable BatchNorm statistic, weights with a
    different blob count than the layer.
    """
    source = None if source is None else os.fspath(source)
    if phase not in ("TRAIN", "TEST"):
        raise ValueError(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
    if len(net.layers):
        net = upgrade_net(net, source=source)
    st = caffe_pb2.NetState(phase=caffe_pb2.Phase.Value(phase))
    st.MergeFrom(net.state)
    if state is not None:
        st.MergeFrom(state)

    specs: list[dict] = []  # learnable, in order
    owners: dict[str, int] = {}  # param name -> index in specs
    for layer in net.layer:
        if not _included(layer, st, source):
            continue
        known = blob_count(layer)
        given = None if weights is None or layer.name not in weights else list(weights[layer.name])
        if given is not None and known is not None and len(given) != known:
            raise CaffeRefusal(
                f"Incompatible number of blobs for layer {layer.name}", when="start", caffe_file="net.cpp", path=source
            )
        n = known if known is not None else (len(given) if given is not None else 0)
        if layer.type == "BatchNorm":
            for i in range(min(n, len(layer.param))):
                if layer.param[i].lr_mult != 0:
                    raise CaffeRefusal(
                        "Cannot configure batch normalization statistics as layer parameters.",
                        when="start", caffe_file="batch_norm_layer.cpp", path=source,
                    )
        for i in range(n):
            shape: tuple[int, ...] = ()
            if given is not None:
                blob = given[i]
                shape = tuple(int(d) for d in getattr(blob, "shape", ()))
                shape = _native_shape(layer.type, i, shape)
            if i < len(layer.param):
                p = layer.param[i]
                pname, has_lr, has_decay = p.name, p.HasField("lr_mult"), p.HasField("decay_mult")
                lr, decay, mode = p.lr_mult, p.decay_mult, p.share_mode
            else:
                pname, has_lr, has_decay, mode = "", False, False, caffe_pb2.ParamSpec.STRICT
                lr = 0.0 if layer.type == "BatchNorm" else 1.0  # BatchNorm adds lr_mult: 0 specs
                decay = 1.0
                has_lr = layer.type == "BatchNorm"
            if not pname or pname not in owners:
                if pname:
                    owners[pname] = len(specs)
                specs.append(dict(
                    name=f"{layer.name}/{i}", shape=shape, lr=lr, decay=decay,
                    has_lr=has_lr, has_decay=has_decay, layer=layer.name,
                ))
                continue
            owner = specs[owners[pname]]
            if shape and owner["shape"]:
                if mode == caffe_pb2.ParamSpec.PERMISSIVE:
                    if _count(shape) != _count(owner["shape"]):
                        raise CaffeRefusal(
                            f"Cannot share param '{pname}' owned by layer '{owner['layer']}' with layer "
                            f"'{layer.name}'; count mismatch.  Owner layer param shape is "
                            f"{_shape_string(owner['shape'])}; sharing layer shape is {_shape_string(shape)}",
                            when="start", caffe_file="net.cpp", path=source,
                        )
                elif shape != owner["shape"]:
                    raise CaffeRefusal(
                        f"Cannot share param '{pname}' owned by layer '{owner['layer']}' with layer "
                        f"'{layer.name}'; shape mismatch.  Owner layer param shape is "
                        f"{_shape_string(owner['shape'])}; sharing layer expects shape {_shape_string(shape)}",
                        when="start", caffe_file="net.cpp", path=source,
                    )
            if has_lr:
                if owner["has_lr"]:
                    if f32(lr) != f32(owner["lr"]):
                        raise CaffeRefusal(
                            f"Shared param '{pname}' has mismatched lr_mult.", when="start", caffe_file="net.cpp", path=source
                        )
                else:
                    owner["has_lr"], owner["lr"] = True, lr
            if has_decay:
                if owner["has_decay"]:
                    if f32(decay) != f32(owner["decay"]):
                        raise CaffeRefusal(
                            f"Shared param '{pname}' has mismatched decay_mult.", when="start", caffe_file="net.cpp", path=source
                        )
                else:
                    owner["has_decay"], owner["decay"] = True, decay
    return tuple(BlobSpec(s["name"], s["shape"], f32(s["lr"]), f32(s["decay"])) for s in specs)


def _count(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
