"""The pytest plugin: ``pytest --caffe-port SPEC`` collects the conformance suite."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

# pytester's in-process runs drop the modules first imported inside them, and
# extension modules (numpy, numba, h5py) cannot load twice in one process: load
# everything the plugin needs up front.
import harness.io.capture  # noqa: F401
import harness.io.golden  # noqa: F401
import harness.ports.conformance  # noqa: F401
import harness.ports.emulate  # noqa: F401
import harness.pytest_plugin  # noqa: F401

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "fixtures" / "caffe-runs"
REJECTED = ROOT / "fixtures" / "caffe-runs-rejected"


def _installed() -> bool:
    """True when the package's pytest11 entry point already loads the plugin."""
    from importlib.metadata import entry_points

    return any(ep.value == "harness.pytest_plugin" for ep in entry_points(group="pytest11"))


def run(pytester, *args):
    load = [] if _installed() else ["-p", "harness.pytest_plugin"]  # -p twice would register it twice
    return pytester.runpytest(*load, "-p", "no:cacheprovider", *map(str, args))


def test_conformant_port_passes(pytester):
    res = run(pytester, "--caffe-port", "variant:caffe", "--caffe-golden", RUNS, "-k", "sgd-step or sgd-fixed", "-v")
    res.assert_outcomes(passed=3, deselected=45)
    res.stdout.fnmatch_lines(["*caffe-conformance::sgd-fixed PASSED*", "*caffe-conformance::sgd-step-l1 PASSED*"])


def test_failures_show_divergence_and_diagnosis(pytester):
    res = run(pytester, "--caffe-port", "variant:nesterov-pytorch", "--caffe-golden", RUNS, "-k", "nesterov-fixed or sgd-fixed")
    res.assert_outcomes(passed=1, failed=1)
    res.stdout.fnmatch_lines([
        "*caffe conformance: nesterov-fixed*",
        "FAIL: iter 0 * ip*: expected * got * ulp)",
        "trace nesterov-fixed (Nesterov, lr_policy fixed, openblas) from *",
        "diagnosis: behaves like Caffe with PyTorch's Nesterov form*(variant nesterov-pytorch:*",
    ])


def test_unsupported_is_skipped_with_reason_and_refusals_pass(pytester):
    res = run(pytester, "--caffe-port", "cmd:/bin/sh -c 'echo unsupported no such solver here > \"$0/out/status.txt\"'",
              "--caffe-golden", RUNS, "--caffe-golden", REJECTED, "-k", "adam-fixed or adam-sigmoid", "-rs")
    res.assert_outcomes(skipped=2, passed=1)  # adam-fixed, adam-sigmoid skipped; adam-sigmoid-gamma-negative refused-ok
    res.stdout.fnmatch_lines(["*unsupported by the port: no such solver here*"])


def test_junit_through_pytest(pytester, tmp_path):
    xml = tmp_path / "junit.xml"
    res = run(pytester, "--caffe-port", "variant:no-fma", "--caffe-golden", RUNS, "-k", "sgd-fixed", f"--junitxml={xml}")
    res.assert_outcomes(failed=1)
    case = ET.parse(xml).getroot().find("testsuite/testcase")
    assert case.get("name") == "sgd-fixed"
    assert "no-fma" in case.find("failure").get("message")


def test_plugin_is_inert_without_the_option(pytester):
    pytester.makepyfile("def test_x():\n    pass\n")
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.parametrize("args, message", [
    (["--caffe-port", "nope"], "--caffe-port nope: unknown port spec 'nope'"),
    (["--caffe-port", "variant:caffe", "--caffe-golden", "/no/such"], "/no/such: no such directory"),
])
def test_bad_options_are_usage_errors(pytester, args, message):
    res = run(pytester, *args)
    assert res.ret == pytest.ExitCode.USAGE_ERROR
    assert message in res.stderr.str()
