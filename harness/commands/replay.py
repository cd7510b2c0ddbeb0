"""``caffe-harness replay PATH...``: replay captures and golden traces through the reference.

For each run: "exact", or the first divergence (iteration, stage, blob, flat
index, expected, got, ULP distance); then a summary table. Exit 0 iff every
run matches (refused runs match when the harness refuses them with Caffe's
message), 1 otherwise, 2 on bad input.
"""

from __future__ import annotations

import json
import sys

__all__ = ["add_parser", "run", "format_table", "format_matrix"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "replay",
        help="replay captures / golden traces through the reference and report the first divergence",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="capture dirs, golden trace dirs, or folders holding them")
    p.add_argument("--profile", choices=("caffe-openblas", "separate-rounding", "separate-rounding-atlas", "float64"),
                   help="arithmetic profile (default: from each run's recorded BLAS)")
    p.add_argument("--tolerance", metavar="ULP[,ATOL]",
                   help="accept up to ULP units in the last place, or an absolute difference up to ATOL "
                        "(ULP distance means nothing near zero or across a sign change); default: exact bits")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--summary", action="store_true",
                   help="print only the solver x lr_policy matrix and the totals, not a row per run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_tolerance(text: str | None):
    from ..compare import EXACT, Tolerance
    from ..errors import InputError

    if not text:
        return EXACT
    parts = text.split(",")
    try:
        ulp = int(parts[0])
        atol = float(parts[1]) if len(parts) > 1 else 0.0
        if ulp < 0 or atol < 0 or len(parts) > 2:
            raise ValueError
    except ValueError:
        raise InputError(None, f"--tolerance: expected ULP[,ATOL] with ULP a whole number >= 0, got {text!r}") from None
    return Tolerance(max_ulp=ulp, rtol=0.0, atol=atol)


def format_matrix(results) -> str:
    """Solver type x lr policy: runs that match / runs, per cell; refusals apart."""
    from ..config import LR_POLICIES, SOLVER_TYPES

    cells: dict[tuple[str, str], list[int]] = {}
    refused = [0, 0]
    for r in results:
        if r.status in ("refused", "refusal-mismatch"):
            refused[0] += r.ok
            refused[1] += 1
            continue
        c = cells.setdefault((r.type, r.lr_policy), [0, 0])
        c[0] += r.ok
        c[1] += 1
    types = [t for t in SOLVER_TYPES if any(k[0] == t for k in cells)]
    types += sorted({k[0] for k in cells} - set(types))
    policies = [p for p in LR_POLICIES if any(k[1] == p for k in cells)]
    policies += sorted({k[1] for k in cells} - set(policies))
    head = ["solver"] + policies + ["all"]
    rows = []
    for t in types:
        row = [t]
        tot = [0, 0]
        for p in policies:
            c = cells.get((t, p))
            row.append(f"{c[0]}/{c[1]}" if c else "-")
            if c:
                tot[0] += c[0]
                tot[1] += c[1]
        row.append(f"{tot[0]}/{tot[1]}")
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append(f"(cells: runs matching Caffe bit for bit / runs; refusals: {refused[0]}/{refused[1]} "
                 f"refused with Caffe's message)")
    return "\n".join(lines)


def format_table(results) -> str:
    headers = ("run", "solver", "lr_policy", "options", "profile", "iters", "result", "max ulp")
    rows = []
    for r in results:
        result = {"exact": "exact", "within-tolerance": "within tol", "mismatch": "MISMATCH",
                  "refused": "refused (as Caffe)", "refusal-mismatch": "REFUSAL MISMATCH"}[r.status]
        ulp = "-" if r.status in ("refused", "refusal-mismatch") else (
            "inf" if r.max_ulp == float("inf") else f"{r.max_ulp:g}")
        rows.append((r.name, r.type, r.lr_policy or "-", ",".join(r.options) or "-", r.profile,
                     str(r.iterations), result, ulp))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    n_ok = sum(r.ok for r in results)
    exact = sum(r.status == "exact" for r in results)
    refused = sum(r.status == "refused" for r in results)
    lines.append(f"{len(results)} runs: {exact} exact, {refused} refused as Caffe refused, "
                 f"{n_ok - exact - refused} within tolerance, {len(results) - n_ok} mismatched")
    return "\n".join(lines)


def run(args) -> int:
    from ..replayer import replay

    tol = parse_tolerance(args.tolerance)
    results = replay(args.paths, profile=args.profile, tolerance=tol,
                     progress=not args.no_progress and args.format == "text" and sys.stderr.isatty())
    if args.format == "json":
        print(json.dumps({"ok": all(r.ok for r in results), "runs": [r.to_dict() for r in results]}, indent=1))
    else:
        for r in results:
            if r.status == "mismatch" or r.status == "refusal-mismatch":
                print(f"{r.path}: {r.message}")
        table = format_table(results)
        if args.summary:
            print(table.splitlines()[-1])
        else:
            print(table)
        print()
        print(format_matrix(results))
    return 0 if all(r.ok for r in results) else 1
