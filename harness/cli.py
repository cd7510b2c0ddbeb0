"""``caffe-harness`` command line: argparse front end.

Exit codes: 0 ok, 1 mismatch / refused / check failed, 2 bad input.
Each subcommand lives in ``harness/commands/<name>.py`` and exposes
``add_parser(subparsers)``, which registers the parser and sets
``func(args) -> int`` as its default.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import HarnessError

__all__ = ["main"]

#: subcommand module names under harness.commands, in help order
COMMANDS = (
    "validate",
    "inspect",
    "replay",
    "replay_log",
    "audit",
    "capture",
    "golden",
    "check",
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="caffe-harness",
        description="Conformance harness for Caffe's solvers.",
    )
    parser.add_argument("--version", action="version", version=f"caffe-harness {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as e:  # a command still being built
            if e.name == f"{__package__}.commands.{name}":
                continue
            raise
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except HarnessError as e:
        if debug:
            raise
        print(f"caffe-harness: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("caffe-harness: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as e:
        if debug:
            raise
        name = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"caffe-harness: error: {name}{e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
