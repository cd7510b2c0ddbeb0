"""pytest plugin: a port's conformance to Caffe as ordinary test items.

    pytest --caffe-port cmd:./my-port [--caffe-golden DIR ...] [--caffe-tolerance ULP]

adds one test item per trace (ids like ``adam-poly-clip-l1``,
``refblas/sgd-step``; select with ``-k``). A trace the port declares
unsupported is *skipped* with its reason; Caffe-refused settings pass when
the port refuses them too; a failure reports the first divergence and the
known misport that reproduces it. JUnit XML comes from pytest's own
``--junitxml``. Registered through the ``pytest11`` entry point
``caffe_harness = harness.pytest_plugin``; without it, load it with
``-p harness.pytest_plugin``.
"""

from __future__ import annotations

import pytest

__all__ = ["pytest_addoption", "pytest_configure", "pytest_collection_modifyitems", "ConformanceItem", "ConformanceFailure"]

_STATE = pytest.StashKey[dict]()


def pytest_addoption(parser) -> None:
    group = parser.getgroup("caffe-harness", "conformance of a port of Caffe's solver (caffe-harness)")
    group.addoption("--caffe-port", metavar="SPEC", default=None,
                    help="check this port: reference | py:MODULE:ATTR | cmd:COMMAND... | variant:NAME | torch")
    group.addoption("--caffe-golden", metavar="DIR", action="append", default=None,
                    help="golden traces or captures to check against (repeatable; default golden/, else fixtures/caffe-runs*)")
    group.addoption("--caffe-tolerance", metavar="ULP", type=int, default=0,
                    help="largest ULP distance still counted equal (default 0: bit for bit)")
    group.addoption("--caffe-timeout", metavar="SECONDS", type=float, default=60.0,
                    help="per-trace time limit of a cmd: port (default 60)")


def pytest_configure(config) -> None:
    spec = config.getoption("--caffe-port", default=None)
    if not spec:
        return
    from .errors import HarnessError
    from .ports.base import load_port
    from .ports.conformance import VariantCache, as_tolerance, load_corpus

    try:
        runner = load_port(spec, timeout=config.getoption("--caffe-timeout"))
        corpus = load_corpus(config.getoption("--caffe-golden"))
        tolerance = as_tolerance(config.getoption("--caffe-tolerance"))
    except (HarnessError, ValueError) as e:
        raise pytest.UsageError(f"--caffe-port {spec}: {e}") from None
    config.stash[_STATE] = {"runner": runner, "corpus": corpus, "tolerance": tolerance, "cache": VariantCache()}
    config.addinivalue_line("markers", "caffe_conformance: a trace of the caffe-harness conformance suite")


class ConformanceFailure(Exception):
    """The port's result on a trace differs from Caffe's."""


class ConformanceCollector(pytest.Collector):
    """The conformance suite: one item per trace."""

    def collect(self):
        state = self.config.stash[_STATE]
        for tid, trace in state["corpus"]:
            item = ConformanceItem.from_parent(self, name=tid, trace=trace)
            item.add_marker("caffe_conformance")
            yield item


class ConformanceItem(pytest.Item):
    """Run the port on one trace and compare with Caffe."""

    def __init__(self, *, trace, **kw):
        super().__init__(**kw)
        self.trace = trace
        self.result = None

    def runtest(self) -> None:
        from .ports.conformance import diagnose, evaluate

        state = self.config.stash[_STATE]
        run = state["runner"].run(self.trace)
        r = evaluate(self.name, self.trace, run, state["tolerance"])
        self.result = r
        if r.result == "unsupported":
            pytest.skip(f"unsupported by the port: {r.message}")
        if r.failed:
            if r.numeric_failure:
                diag = diagnose([r], tolerance=state["tolerance"], cache=state["cache"])
                if diag.groups and (diag.groups[0].exact or diag.groups[0].closest):
                    r.diagnosis = diag.text
            raise ConformanceFailure(r)

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, ConformanceFailure):
            r = excinfo.value.args[0]
            c = r.trace.config
            lines = [f"{r.result}: {r.message}",
                     f"trace {r.id} ({c.type}, lr_policy {c.lr_policy}, {r.trace.blas}) from {r.trace.source}"]
            if r.max_ulp is not None:
                lines.append(f"max ulp {r.max_ulp:g} over {', '.join(r.fields)}")
            if r.diagnosis:
                lines.append(f"diagnosis: {r.diagnosis}")
            return "\n".join(lines)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return self.path, None, f"caffe conformance: {self.name}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session, config, items) -> None:
    """Append the conformance items before ``-k``/``-m`` deselection runs."""
    if _STATE not in config.stash:
        return
    suite = ConformanceCollector.from_parent(session, name="caffe-conformance")
    items.extend(suite.collect())
