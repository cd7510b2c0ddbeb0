"""Net loading (strict, V1 upgrade) and learnable blobs, checked against real Caffe."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from harness.config import BlobSpec, f32
from harness.errors import CaffeRefusal, InputError
from harness.io import net as netmod
from harness.io.blobs import read_caffemodel, read_solverstate
from harness.io.net import blob_count, learnable_blobs, load_net, parse_net_string, upgrade_net
from harness.io.prototxt import parse_text
from harness.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
FORMATS = ROOT / "fixtures" / "formats"
NETS = FORMATS / "nets"
ADAM = ROOT / "fixtures" / "caffe-runs" / "adam-exp"
RUNS = sorted(p for p in ROOT.glob("fixtures/caffe-runs*/*") if (p / "net.prototxt").is_file())


def _specs(*rows):
    return tuple(BlobSpec(n, s, f32(lr), f32(d)) for n, s, lr, d in rows)


# -- the captures --------------------------------------------------------------------


@pytest.mark.parametrize("run", RUNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_capture_nets_match_their_snapshots(run):
    net = load_net(run / "net.prototxt")
    weights = read_caffemodel(run / "init.caffemodel")
    blobs = learnable_blobs(net, weights, source=run / "net.prototxt")
    with np.load(run / "gradients.npz") as npz:
        init = {k[len("init/"):]: npz[k].shape for k in npz.files if k.startswith("init/")}
    assert {b.name: b.shape for b in blobs} == init
    assert [b.name for b in blobs] == list(init)  # net order
    for b in blobs:  # lr_mult/decay_mult as written in the net's param {}
        layer = next(l for l in net.layer if l.name == b.layer)
        if b.index < len(layer.param):
            assert (b.lr_mult, b.decay_mult) == (layer.param[b.index].lr_mult, layer.param[b.index].decay_mult)


def test_adam_exp_blobs_without_weights_have_unknown_shapes():
    assert learnable_blobs(load_net(ADAM / "net.prototxt")) == _specs(
        ("ip0/0", (), 1, 1), ("ip0/1", (), 2, 0), ("ip1/0", (), 0.5, 2), ("ip2/0", (), 1.5, 1), ("ip2/1", (), 0, 1)
    )


# -- V1 --------------------------------------------------------------------------------


def test_v1_upgrade_equals_caffes_upgrade_net_proto_text():
    ours = load_net(FORMATS / "v1" / "net.prototxt")
    caffes = parse_text(FORMATS / "v1" / "net.upgraded.prototxt", caffe_pb2.NetParameter)
    assert ours == caffes
    assert len(ours.layers) == 0


def test_v1_net_with_legacy_weights_gives_caffes_shapes():
    net = load_net(FORMATS / "v1" / "net.prototxt")
    legacy = learnable_blobs(net, read_caffemodel(FORMATS / "v1" / "legacy.caffemodel"))
    loaded = read_caffemodel(FORMATS / "v1" / "loaded" / "run_iter_1.caffemodel")
    assert [b.shape for b in legacy] == [b.shape for bs in loaded.values() for b in bs]
    assert legacy == learnable_blobs(load_net(ADAM / "net.prototxt"), read_caffemodel(ADAM / "init.caffemodel"))


def test_v1_param_names_and_share_mode():
    net = parse_net_string(
        'layers { name: "a" type: CONVOLUTION param: "w" param: "" blob_share_mode: PERMISSIVE blobs_lr: 1 '
        "blobs_lr: 2 weight_decay: 0.5 convolution_param { num_output: 2 kernel_size: 3 } loss_weight: 0.5 }"
    )
    layer = net.layer[0]
    assert layer.type == "Convolution" and layer.convolution_param.kernel_size == [3]
    assert [(p.name, p.share_mode, p.lr_mult, p.decay_mult, p.HasField("decay_mult")) for p in layer.param] == [
        ("w", caffe_pb2.ParamSpec.PERMISSIVE, 1.0, 0.5, True), ("", caffe_pb2.ParamSpec.STRICT, 2.0, 1.0, False)
    ]
    assert list(layer.loss_weight) == [0.5]


def test_v0_layers_are_refused_with_a_hint():
    with pytest.raises(InputError, match=r"^n:1:10: V0 layer definitions .* upgrade_net_proto_text$"):
        parse_net_string('layers { layer { name: "a" type: "conv" } }', source="n")


def test_both_layer_forms_are_refused():
    with pytest.raises(InputError, match="includes both 'layer' and 'layers'"):
        parse_net_string('layer { name: "a" } layers { name: "b" }')


# -- strictness -------------------------------------------------------------------------


def test_unmodelled_layer_params_are_skipped():
    net = parse_net_string(
        'layer { name: "crop" type: "Crop" crop_param { axis: 2 offset: 1 } }\n'
        'layer { name: "fork" type: "MyLayer" my_fancy_param { nested { x: 1 } } }\n'
    )
    assert [l.name for l in net.layer] == ["crop", "fork"]
    v1 = parse_net_string('layers { name: "w" type: WINDOW_DATA window_data_param { source: "x" } }')
    assert [(l.name, l.type) for l in v1.layer] == [("w", "WindowData")]


@pytest.mark.parametrize(
    "text,expected",
    [
        ('layer { name: "a" tpye: "ReLU" }', "n:1:19: unknown field 'tpye' in LayerParameter (did you mean 'type'?)"),
        ('nmae: "x"', "n:1:1: unknown field 'nmae' in NetParameter (did you mean 'name'?)"),
        ('layer { name: "a" inner_product_parm { num_output: 1 } }', "n:1:19: unknown field 'inner_product_parm' in LayerParameter (did you mean 'inner_product_param'?)"),
        ('layer { name: "a" inner_prodct_param { num_output: 1 } }', "n:1:19: unknown field 'inner_prodct_param' in LayerParameter (did you mean 'inner_product_param'?)"),
        ('layer { name: "a" inner_product_param { num_ouput: 1 } }', "n:1:41: unknown field 'num_ouput' in InnerProductParameter (did you mean 'num_output'?)"),
        ('layer { name: "a" param { lr_mul: 1 } }', "n:1:27: unknown field 'lr_mul' in ParamSpec (did you mean 'lr_mult'?)"),
    ],
    ids=["layer-field", "net-field", "param-suffix", "near-param", "inside-param", "paramspec"],
)
def test_typos_are_errors(text, expected):
    with pytest.raises(InputError) as e:
        parse_net_string(text, source="n")
    assert str(e.value) == expected


def test_load_net_errors_name_the_file(tmp_path):
    (tmp_path / "n.prototxt").write_text('layer {\n  name: "a"\n  botom: "x"\n}\n')
    with pytest.raises(InputError, match=r"n\.prototxt:3:3: unknown field 'botom' in LayerParameter"):
        load_net(tmp_path / "n.prototxt")


# -- upgrades ------------------------------------------------------------------------------


def test_input_fields_become_an_input_layer():
    net = parse_net_string('input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 5 layer { name: "r" type: "ReLU" }')
    assert [(l.name, l.type) for l in net.layer] == [("input", "Input"), ("r", "ReLU")]
    assert list(net.layer[0].top) == ["data"] and list(net.layer[0].input_param.shape[0].dim) == [1, 3, 4, 5]
    assert not len(net.input) and not len(net.input_dim)


def test_upgrade_net_does_not_modify_its_argument():
    v1 = caffe_pb2.NetParameter()
    v1.layers.add(name="a", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    out = upgrade_net(v1)
    assert len(v1.layers) == 1 and out.layer[0].type == "InnerProduct"


# -- Net::Init's parameter rules, against real Caffe ---------------------------------------------


def test_sharing_matches_caffe():
    net = load_net(NETS / "share-ok" / "net.prototxt")
    weights = read_caffemodel(NETS / "share-ok" / "run_iter_1.caffemodel")
    blobs = learnable_blobs(net, weights)
    # ip0b/0 is "w", owned by ip0; ip0 left lr_mult unset, so it takes ip0b's 2; test-only layers are out
    assert blobs == _specs(("ip0/0", (3, 7), 2, 0.5), ("ip0/1", (3,), 1, 1), ("ip0b/1", (3,), 3, 1))
    state = read_solverstate(NETS / "share-ok" / "run_iter_1.solverstate")
    assert [h.shape for h in state.history] == [b.shape for b in blobs]
    # Caffe's own history proves the rates: SGD, momentum 0, one step: h = float(rate*lr_mult) * diff
    with h5py.File(ADAM / "inject.h5", "r") as f:
        x, c = f["x0"][0].astype(np.float32), f["c0"][0].astype(np.float32)
    w_diff = np.outer(c, x).astype(np.float32) * np.float32(2)  # two users of "w"
    for b, h, diff in zip(blobs, state.history, [w_diff, c, c]):
        local_rate = np.float32(np.float32(0.01) * np.float32(b.lr_mult))
        np.testing.assert_array_equal(h, local_rate * diff)


def test_test_phase_includes_test_layers():
    names = [b.name for b in learnable_blobs(load_net(NETS / "share-ok" / "net.prototxt"), phase="TEST")]
    assert names == ["ip0/0", "ip0/1", "ip0b/1", "test_only/0", "test_only/1", "not_train/0", "not_train/1"]


def test_batchnorm_matches_caffe():
    net = load_net(NETS / "batchnorm-ok" / "net.prototxt")
    blobs = learnable_blobs(net, read_caffemodel(NETS / "batchnorm-ok" / "run_iter_1.caffemodel"))
    assert blobs == _specs(
        ("ip0/0", (3, 7), 1, 1), ("ip0/1", (3,), 1, 1),
        ("bn/0", (3,), 0, 1), ("bn/1", (3,), 0, 1), ("bn/2", (1,), 0, 1),  # added lr_mult: 0 specs
        ("bn3/0", (3,), 0, 0), ("bn3/1", (3,), 0, 0), ("bn3/2", (1,), 0, 0),  # three params: upgraded to 0/0
    )
    state = read_solverstate(NETS / "batchnorm-ok" / "run_iter_1.solverstate")
    assert [h.shape for h in state.history] == [b.shape for b in blobs]


def _caffe_fatal(case: str) -> str:
    line = (NETS / case / "fatal.txt").read_text().strip()
    return line.split("] ", 1)[1]


REFUSALS = [
    ("share-lr-mismatch", "Shared param 'w' has mismatched lr_mult.", None),
    ("share-shape-mismatch",
     "Cannot share param 'w' owned by layer 'ip0' with layer 'ip0b'; shape mismatch.  Owner layer param shape is "
     "3 7 (21); sharing layer expects shape 4 7 (28)",
     {"ip0": [np.zeros((3, 7)), np.zeros(3)], "ip0b": [np.zeros((4, 7)), np.zeros(4)]}),
    ("batchnorm-learnable", "Cannot configure batch normalization statistics as layer parameters.", None),
    ("include-and-exclude", "Specify either include rules or exclude rules; not both.", None),
]


@pytest.mark.parametrize("case,message,weights", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_match_caffe(case, message, weights):
    assert _caffe_fatal(case).endswith(message)  # Caffe's own text (after "Check failed: ...")
    path = NETS / case / "net.prototxt"
    with pytest.raises(CaffeRefusal) as e:
        learnable_blobs(load_net(path), weights, source=path)
    assert e.value.message == message and e.value.when == "start"


def test_decay_mult_mismatch_is_refused():
    net = parse_net_string(
        'layer { name: "a" type: "InnerProduct" param { name: "w" decay_mult: 1 } inner_product_param { bias_term: false } }'
        'layer { name: "b" type: "InnerProduct" param { name: "w" decay_mult: 2 } inner_product_param { bias_term: false } }'
    )
    with pytest.raises(CaffeRefusal, match="Shared param 'w' has mismatched decay_mult."):
        learnable_blobs(net)


def test_permissive_sharing_checks_counts_only():
    net = parse_net_string(
        'layer { name: "a" type: "InnerProduct" param { name: "w" } inner_product_param { bias_term: false } }'
        'layer { name: "b" type: "InnerProduct" param { name: "w" share_mode: PERMISSIVE } inner_product_param { bias_term: false } }'
    )
    assert [b.name for b in learnable_blobs(net, {"a": [np.zeros((2, 6))], "b": [np.zeros((3, 4))]})] == ["a/0"]
    with pytest.raises(CaffeRefusal, match="count mismatch"):
        learnable_blobs(net, {"a": [np.zeros((2, 6))], "b": [np.zeros((3, 5))]})


def test_weights_with_wrong_blob_count_are_refused():
    with pytest.raises(CaffeRefusal, match="Incompatible number of blobs for layer ip1"):
        learnable_blobs(load_net(ADAM / "net.prototxt"), {"ip1": [np.zeros((2, 5)), np.zeros(2)]})


def test_train_state_stages_and_levels():
    net = parse_net_string(
        'layer { name: "s" type: "InnerProduct" include { stage: "deploy" } }'
        'layer { name: "l" type: "InnerProduct" include { min_level: 2 } }'
        'layer { name: "n" type: "InnerProduct" exclude { not_stage: "x" } }'
    )
    assert {b.layer for b in learnable_blobs(net)} == set()
    assert {b.layer for b in learnable_blobs(net, state=caffe_pb2.NetState(stage=["deploy", "x"], level=2))} == {"s", "l", "n"}


@pytest.mark.parametrize(
    "layer,count",
    [
        ('type: "InnerProduct"', 2), ('type: "InnerProduct" inner_product_param { bias_term: false }', 1),
        ('type: "Convolution"', 2), ('type: "Deconvolution" convolution_param { bias_term: false }', 1),
        ('type: "Scale" bottom: "a"', 1), ('type: "Scale" bottom: "a" bottom: "b" scale_param { bias_term: true }', 1),
        ('type: "Bias" bottom: "a"', 1), ('type: "BatchNorm"', 3), ('type: "PReLU"', 1), ('type: "Embed"', 2),
        ('type: "LSTM"', 3), ('type: "RNN"', 5), ('type: "ReLU"', 0), ('type: "Python"', None),
    ],
)
def test_blob_count(layer, count):
    assert blob_count(parse_net_string(f'layer {{ name: "x" {layer} }}').layer[0]) == count


def test_public_api():
    assert set(netmod.__all__) == {"load_net", "parse_net_string", "upgrade_net", "learnable_blobs", "blob_count", "V1_LAYER_TYPES"}
    for name in netmod.__all__:
        if callable(getattr(netmod, name)):
            assert getattr(netmod, name).__doc__, name
