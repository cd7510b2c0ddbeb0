"""``caffe-harness capture``: run real Caffe on injected gradients and record the run.

::

    caffe-harness capture OUT --type Adam --lr-policy step --base-lr 0.01 --gamma 0.5 --stepsize 4 \\
        --layers '7x3,5x2:nobias:lr_w=0.5' --iters 12 --seed 5 --grad-special nan,inf --blas reference
    caffe-harness capture OUT --solver my_solver.prototxt --grads my_gradients.npz
    caffe-harness capture OUT --solver my_solver.prototxt --iters 20 --resume-at 8
    caffe-harness capture --like fixtures/caffe-runs/sgd-step OUT

Exit code 0 when Caffe ran the whole solve, 1 when it refused the setting (the
capture is still written, with Caffe's ``F`` line in caffe.log), 2 on bad input.
See docs/ORACLE.md.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "run", "DEFAULT_LAYERS"]

#: the three layers of the recorded fixture runs (multipliers 1/2, 0.5/2.0 without bias, 1.5 with a frozen bias)
DEFAULT_LAYERS = "7x3,5x2:nobias:lr_w=0.5:decay_w=2.0,3x4:lr_w=1.5:lr_b=0:decay_b=1"
DEFAULT_ITERS = 16

#: (flag, SolverParameter field, type)
_SOLVER_FLAGS = (
    ("--type", "type", str),
    ("--base-lr", "base_lr", float),
    ("--lr-policy", "lr_policy", str),
    ("--gamma", "gamma", float),
    ("--power", "power", float),
    ("--stepsize", "stepsize", int),
    ("--momentum", "momentum", float),
    ("--momentum2", "momentum2", float),
    ("--delta", "delta", float),
    ("--rms-decay", "rms_decay", float),
    ("--weight-decay", "weight_decay", float),
    ("--regularization-type", "regularization_type", str),
    ("--clip-gradients", "clip_gradients", float),
    ("--iter-size", "iter_size", int),
    ("--average-loss", "average_loss", int),
)


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``capture`` and its options."""
    from ..oracle import BLAS_CHOICES, GRAD_SPECIALS

    p = subparsers.add_parser(
        "capture",
        help="run real Caffe on injected gradients and record the run",
        description="Run real Caffe 1.0 (tools/install-caffe) on a gradient-injection net and write a capture "
        "folder (solver/net prototxt, inject.h5, init.caffemodel, caffe.log, gradients.npz, config.json, "
        "snapshots of every iteration).",
    )
    p.add_argument("out", metavar="OUT", help="the capture folder to write (refused if not empty, unless --force)")
    p.add_argument("--like", metavar="DIR", help="re-run real Caffe on the exact inputs of the capture in DIR")
    p.add_argument("--solver", metavar="FILE", help="take the solver settings from this solver.prototxt "
                   "(its net/test/snapshot/display fields are replaced by the capture's own); flags override it")
    g = p.add_argument_group("solver fields (Caffe's names; unset fields keep Caffe's defaults)")
    for flag, field, typ in _SOLVER_FLAGS:
        g.add_argument(flag, dest=f"f_{field}", type=typ, metavar=typ.__name__.upper(), help=field)
    g.add_argument("--stepvalue", dest="f_stepvalue", type=_int_list, metavar="N,N,...", help="stepvalue (multistep)")
    g.add_argument("--iters", type=int, metavar="N", help=f"iterations = max_iter (default: the solver's, else {DEFAULT_ITERS})")
    n = p.add_argument_group("net and gradients")
    n.add_argument("--layers", metavar="SPEC", help="layers 'DxO[:nobias][:lr_w=F][:decay_w=F][:lr_b=F][:decay_b=F],...' "
                   f"or a JSON file (default with generated gradients: {DEFAULT_LAYERS})")
    n.add_argument("--seed", type=int, default=1, help="generator seed and Caffe's random_seed (default 1)")
    n.add_argument("--grad-special", metavar="KINDS", default="",
                   help=f"inject special values into the gradients: comma-separated from {','.join(GRAD_SPECIALS)}")
    n.add_argument("--grad-rate", type=float, default=0.05, metavar="P", help="rate of special values per element (default 0.05)")
    n.add_argument("--grads", metavar="FILE.npz", help="use these gradients (grad/<iter>/<pass>/<layer>/<blob>) instead of generated ones")
    n.add_argument("--init", metavar="FILE", help="initial weights: a .caffemodel, or a .npz with init/<layer>/<blob>")
    r = p.add_argument_group("run")
    r.add_argument("--blas", choices=BLAS_CHOICES, help="the BLAS Caffe runs with (default openblas; with --like: the capture's)")
    r.add_argument("--resume-at", type=int, metavar="K", help="also resume from snapshots/run_iter_K.solverstate and record the continuation")
    r.add_argument("--force", action="store_true", help="replace a non-empty OUT")
    r.add_argument("--timeout", type=float, default=600, metavar="S", help="seconds allowed per caffe run (default 600)")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    """Capture one run; 0 ok, 1 Caffe refused the setting, 2 bad input."""
    from .. import oracle
    from ..errors import InputError

    if args.like:
        used = [f for f in ("solver", "layers", "grads", "init", "resume_at", "iters") if getattr(args, f, None) is not None]
        used += [flag for flag, field, _ in _SOLVER_FLAGS if getattr(args, f"f_{field}") is not None]
        if used or args.grad_special:
            raise InputError(None, f"--like re-runs an existing capture as it is; drop {', '.join(used) or '--grad-special'}")
        result = oracle.capture_like(args.like, args.out, blas=args.blas, force=args.force, timeout=args.timeout)
    else:
        fields: dict = oracle.solver_fields(args.solver) if args.solver else {}
        for _, field, _ in _SOLVER_FLAGS + (("--stepvalue", "stepvalue", list),):
            v = getattr(args, f"f_{field}")
            if v is not None:
                fields[field] = v
        if args.iters is not None:
            fields["max_iter"] = args.iters
        if args.grads:
            if args.grad_special:
                raise InputError(None, "--grad-special applies to generated gradients, not to --grads")
            gradients = args.grads
            layers = args.layers
        else:
            fields.setdefault("max_iter", DEFAULT_ITERS)
            specials = tuple(s.strip() for s in args.grad_special.split(",") if s.strip())
            gradients = oracle.GradientSpec(special=specials, rate=args.grad_rate)
            layers = args.layers or DEFAULT_LAYERS
        result = oracle.capture(fields, layers, gradients, args.out, blas=args.blas or "openblas", init=args.init,
                                seed=args.seed, resume_at=args.resume_at, force=args.force, timeout=args.timeout)
    what = f"{result.iterations} iteration(s), blas={result.blas}"
    if result.refused:
        print(f"caffe refused (exit {result.caffe_exit}): {result.fatal}\ncapture written to {result.path}", file=sys.stderr)
        return 1
    if result.resume_exit not in (None, 0):
        print(f"the resumed run failed (exit {result.resume_exit}); capture written to {result.path}", file=sys.stderr)
        return 1
    resumed = f", resumed at {args.resume_at}" if getattr(args, "resume_at", None) else ""
    print(f"captured {what}{resumed} into {result.path}")
    return 0
