"""``caffe-harness check --port SPEC``: is a third-party port conformant to Caffe?

Runs every trace (golden traces and captures; default ``golden/``, or
``fixtures/caffe-runs*`` while ``golden/`` holds none) through the port,
prints a conformance table -- per trace: solver, policy, options, result
(pass / FAIL / ERROR / unsupported / refused-ok), max ULP, first divergence,
diagnosis -- and names the known misports that reproduce a failing port's
output. Exit 0 iff every supported trace passes, 1 otherwise, 2 for bad
input (unknown spec, missing or corrupt trace). ``docs/PORTS.md`` describes
the SPECs and the ``cmd:`` protocol.
"""

from __future__ import annotations

import fnmatch
import os
import sys

__all__ = ["add_parser", "run", "write_atomic"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check",
        help="check a third-party solver port against Caffe's traces, with a diagnosis of known misports",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--port", required=True, metavar="SPEC",
                   help="reference | py:MODULE:ATTR | py:FILE.py:ATTR | cmd:COMMAND ARGS... | variant:NAME[+NAME] | torch")
    p.add_argument("--golden", action="append", metavar="DIR",
                   help="a golden trace, a capture, or a folder of them (repeatable; default golden/, else fixtures/caffe-runs*)")
    p.add_argument("--tolerance", type=int, default=0, metavar="ULP",
                   help="largest ULP distance still counted equal (default 0: bit for bit)")
    p.add_argument("-k", "--trace", action="append", metavar="PATTERN",
                   help="only traces whose id matches this glob or contains this text (repeatable)")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML here")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="per-trace time limit of a cmd: port (default 60)")
    p.add_argument("--no-diagnose", action="store_true", help="skip running the misport variants on failures")
    p.set_defaults(func=run)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    from ..io.files import write_text_atomic

    write_text_atomic(path, text)


def _selected(tid: str, patterns) -> bool:
    if not patterns:
        return True
    return any(fnmatch.fnmatchcase(tid, p) or p in tid for p in patterns)


def run(args) -> int:
    from ..errors import InputError
    from ..ports.base import load_port
    from ..ports.conformance import check, load_corpus, render_json, render_junit, render_text

    if args.tolerance < 0:
        raise InputError(None, f"--tolerance is {args.tolerance}, expected a number of ULPs >= 0")
    runner = load_port(args.port, timeout=args.timeout)
    corpus = load_corpus(args.golden)
    corpus = [(tid, t) for tid, t in corpus if _selected(tid, args.trace)]
    if not corpus:
        raise InputError(None, f"no trace id matches {' or '.join(args.trace)}")
    report = check(runner, corpus, tolerance=args.tolerance, diagnose_failures=not args.no_diagnose)
    out = render_json(report) if args.format == "json" else render_text(report)
    sys.stdout.write(out)
    if args.junit:
        write_atomic(args.junit, render_junit(report))
    return 0 if report.ok else 1
