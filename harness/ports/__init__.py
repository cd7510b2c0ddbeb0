"""Checking third-party ports of Caffe's solver against real Caffe.

``load_port(SPEC)`` makes a runner from ``reference``, ``py:MODULE:ATTR``,
``cmd:COMMAND...``, ``variant:NAME`` or ``torch``; ``check(runner, corpus)``
runs it over golden traces and captures, compares bit for bit (or within a
``harness.compare.Tolerance``) and names the known misports
(``VARIANTS``) that explain a failure. ``docs/PORTS.md`` is the guide.
"""

from __future__ import annotations

from .base import (
    InProcessRunner,
    Port,
    PortOutputError,
    PortRun,
    PortSpecError,
    Runner,
    StepOutput,
    Unsupported,
    load_port,
)
from .conformance import (
    Diagnosis,
    Report,
    TraceResult,
    VariantCache,
    check,
    default_corpus,
    diagnose,
    load_corpus,
    render_json,
    render_junit,
    render_text,
    trace_id,
)
from .emulate import CaffeUpdate
from .variants import VARIANTS, Variant, variant_port

__all__ = [
    "Port",
    "Runner",
    "PortRun",
    "StepOutput",
    "PortSpecError",
    "PortOutputError",
    "Unsupported",
    "InProcessRunner",
    "load_port",
    "CaffeUpdate",
    "Variant",
    "VARIANTS",
    "variant_port",
    "TraceResult",
    "Diagnosis",
    "Report",
    "VariantCache",
    "check",
    "diagnose",
    "default_corpus",
    "load_corpus",
    "trace_id",
    "render_text",
    "render_json",
    "render_junit",
]
