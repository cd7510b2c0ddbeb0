"""``caffe-harness audit SNAPSHOT...``: check a sequence of Caffe snapshots without its gradients.

SNAPSHOT is a ``.solverstate`` (or ``.solverstate.h5``) file, a folder of
``<prefix>_iter_N.solverstate`` files, or a prefix such as ``snapshots/run``.
Each state's caffemodel is the one its ``learned_net`` names (looked up
beside the state) or the one with the same stem. The states are sorted by
``iter`` and checked against the invariants of ``harness.audit`` (one row
each). Exit 0 when every invariant holds, 1 when one fails, 2 on bad input
(unreadable or corrupt file, snapshots of different nets, two snapshots of
one iteration, a bad solver).
"""

from __future__ import annotations

import json

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    """Register ``audit`` on the CLI's subparsers."""
    p = sub.add_parser(
        "audit",
        help="check a sequence of Caffe snapshots (.solverstate + .caffemodel) for the solver's invariants",
        description=__doc__.split("\n\n", 1)[0] + "\n\n" + __doc__.split("\n\n", 1)[1],
    )
    p.add_argument("snapshots", nargs="+", metavar="SNAPSHOT",
                   help=".solverstate files, folders of them, or a prefix like snapshots/run")
    p.add_argument("--solver", metavar="SOLVER",
                   help="the solver.prototxt that ran (type, lr policy, lr_mult): enables the solver-specific checks")
    p.add_argument("--profile", default="caffe-openblas", choices=("caffe-openblas", "separate-rounding", "separate-rounding-atlas"),
                   help="the BLAS arithmetic of the Caffe build that wrote the snapshots (default: caffe-openblas)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--max-failures", type=int, default=10, metavar="N",
                   help="failures listed per invariant (all are counted; default 10)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run the audit and print its table (text) or report (json); 0 ok, 1 an invariant fails."""
    from ..audit import audit

    report = audit(args.snapshots, solver=args.solver, profile=args.profile, max_failures=max(args.max_failures, 1))
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(report.format_text(examples=max(args.max_failures, 1)))
    return report.exit_code
