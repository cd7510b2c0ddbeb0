"""``caffe-harness golden``: make, check and show golden traces.

* ``golden from-capture DIR OUT`` -- one capture (a recorded real-Caffe run) to
  one golden trace; ``--all`` converts every capture under DIR into the same
  tree under OUT. Each trace is read back and compared bit for bit before the
  command reports success.
* ``golden verify PATH...`` -- every checksum and the manifests' consistency;
  PATH may be a trace or a tree of traces. Exit 0 when all are intact, 1 when
  any problem is found (one line per problem).
* ``golden show PATH`` -- a summary of one trace.
* ``golden generate OUT --solver S --layers SPEC`` -- a golden for your own
  solver and blob spec, with seeded injected gradients: from real Caffe when
  it is installed (``tools/install-caffe``), else from the reference solver;
  ``provenance.origin`` says which.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import InputError

__all__ = ["add_parser", "run", "generate_trace"]


def add_parser(subparsers) -> None:
    """Register ``golden`` and its subcommands."""
    p = subparsers.add_parser(
        "golden",
        help="make, verify and show golden traces (docs/TRACE_FORMAT.md)",
        description="Golden traces: checksummed, language-neutral solver traces (docs/TRACE_FORMAT.md).",
    )
    sub = p.add_subparsers(dest="golden_command", metavar="SUBCOMMAND")
    sub.required = True

    fc = sub.add_parser("from-capture", help="convert a capture (real Caffe run) into a golden trace")
    fc.add_argument("capture", metavar="DIR", help="capture directory (docs/CAPTURE_FORMAT.md), or a tree of them with --all")
    fc.add_argument("out", metavar="OUT", help="golden trace directory to write (a tree with --all)")
    fc.add_argument("--all", action="store_true", help="convert every capture under DIR, keeping its relative path under OUT")
    fc.add_argument("--part", choices=("run", "resume"), default=None,
                    help="for a resumed capture: the straight run or the continuation (default: the continuation when there is one)")
    fc.add_argument("--force", action="store_true", help="replace existing traces")
    fc.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    fc.set_defaults(func=run_from_capture)

    v = sub.add_parser("verify", help="check checksums and manifests; exit 1 if anything was tampered with")
    v.add_argument("paths", metavar="PATH", nargs="+", help="golden trace directories, or trees holding them")
    v.add_argument("--quiet", "-q", action="store_true", help="print only problems")
    v.set_defaults(func=run_verify)

    s = sub.add_parser("show", help="summarize a golden trace")
    s.add_argument("path", metavar="PATH", help="golden trace directory")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--iterations", action="store_true", help="list every iteration's lr and current_step")
    s.set_defaults(func=run_show)
    g = sub.add_parser("generate", help="a golden for your own solver and layers (real Caffe if installed, else the reference)")
    g.add_argument("out", metavar="OUT", help="golden trace directory to write")
    g.add_argument("--solver", required=True, metavar="SOLVER", help="solver.prototxt with the settings to trace (its net is ignored)")
    g.add_argument("--layers", required=True, metavar="SPEC",
                   help="InnerProduct layers, e.g. '7x3,5x2:nobias:lr_w=0.5' or a JSON file (docs/ORACLE.md)")
    g.add_argument("--iters", type=int, default=None, help="iterations (default: the solver's max_iter)")
    g.add_argument("--seed", type=int, default=1, help="seed of the injected gradients and initial weights (default 1)")
    g.add_argument("--grad-special", default="", metavar="KINDS", help="inject special values: comma list of zeros,subnormal,huge,nan,inf")
    g.add_argument("--grad-rate", type=float, default=0.05, help="rate of special values (default 0.05)")
    g.add_argument("--blas", default="openblas", choices=("openblas", "reference", "atlas"),
                   help="BLAS build of Caffe (or the arithmetic profile of the reference) (default openblas)")
    g.add_argument("--from", dest="use", choices=("auto", "caffe", "reference"), default="auto",
                   help="where expectations come from: auto = real Caffe when installed, else the reference")
    g.add_argument("--keep-capture", metavar="DIR", help="with real Caffe: also keep the capture directory here")
    g.add_argument("--force", action="store_true", help="replace an existing OUT")
    g.set_defaults(func=run_generate)
    p.set_defaults(func=run)


def run(args) -> int:
    """Dispatch to the chosen ``golden`` subcommand."""
    return args.func(args)


# --------------------------------------------------------------------------
def _find_traces(path: Path) -> list[Path]:
    """Golden traces at or under ``path``: directories with a manifest or a checksum file
    (so a trace whose trace.json was deleted is still found, and reported)."""
    from ..io.golden import CHECKSUMS, MANIFEST

    def looks_golden(d: Path, files) -> bool:
        return MANIFEST in files or CHECKSUMS in files

    if not path.exists():
        raise InputError(path, "no such file or directory")
    if not path.is_dir():
        raise InputError(path, "not a golden trace directory")
    if looks_golden(path, os.listdir(path)):
        return [path]
    found = sorted(Path(d) for d, _, files in os.walk(path) if looks_golden(Path(d), files))
    if not found:
        raise InputError(path, "no golden trace (trace.json) under this directory")
    return found


def run_from_capture(args) -> int:
    """Convert one capture (or, with ``--all``, a tree of captures) into golden traces."""
    from ..io.capture import capture_parts, find_captures, is_capture, load_capture
    from ..io.golden import read_golden, trace_differences, write_golden

    src, out = Path(args.capture), Path(args.out)
    if args.all:
        caps = find_captures(src)
        if not caps:
            raise InputError(src, "no capture (solver.prototxt + gradients.npz) under this directory")
        pairs = [(c, out / c.relative_to(src)) for c in caps]
    else:
        if not src.is_dir():
            raise InputError(src, "no such capture directory" if not src.exists() else "not a directory")
        if not is_capture(src):
            raise InputError(src, "not a capture (no solver.prototxt + gradients.npz); use --all for a tree of captures")
        pairs = [(src, out)]
    if not args.force:
        for _, o in pairs:
            if o.exists():
                raise InputError(o, "already exists; use --force to replace it")
    for c, o in pairs:
        part = args.part
        if part == "resume" and args.all and "resume" not in capture_parts(c):
            part = None  # in a tree, captures without a continuation convert as they are
        trace = load_capture(c, part=part)
        write_golden(trace, o, overwrite=args.force)
        diffs = trace_differences(trace, read_golden(o))
        if diffs:  # pragma: no cover - a bug in the writer, never expected
            raise InputError(o, f"does not read back as written: {diffs[0]}")
        if not args.quiet:
            n = len(trace.iterations)
            what = f"refused ({trace.refusal_when}): {trace.refusal}" if trace.refusal else f"{n} iterations"
            print(f"{o}: {trace.config.type} {trace.config.lr_policy or '(no lr_policy)'}, {trace.blas}, {what}")
    return 0


def run_verify(args) -> int:
    """Verify golden traces; 0 if all intact, 1 if any problem."""
    from ..io.golden import verify_golden

    traces: list[Path] = []
    for p in args.paths:
        traces += _find_traces(Path(p))
    bad = 0
    for t in traces:
        problems = verify_golden(t)
        if problems:
            bad += 1
            for e in problems:
                print(e)
        elif not args.quiet:
            print(f"{t}: ok")
    if bad:
        print(f"caffe-harness: {bad} of {len(traces)} golden trace(s) failed verification", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"{len(traces)} golden trace(s) intact", file=sys.stderr)
    return 0


def _lr_text(lr) -> str:
    from ..io.golden import _f32_decimal, _f32_hex

    return "-" if lr is None else f"{_f32_decimal(lr)} ({_f32_hex(lr)})"


def run_show(args) -> int:
    """Print a summary of one golden trace (verified first)."""
    from ..io.golden import read_golden

    path = Path(args.path)
    t = read_golden(path)
    cfg = t.config
    its = t.iterations
    nfiles = sum(1 for f in path.iterdir() if f.is_file())
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    expected = sum(1 for it in its if it.params is not None)
    summary = {
        "path": os.fspath(path),
        "name": t.name,
        "origin": t.provenance.get("origin"),
        "provenance": t.provenance,
        "source": t.source,
        "solver": {
            "type": cfg.type,
            "lr_policy": cfg.lr_policy,
            "base_lr": cfg.base_lr,
            "max_iter": cfg.max_iter,
            "iter_size": cfg.iter_size,
        },
        "blobs": [{"name": b.name, "shape": list(b.shape), "lr_mult": b.lr_mult, "decay_mult": b.decay_mult} for b in cfg.blobs],
        "init": {"iter": t.init_iter, "current_step": t.init_current_step, "history": t.init_history is not None},
        "iterations": len(its),
        "iterations_with_expected_state": expected,
        "refusal": None if t.refusal is None else {"message": t.refusal, "when": t.refusal_when},
        "files": nfiles,
        "bytes": size,
    }
    if args.iterations:
        summary["lr"] = [{"iter": it.iter, "lr": _lr_text(it.lr), "current_step": it.current_step} for it in its]
    if args.format == "json":
        print(json.dumps(summary, indent=1, default=str))
        return 0
    p = t.provenance
    print(f"{path}: golden trace {t.name!r}, origin {p.get('origin')} (blas {p.get('blas')}, caffe {p.get('caffe_version') or '?'})")
    print(f"  solver: {cfg.type}, lr_policy {cfg.lr_policy or '(unset)'}, base_lr {cfg.base_lr:g}, max_iter {cfg.max_iter}, iter_size {cfg.iter_size}")
    print("  blobs: " + ", ".join(f"{b.name} {'x'.join(map(str, b.shape)) or 'scalar'} (lr_mult {b.lr_mult:g}, decay_mult {b.decay_mult:g})" for b in cfg.blobs))
    start = f"resumed at iter {t.init_iter}, current_step {t.init_current_step}" if t.init_history is not None or t.init_iter else "fresh start"
    print(f"  {len(its)} iterations ({its[0].iter}..{its[-1].iter}), {expected} with expected state, {start}" if its else f"  no iterations, {start}")
    if t.refusal:
        print(f"  Caffe refused ({t.refusal_when}): {t.refusal}")
    if its and its[0].lr is not None:
        print(f"  lr: first {_lr_text(its[0].lr)}, last {_lr_text(its[-1].lr)} [{p.get('lr_precision', 'float32')}]")
    for k in ("date", "cpu_flags", "harness_version", "capture"):
        if p.get(k) is not None:
            print(f"  {k}: {p[k]}")
    print(f"  {nfiles} files, {size} bytes, all checksums verified")
    if args.iterations:
        for it in its:
            print(f"    iter {it.iter}: lr {_lr_text(it.lr)}, current_step {it.current_step if it.current_step is not None else '-'}")
    return 0


# --------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------
def generate_trace(
    solver,
    layers,
    *,
    iters: int | None = None,
    seed: int = 1,
    special=(),
    rate: float = 0.05,
    blas: str = "openblas",
    use: str = "auto",
    capture_dir=None,
):
    """A ``Trace`` for ``solver`` (a solver.prototxt path) on injection-net ``layers``.

    Gradients and initial weights come from ``harness.oracle``'s seeded
    generator (``seed``, ``special`` kinds at ``rate``), so both sources see
    the same inputs. ``use``: ``"caffe"`` runs real Caffe (``harness.oracle.capture``,
    ``OracleUnavailable`` when not installed) and loads the capture;
    ``"reference"`` runs ``harness.reference.Reference`` in the profile of
    ``blas``; ``"auto"`` picks Caffe when installed. ``provenance.origin`` is
    ``"caffe"`` or ``"reference"`` accordingly.
    """
    import tempfile

    from .. import oracle
    from ..errors import OracleUnavailable

    if use not in ("auto", "caffe", "reference"):
        raise InputError(None, f"use is {use!r}, expected auto, caffe or reference")
    spec = oracle.GradientSpec(special=tuple(special), rate=rate)
    lspecs = oracle.parse_layers(layers)
    if use in ("auto", "caffe"):
        try:
            install = oracle.find_caffe()
        except OracleUnavailable:
            if use == "caffe":
                raise
            install = None
        if install is not None:
            from ..io.capture import load_capture

            fields = oracle.solver_fields(solver)
            if iters is not None:
                fields["max_iter"] = int(iters)
            with tempfile.TemporaryDirectory(prefix="golden-generate-") as tmp:
                out = Path(capture_dir) if capture_dir else Path(tmp) / "capture"
                oracle.capture(fields, lspecs, spec, out, blas=blas, seed=seed, install=install)
                trace = load_capture(out)
            trace.name = _generated_name(solver)
            trace.source = os.fspath(capture_dir) if capture_dir else f"generated: {solver}"
            return trace
    return _reference_trace(solver, lspecs, spec, iters=iters, seed=seed, blas=blas)


def _generated_name(solver) -> str:
    p = Path(solver)
    return p.stem if p.stem != "solver" else p.resolve().parent.name


def _reference_trace(solver, layers, spec, *, iters, seed, blas):
    from .. import __version__, oracle
    from ..config import BlobSpec, config_from_proto, config_refusals, f32, update_refusals
    from ..errors import CaffeRefusal
    from ..io.solver import read_solver_parameter
    from ..reference import Reference, profile_for_blas
    from ..trace import Iteration, Trace

    param = read_solver_parameter(solver)
    if iters is not None:
        param.max_iter = int(iters)
    blobs = []
    for j, l in enumerate(layers):
        n = l.layer_name(j)
        blobs.append(BlobSpec(f"{n}/0", (l.O, l.D), f32(l.lr_w), f32(l.decay_w)))
        if l.bias:
            blobs.append(BlobSpec(f"{n}/1", (l.O,), f32(l.lr_b), f32(l.decay_b)))
    cfg = config_from_proto(param, source=os.fspath(solver), blobs=tuple(blobs))
    n_iter = cfg.max_iter
    injection, init = oracle.generate_injection(layers, n_iter, max(cfg.iter_size, 1), spec, seed=seed)
    grads = injection.gradients()
    names = [b.name for b in blobs]

    def passes(k):
        return [{n: grads[f"grad/{k}/{p}/{n}"] for n in names} for p in range(injection.iter_size)]

    profile = profile_for_blas(blas)
    refusal = None
    start = config_refusals(cfg)
    if start:
        refusal = start[0]
    else:
        first = update_refusals(cfg)
        refusal = first[0] if first else None
    iterations = []
    if refusal is None:
        ref = Reference(cfg, init, profile=profile)
        for k in range(n_iter):
            try:
                rec = ref.step(passes(k))
            except CaffeRefusal as r:
                refusal = r
                iterations = []
                break
            iterations.append(Iteration(
                iter=k, grads=passes(k), lr=float(rec.lr), params=dict(rec.params), diff=dict(rec.diff),
                history=list(rec.history), current_step=int(rec.current_step),
            ))
    if refusal is not None:
        iterations = [Iteration(iter=k, grads=passes(k)) for k in range(n_iter)]
    provenance = {
        "origin": "reference",
        "blas": blas,
        "profile": profile,
        "caffe_version": None,
        "blas_version": None,
        "cpu_flags": None,
        "date": None,  # a reference trace is a pure function of its inputs
        "harness_version": __version__,
        "seed": seed,
        "layers": [l.to_dict() for l in layers],
        "gradients": spec.to_dict(),
    }
    if refusal is not None and refusal.caffe_file:
        provenance["refusal_at"] = refusal.caffe_file
    return Trace(
        name=_generated_name(solver),
        config=cfg,
        init_params={n: init[n] for n in names},
        iterations=iterations,
        provenance=provenance,
        refusal=None if refusal is None else refusal.message,
        refusal_when=None if refusal is None else refusal.when,
        source=f"generated: {solver}",
    )


def run_generate(args) -> int:
    """``golden generate``: trace a user's solver on injected gradients and write it as a golden."""
    from ..io.golden import write_golden

    out = Path(args.out)
    if out.exists() and not args.force:
        raise InputError(out, "already exists; use --force to replace it")
    special = tuple(s for s in args.grad_special.split(",") if s)
    trace = generate_trace(
        args.solver, args.layers, iters=args.iters, seed=args.seed, special=special, rate=args.grad_rate,
        blas=args.blas, use=args.use, capture_dir=args.keep_capture,
    )
    write_golden(trace, out, overwrite=args.force)
    p = trace.provenance
    what = f"refused ({trace.refusal_when}): {trace.refusal}" if trace.refusal else f"{len(trace.iterations)} iterations"
    print(f"{out}: origin {p['origin']} ({p.get('caffe_version') or p.get('profile')}), {trace.config.type} "
          f"{trace.config.lr_policy or '(no lr_policy)'}, {what}")
    return 0
