"""``caffe-harness validate SOLVER.prototxt...``: would real Caffe accept it?

Exit 0 when Caffe accepts every solver, 1 when it refuses one (with Caffe's
own message and whether it dies at start or at the first update), 2 on bad
input (unreadable file, typo).
"""

from __future__ import annotations

import json

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "validate",
        help="say whether real Caffe accepts a solver.prototxt, with Caffe's own message if not",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("solvers", nargs="+", metavar="SOLVER", help="solver.prototxt files")
    p.add_argument("--weights", help="caffemodel giving blob shapes (default: the solver's weights field)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..io.solver import solver_refusals

    results = []
    for path in args.solvers:
        cfg, refusals = solver_refusals(path, weights=args.weights)
        results.append(
            {
                "path": path,
                "accepted": not refusals,
                "type": cfg.type if cfg else None,
                "lr_policy": cfg.lr_policy if cfg else None,
                "blobs": len(cfg.blobs) if cfg else None,
                "refusal": None if not refusals else {
                    "message": refusals[0].message,
                    "when": refusals[0].when,
                    "caffe_file": refusals[0].caffe_file,
                },
                "also": [r.message for r in refusals[1:]],
            }
        )
    if args.format == "json":
        print(json.dumps({"results": results}, indent=1))
    else:
        for r in results:
            if r["accepted"]:
                print(f"{r['path']}: accepted ({r['type']}, lr_policy {r['lr_policy']!r}, {r['blobs']} learnable blobs)")
            else:
                when = "at start" if r["refusal"]["when"] == "start" else "at the first update"
                print(f"{r['path']}: refused {when} ({r['refusal']['caffe_file']}): {r['refusal']['message']}")
                for m in r["also"]:
                    print(f"    (then also: {m})")
    return 0 if all(r["accepted"] for r in results) else 1
