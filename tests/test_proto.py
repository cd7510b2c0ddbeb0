"""The committed schema: generated code is fresh, and wire facts match Caffe's."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent

# (message, field) -> field number in Caffe's caffe.proto (master, as built by Debian 1.0.0+git20180821)
SOLVER_FIELD_NUMBERS = {
    "train_net": 1, "test_net": 2, "test_iter": 3, "test_interval": 4, "base_lr": 5, "display": 6,
    "max_iter": 7, "lr_policy": 8, "gamma": 9, "power": 10, "momentum": 11, "weight_decay": 12,
    "stepsize": 13, "snapshot": 14, "snapshot_prefix": 15, "snapshot_diff": 16, "solver_mode": 17,
    "device_id": 18, "test_compute_loss": 19, "random_seed": 20, "train_net_param": 21,
    "test_net_param": 22, "debug_info": 23, "net": 24, "net_param": 25, "train_state": 26,
    "test_state": 27, "snapshot_after_train": 28, "regularization_type": 29, "solver_type": 30,
    "delta": 31, "test_initialization": 32, "average_loss": 33, "stepvalue": 34,
    "clip_gradients": 35, "iter_size": 36, "snapshot_format": 37, "rms_decay": 38,
    "momentum2": 39, "type": 40, "layer_wise_reduce": 41, "weights": 42,
}

OTHER_FIELD_NUMBERS = [
    ("SolverState", "iter", 1), ("SolverState", "learned_net", 2), ("SolverState", "history", 3),
    ("SolverState", "current_step", 4),
    ("BlobProto", "num", 1), ("BlobProto", "channels", 2), ("BlobProto", "height", 3), ("BlobProto", "width", 4),
    ("BlobProto", "data", 5), ("BlobProto", "diff", 6), ("BlobProto", "shape", 7),
    ("BlobProto", "double_data", 8), ("BlobProto", "double_diff", 9),
    ("BlobShape", "dim", 1), ("BlobProtoVector", "blobs", 1),
    ("NetParameter", "name", 1), ("NetParameter", "layers", 2), ("NetParameter", "input", 3),
    ("NetParameter", "input_dim", 4), ("NetParameter", "input_shape", 8), ("NetParameter", "state", 6),
    ("NetParameter", "layer", 100),
    ("LayerParameter", "param", 6), ("LayerParameter", "blobs", 7), ("LayerParameter", "include", 8),
    ("LayerParameter", "exclude", 9), ("LayerParameter", "phase", 10), ("LayerParameter", "propagate_down", 11),
    ("LayerParameter", "loss_weight", 5), ("LayerParameter", "transform_param", 100),
    ("LayerParameter", "loss_param", 101), ("LayerParameter", "convolution_param", 106),
    ("LayerParameter", "data_param", 107), ("LayerParameter", "eltwise_param", 110),
    ("LayerParameter", "hdf5_data_param", 112), ("LayerParameter", "inner_product_param", 117),
    ("LayerParameter", "pooling_param", 121), ("LayerParameter", "relu_param", 123),
    ("LayerParameter", "softmax_param", 125), ("LayerParameter", "batch_norm_param", 139),
    ("LayerParameter", "scale_param", 142),
    ("ParamSpec", "name", 1), ("ParamSpec", "share_mode", 2), ("ParamSpec", "lr_mult", 3), ("ParamSpec", "decay_mult", 4),
    ("V1LayerParameter", "param", 1001), ("V1LayerParameter", "blob_share_mode", 1002),
    ("V1LayerParameter", "type", 5), ("V1LayerParameter", "blobs", 6), ("V1LayerParameter", "blobs_lr", 7),
    ("V1LayerParameter", "weight_decay", 8), ("V1LayerParameter", "include", 32),
    ("V1LayerParameter", "exclude", 33), ("V1LayerParameter", "loss_weight", 35),
    ("V1LayerParameter", "inner_product_param", 17), ("V1LayerParameter", "convolution_param", 10),
    ("NetStateRule", "phase", 1), ("NetStateRule", "min_level", 2), ("NetStateRule", "not_stage", 5),
]

# (message, field, Caffe's default as the value protobuf returns)
DEFAULTS = [
    ("SolverParameter", "delta", np.float32(1e-8)),
    ("SolverParameter", "momentum2", np.float32(0.999)),
    ("SolverParameter", "rms_decay", np.float32(0.99)),
    ("SolverParameter", "clip_gradients", np.float32(-1)),
    ("SolverParameter", "type", "SGD"),
    ("SolverParameter", "regularization_type", "L2"),
    ("SolverParameter", "iter_size", 1),
    ("SolverParameter", "average_loss", 1),
    ("SolverParameter", "random_seed", -1),
    ("SolverParameter", "snapshot_format", caffe_pb2.SolverParameter.BINARYPROTO),
    ("SolverParameter", "solver_mode", caffe_pb2.SolverParameter.GPU),
    ("SolverParameter", "solver_type", caffe_pb2.SolverParameter.SGD),
    ("SolverParameter", "test_initialization", True),
    ("SolverParameter", "snapshot_after_train", True),
    ("SolverParameter", "layer_wise_reduce", True),
    ("SolverParameter", "base_lr", 0.0),
    ("SolverParameter", "lr_policy", ""),
    ("SolverState", "current_step", 0),
    ("ParamSpec", "lr_mult", 1.0),
    ("ParamSpec", "decay_mult", 1.0),
    ("NetState", "phase", caffe_pb2.TEST),
    ("InnerProductParameter", "bias_term", True),
    ("ConvolutionParameter", "bias_term", True),
    ("EltwiseParameter", "operation", caffe_pb2.EltwiseParameter.SUM),
    ("BatchNormParameter", "moving_average_fraction", np.float32(0.999)),
]

V1_TYPES = {
    "NONE": 0, "ACCURACY": 1, "BNLL": 2, "CONCAT": 3, "CONVOLUTION": 4, "DATA": 5, "DROPOUT": 6,
    "EUCLIDEAN_LOSS": 7, "FLATTEN": 8, "HDF5_DATA": 9, "HDF5_OUTPUT": 10, "IM2COL": 11, "IMAGE_DATA": 12,
    "INFOGAIN_LOSS": 13, "INNER_PRODUCT": 14, "LRN": 15, "MULTINOMIAL_LOGISTIC_LOSS": 16, "POOLING": 17,
    "RELU": 18, "SIGMOID": 19, "SOFTMAX": 20, "SOFTMAX_LOSS": 21, "SPLIT": 22, "TANH": 23,
    "WINDOW_DATA": 24, "ELTWISE": 25, "POWER": 26, "SIGMOID_CROSS_ENTROPY_LOSS": 27, "HINGE_LOSS": 28,
    "MEMORY_DATA": 29, "ARGMAX": 30, "THRESHOLD": 31, "DUMMY_DATA": 32, "SLICE": 33, "MVN": 34,
    "ABSVAL": 35, "SILENCE": 36, "CONTRASTIVE_LOSS": 37, "EXP": 38, "DECONVOLUTION": 39,
}


def test_generated_module_is_fresh(tmp_path):
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed: cannot regenerate caffe_pb2.py to compare")
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen-proto"), "--out", str(tmp_path)],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    fresh = (tmp_path / "caffe_pb2.py").read_text(encoding="utf-8")
    committed = (ROOT / "harness" / "proto" / "caffe_pb2.py").read_text(encoding="utf-8")
    assert fresh == committed, "harness/proto/caffe_pb2.py is stale: run tools/gen-proto and commit it"


def test_generated_module_is_marked():
    head = (ROOT / "harness" / "proto" / "caffe_pb2.py").read_text(encoding="utf-8").splitlines()[0]
    assert "generated by tools/gen-proto" in head and "do not edit" in head


def test_every_solver_parameter_field_has_caffes_number():
    fields = {f.name: f.number for f in caffe_pb2.SolverParameter.DESCRIPTOR.fields}
    assert fields == SOLVER_FIELD_NUMBERS


@pytest.mark.parametrize("message,field,number", OTHER_FIELD_NUMBERS, ids=lambda v: str(v))
def test_field_numbers(message, field, number):
    assert getattr(caffe_pb2, message).DESCRIPTOR.fields_by_name[field].number == number


@pytest.mark.parametrize("message,field,default", DEFAULTS, ids=lambda v: str(v))
def test_defaults(message, field, default):
    value = getattr(getattr(caffe_pb2, message)(), field)
    if isinstance(default, np.float32):
        assert np.float32(value) == default and float(value) == float(default)
    else:
        assert value == default


def test_v1_layer_types():
    enum = caffe_pb2.V1LayerParameter.LayerType
    assert {name: enum.Value(name) for name in enum.keys()} == V1_TYPES


def test_solver_type_enum_order():
    enum = caffe_pb2.SolverParameter.SolverType
    assert [enum.Name(i) for i in range(6)] == ["SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM"]


def test_packed_blob_fields():
    # Caffe writes data/diff packed: a reader that expects unpacked would see garbage
    fields = caffe_pb2.BlobProto.DESCRIPTOR.fields_by_name
    for name in ("data", "diff", "double_data", "double_diff"):
        assert fields[name].is_packed, name
    assert caffe_pb2.BlobShape.DESCRIPTOR.fields_by_name["dim"].is_packed


def test_real_caffe_snapshot_parses_with_no_unknown_fields():
    run = ROOT / "fixtures" / "caffe-runs" / "adam-exp" / "snapshots"
    state = caffe_pb2.SolverState.FromString((run / "run_iter_3.solverstate").read_bytes())
    assert state.iter == 3 and len(state.history) > 0
    net = caffe_pb2.NetParameter.FromString((run / "run_iter_3.caffemodel").read_bytes())
    assert [layer.name for layer in net.layer][:2] == ["inject", "ip0"]
    assert not net.layer[1].blobs[0].double_data and len(net.layer[1].blobs[0].data) == 21
