"""Caffe's refusals: messages, timing, and the validate command."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import update_refusals
from harness.io.solver import load_solver, solver_refusals

FIX = Path(__file__).resolve().parent.parent / "fixtures"
REJECTED = sorted((FIX / "caffe-runs-rejected").iterdir())
ACCEPTED = sorted((FIX / "caffe-runs").iterdir())


def fatal_line(log: Path) -> str:
    """Caffe's message from the first ``F....] message`` line of a log."""
    for line in log.read_text().splitlines():
        m = re.match(r"F\d{4} [\d:.]+\s+\d+ (\S+):\d+\] (.*)$", line)
        if m:
            return m.group(2).rstrip()
    raise AssertionError(f"{log}: no fatal line")


@pytest.mark.parametrize("run", REJECTED, ids=lambda p: p.name)
def test_rejected_runs_are_refused_with_caffes_message(run):
    cfg, refusals = solver_refusals(run / "solver.prototxt")
    assert refusals, "Caffe refused this solver but the harness accepts it"
    assert refusals[0].message == fatal_line(run / "caffe.log")
    # Caffe got as far as the solving loop in these logs: first update
    solving = "Solving " in (run / "caffe.log").read_text()
    assert refusals[0].when == ("first-update" if solving else "start")


@pytest.mark.parametrize("run", ACCEPTED, ids=lambda p: p.name)
def test_accepted_runs_are_accepted(run):
    cfg, refusals = solver_refusals(run / "solver.prototxt")
    assert refusals == []
    assert cfg.blobs, "the learnable blob list of the injection net"


def write_solver(tmp_path: Path, body: str, net: bool = True) -> Path:
    if net:
        (tmp_path / "net.prototxt").write_text(
            'name: "n"\nlayer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
            "inner_product_param { num_output: 2 } }\n"
        )
        body = 'net: "net.prototxt"\n' + body
    p = tmp_path / "solver.prototxt"
    p.write_text(body)
    return p


# (id, solver body, expected first message, when)
CASES = [
    ("unknown-type", 'type: "Adamw"\nlr_policy: "fixed"\nmax_iter: 1\n',
     "Check failed: registry.count(type) == 1 (0 vs. 1) Unknown solver type: Adamw "
     "(known types: AdaDelta, AdaGrad, Adam, Nesterov, RMSProp, SGD)", "start"),
    ("type-and-solver_type", 'type: "SGD"\nsolver_type: ADAM\nlr_policy: "fixed"\nmax_iter: 1\n',
     "Check failed: !solver_param->has_solver_type() || !solver_param->has_type() Failed to upgrade solver: "
     "old solver_type field (enum) and new type field (string) cannot be both specified in solver proto text.",
     "start"),
    ("average_loss-0", 'lr_policy: "fixed"\naverage_loss: 0\nmax_iter: 1\n',
     "Check failed: param_.average_loss() >= 1 (0 vs. 1) average_loss should be non-negative.", "start"),
    ("adagrad-momentum", 'type: "AdaGrad"\nlr_policy: "fixed"\nmomentum: 0.9\nmax_iter: 1\n',
     "Check failed: 0 == this->param_.momentum() (0 vs. 0.9) Momentum cannot be used with AdaGrad.", "start"),
    ("rmsprop-momentum", 'type: "RMSProp"\nlr_policy: "fixed"\nmomentum: 0.5\nmax_iter: 1\n',
     "Check failed: 0 == this->param_.momentum() (0 vs. 0.5) Momentum cannot be used with RMSProp.", "start"),
    ("rmsprop-rms_decay-1", 'type: "RMSProp"\nlr_policy: "fixed"\nrms_decay: 1\nmax_iter: 1\n',
     "Check failed: this->param_.rms_decay() < 1 (1 vs. 1) rms_decay should lie between 0 and 1.", "start"),
    ("rmsprop-rms_decay-negative", 'type: "RMSProp"\nlr_policy: "fixed"\nrms_decay: -0.1\nmax_iter: 1\n',
     "Check failed: this->param_.rms_decay() >= 0 (-0.1 vs. 0) rms_decay should lie between 0 and 1.", "start"),
    ("gpu-mode", 'lr_policy: "fixed"\nsolver_mode: GPU\nmax_iter: 1\n',
     "Cannot use GPU in CPU-only Caffe: check mode.", "start"),
    ("no-train-net", 'lr_policy: "fixed"\nmax_iter: 1\n',
     "Check failed: num_train_nets >= 1 (0 vs. 1) SolverParameter must specify a train net using one of "
     "these fields: net, net_param, train_net, train_net_param", "start"),
    ("unknown-lr_policy", 'lr_policy: "cosine"\nmax_iter: 1\n', "Unknown learning rate policy: cosine", "first-update"),
    ("unset-lr_policy", "max_iter: 1\n", "Unknown learning rate policy:", "first-update"),
    ("step-stepsize-0", 'lr_policy: "step"\ngamma: 0.1\nmax_iter: 1\n',
     "Check failed: this->param_.stepsize() > 0 (0 vs. 0)", "first-update"),
    ("exp-gamma-negative", 'lr_policy: "exp"\ngamma: -1\nmax_iter: 1\n',
     "Check failed: this->param_.gamma() >= 0 (-1 vs. 0)", "first-update"),
    ("sigmoid-stepsize-0", 'lr_policy: "sigmoid"\ngamma: 0.5\nmax_iter: 1\n',
     "Check failed: this->param_.stepsize() > 0 (0 vs. 0)", "first-update"),
    ("unknown-regularization", 'lr_policy: "fixed"\nweight_decay: 0.1\nregularization_type: "L3"\nmax_iter: 1\n',
     "Unknown regularization type: L3", "first-update"),
]


@pytest.mark.parametrize("body,message,when", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusal_messages(tmp_path, body, message, when):
    path = write_solver(tmp_path, body, net="train net" not in message)
    _, refusals = solver_refusals(path)
    assert refusals, "expected a refusal"
    assert (refusals[0].message, refusals[0].when) == (message, when)


@pytest.mark.parametrize(
    "body",
    [
        'lr_policy: "cosine"\nmax_iter: 0\n',  # no update ever runs: GetLearningRate is never called
        'lr_policy: "fixed"\nweight_decay: 0\nregularization_type: "L3"\nmax_iter: 5\n',  # local_decay 0: never looked at
        'lr_policy: "poly"\npower: 0.5\nmax_iter: 0\n',
        'type: "AdaGrad"\nlr_policy: "fixed"\nmax_iter: 3\n',
        'solver_type: NESTEROV\nlr_policy: "fixed"\nmax_iter: 3\n',
    ],
    ids=["bad-policy-no-update", "bad-regularization-zero-decay", "poly-max_iter-0", "adagrad", "deprecated-enum"],
)
def test_accepted_edge_cases(tmp_path, body):
    _, refusals = solver_refusals(write_solver(tmp_path, body))
    assert refusals == []


def test_deprecated_enum_is_upgraded(tmp_path):
    cfg = load_solver(write_solver(tmp_path, 'solver_type: ADADELTA\nlr_policy: "fixed"\n'))
    assert cfg.type == "AdaDelta" and cfg.history_slots == 2


def test_defaults_resolved_as_caffe(tmp_path):
    import numpy as np

    cfg = load_solver(write_solver(tmp_path, 'lr_policy: "fixed"\n'))
    assert cfg.type == "SGD"
    assert cfg.delta == float(np.float32(1e-8))
    assert cfg.momentum2 == float(np.float32(0.999))
    assert cfg.rms_decay == float(np.float32(0.99))
    assert (cfg.clip_gradients, cfg.iter_size, cfg.average_loss, cfg.regularization_type) == (-1.0, 1, 1, "L2")
    assert (cfg.base_lr, cfg.momentum, cfg.weight_decay, cfg.max_iter) == (0.0, 0.0, 0.0, 0)


def test_validate_cli_exit_codes_and_json(tmp_path, capsys):
    ok = FIX / "caffe-runs" / "sgd-step" / "solver.prototxt"
    bad = REJECTED[0] / "solver.prototxt"
    assert main(["validate", str(ok)]) == 0
    assert "accepted" in capsys.readouterr().out
    assert main(["validate", str(ok), str(bad), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [r["accepted"] for r in data["results"]] == [True, False]
    assert data["results"][1]["refusal"]["when"] == "first-update"


def test_validate_typo_is_bad_input(tmp_path, capsys):
    p = tmp_path / "solver.prototxt"
    p.write_text('net: "net.prototxt"\nbase_lr: 0.1\nmomentun: 0.9\n')
    assert main(["validate", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{p}:3:" in err and "momentun" in err


def test_update_refusals_none_without_updates():
    from harness.config import SolverConfig

    assert update_refusals(SolverConfig(lr_policy="nope", max_iter=0)) == []
    assert update_refusals(SolverConfig(lr_policy="nope", max_iter=1))[0].message == "Unknown learning rate policy: nope"
