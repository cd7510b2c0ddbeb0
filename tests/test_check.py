"""``caffe-harness check``: the table, JSON, JUnit, exit codes, corpus selection."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import InputError
from harness.ports.conformance import default_corpus, find_traces, load_corpus, trace_id, trace_options

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "fixtures" / "caffe-runs"
REFBLAS = ROOT / "fixtures" / "caffe-runs-refblas"
REJECTED = ROOT / "fixtures" / "caffe-runs-rejected"


def run_cli(capsys, *args):
    code = main(["check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_conformant_port_exits_0_with_a_table(capsys):
    code, out, err = run_cli(capsys, "--port", "variant:caffe", "--golden", RUNS, "-k", "sgd-*", "--golden", REJECTED, "-k", "*gamma-negative")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["trace", "solver", "policy", "options", "result", "max", "ulp", "first", "divergence", "/", "reason", "diagnosis"]
    row = next(line for line in lines if line.startswith("sgd-multistep-itersize "))
    assert row.split()[1:4] == ["SGD", "multistep", "mom"] and "iter_size 2" in row and " pass " in row
    assert "port variant:caffe: 17 traces (bit-exact): 11 pass, 6 refused-ok" in out
    assert "conformant: every supported trace reproduces Caffe bit for bit" in out


def test_failing_port_exits_1_with_divergence_and_diagnosis(capsys):
    code, out, _ = run_cli(capsys, "--port", "variant:adam-no-bias-correction", "--golden", RUNS, "-k", "adam-*")
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith("adam-fixed "))
    assert " FAIL " in row and "iter 0 params ip0/0[" in row and "= adam-no-bias-correction" in row
    assert ("diagnosis: behaves like Caffe with Adam without the bias correction sqrt(1-beta2^t)/(1-beta1^t) "
            "(variant adam-no-bias-correction: reproduces all 9 failing trace(s) exactly)") in out


def test_json_report(capsys):
    code, out, _ = run_cli(capsys, "--port", "variant:rmsprop-eps-inside-sqrt", "--golden", RUNS, "-k", "rmsprop-fixed",
                           "-k", "sgd-fixed", "--format", "json")
    assert code == 1
    d = json.loads(out)
    assert d["port"] == "variant:rmsprop-eps-inside-sqrt" and d["ok"] is False
    assert d["counts"] == {"pass": 1, "FAIL": 1, "ERROR": 0, "unsupported": 0, "refused-ok": 0}
    r = {x["id"]: x for x in d["results"]}
    assert r["sgd-fixed"]["result"] == "pass" and r["sgd-fixed"]["max_ulp"] == 0
    f = r["rmsprop-fixed"]
    assert f["solver"] == "RMSProp" and f["lr_policy"] == "fixed" and f["blas"] == "openblas"
    assert f["first_divergence"]["field"] == "params" and f["first_divergence"]["iter"] == 0
    assert f["diagnosis"] == "= rmsprop-eps-inside-sqrt"
    assert d["diagnosis"]["groups"][0]["exact"] == ["rmsprop-eps-inside-sqrt"]


def test_junit_xml(capsys, tmp_path):
    junit = tmp_path / "out" / "check.xml"
    junit.parent.mkdir()
    code, _, _ = run_cli(capsys, "--port", "cmd:/bin/sh -c 'echo unsupported nothing > \"$0/out/status.txt\"'",
                         "--golden", RUNS, "-k", "sgd-fixed", "--junit", junit)
    assert code == 0
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "1" and suite.get("skipped") == "1" and suite.get("failures") == "0"
    case = suite.find("testcase")
    assert case.get("name") == "sgd-fixed" and case.find("skipped").get("message") == "unsupported: nothing"
    assert [p.name for p in junit.parent.iterdir()] == ["check.xml"]  # written through a temp file, nothing left over

    code, _, _ = run_cli(capsys, "--port", "variant:no-fma", "--golden", RUNS, "-k", "sgd-fixed", "-k", "sgd-step", "--junit", junit)
    assert code == 1
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("tests") == "3" and suite.get("failures") == "3"  # "sgd-step" also matches sgd-step-l1
    failure = suite.find("testcase/failure")
    assert failure.get("message").startswith("iter ") and "no-fma" in failure.text


def test_error_results_count_as_failures(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "--port", "cmd:/bin/false", "--golden", RUNS, "-k", "sgd-fixed", "--junit", tmp_path / "j.xml")
    assert code == 1 and " ERROR " in out and "exited with status 1" in out
    assert ET.parse(tmp_path / "j.xml").getroot().find("testsuite/testcase/error") is not None


def test_tolerance_in_ulps(capsys):
    code, out, _ = run_cli(capsys, "--port", "variant:no-fma", "--golden", RUNS, "-k", "adagrad-fixed", "--format", "json")
    worst = json.loads(out)["results"][0]["max_ulp"]
    assert code == 1 and 0 < worst < 1000
    code, out, _ = run_cli(capsys, "--port", "variant:no-fma", "--golden", RUNS, "-k", "adagrad-fixed", "--tolerance", worst)
    assert code == 0 and f"(tolerance {worst} ulp)" in out
    code, out, _ = run_cli(capsys, "--port", "variant:no-fma", "--golden", RUNS, "-k", "adagrad-fixed", "--tolerance", worst - 1)
    assert code == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--port", "nope"], "unknown port spec 'nope'"),
        (["--port", "variant:caffe", "--golden", "/no/such/dir"], "/no/such/dir: no such directory"),
        (["--port", "variant:caffe", "--golden", str(RUNS), "-k", "zzz"], "no trace id matches zzz"),
        (["--port", "variant:caffe", "--golden", str(RUNS), "--tolerance", "-1"], "--tolerance is -1"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args, message):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and out == ""
    assert err.startswith("caffe-harness: error: ") and message in err and err.count("\n") == 1


def test_corrupt_trace_is_bad_input(capsys, tmp_path):
    bad = tmp_path / "sgd-step"
    shutil.copytree(RUNS / "sgd-step", bad)
    (bad / "gradients.npz").write_bytes(b"not a zip")
    code, _, err = run_cli(capsys, "--port", "variant:caffe", "--golden", bad)
    assert code == 2 and "gradients.npz: not a readable .npz" in err


# ---------------------------------------------------------------------------
# the corpus
# ---------------------------------------------------------------------------
def test_default_corpus_prefers_golden_then_fixtures(tmp_path):
    (tmp_path / "fixtures" / "caffe-runs").mkdir(parents=True)
    shutil.copytree(RUNS / "sgd-fixed", tmp_path / "fixtures" / "caffe-runs" / "sgd-fixed")
    (tmp_path / "golden").mkdir()  # empty: fall back to the captures
    assert default_corpus(tmp_path) == [tmp_path / "fixtures" / "caffe-runs" / "sgd-fixed"]
    from harness.io.golden import write_golden

    write_golden(load_corpus([RUNS / "sgd-step"])[0][1], tmp_path / "golden" / "openblas" / "sgd-step")
    assert default_corpus(tmp_path) == [tmp_path / "golden" / "openblas" / "sgd-step"]
    with pytest.raises(InputError, match="no traces here nor in fixtures/caffe-runs"):
        default_corpus(tmp_path / "elsewhere")


def test_golden_traces_check_like_captures(tmp_path, capsys):
    from harness.io.golden import write_golden

    write_golden(load_corpus([REFBLAS / "sgd-step"])[0][1], tmp_path / "g")
    code, out, _ = run_cli(capsys, "--port", "variant:caffe", "--golden", tmp_path)
    assert code == 0 and "refblas/sgd-step" in out
    code, out, _ = run_cli(capsys, "--port", "variant:fma-everywhere", "--golden", tmp_path)
    assert code == 1 and "= fma-everywhere" in out


def test_trace_ids_and_options():
    corpus = load_corpus([RUNS / "adam-poly-clip-l1", REFBLAS / "sgd-multistep-itersize", RUNS / "sgd-step", RUNS / "sgd-step"])
    assert [tid for tid, _ in corpus] == ["adam-poly-clip-l1", "refblas/sgd-multistep-itersize", "sgd-step", "sgd-step-2"]
    assert trace_options(corpus[0][1]) == "mom 0.9 wd 0.005 L1 clip 1"
    assert trace_options(corpus[1][1]) == "mom 0.9 wd 0.005 iter_size 2"
    assert trace_id(corpus[1][1]) == "refblas/sgd-multistep-itersize"


def test_find_traces_rejects_folders_without_traces(tmp_path):
    with pytest.raises(InputError, match="holds no golden trace"):
        find_traces([tmp_path])
    assert find_traces([RUNS / "sgd-step"]) == [RUNS / "sgd-step"]
