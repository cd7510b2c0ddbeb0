#!/usr/bin/env python3
"""Scale: long lr schedules, a VGG-16-sized replay, the golden corpus, JIT cost, ``import harness``.

Each measure runs in a fresh Python process (``--child``), so that times
and peak RSS belong to that measure alone:

``schedule``
    ``harness.lr_schedule(config, 10_000_000)`` for every ``lr_policy``
    (warm: one call first), median of ``--repeat``. Target <= 0.1 s.
``vgg``
    a 3-iteration SGD trace with VGG-16's 32 learnable blobs (138,357,544
    float32 parameters, Caffe's layer shapes, bias ``lr_mult`` 2 /
    ``decay_mult`` 0), written once to ``--workdir`` as a golden trace
    (``docs/TRACE_FORMAT.md``; expectations from ``Reference``, origin
    ``reference``) by a streaming writer, then replayed with
    ``harness.replay.replay``: wall time (load and checksum, then replay)
    and peak RSS (``ru_maxrss`` of that process). Targets: <= 5 s and peak
    RSS <= 3x the parameter bytes.
``corpus``
    ``replay("golden/")``: every golden trace in the repository, in one
    process with a warm numba cache (a first run warms it). Target <= 10 s.
``jit``
    a process that imports ``harness``, then steps ``Reference`` once for
    each solver type and evaluates each lr policy, with ``NUMBA_CACHE_DIR``
    pointing at an empty directory (first-ever start: everything compiles)
    and again with that directory filled (warm start); during the warm
    start every numba dispatcher of ``harness.kernels`` must report cache
    hits and no cache misses.
``import``
    ``import harness`` alone: its time, and that numba is not even imported
    (so nothing can compile).

    python benchmarks/bench_scale.py [--only schedule,vgg,corpus,jit,import] [--json out.json]
                                     [--workdir /tmp/caffe-harness-bench] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

__all__ = ["VGG16_BLOBS", "MEASURES", "TARGETS", "vgg16_blobs", "build_trace", "build_vgg_trace", "measure", "render", "main"]

#: VGG-16 (Caffe's VGG_ILSVRC_16_layers) learnable blobs: (layer, weight shape, outputs)
VGG16_LAYERS = (
    ("conv1_1", (64, 3, 3, 3)), ("conv1_2", (64, 64, 3, 3)),
    ("conv2_1", (128, 64, 3, 3)), ("conv2_2", (128, 128, 3, 3)),
    ("conv3_1", (256, 128, 3, 3)), ("conv3_2", (256, 256, 3, 3)), ("conv3_3", (256, 256, 3, 3)),
    ("conv4_1", (512, 256, 3, 3)), ("conv4_2", (512, 512, 3, 3)), ("conv4_3", (512, 512, 3, 3)),
    ("conv5_1", (512, 512, 3, 3)), ("conv5_2", (512, 512, 3, 3)), ("conv5_3", (512, 512, 3, 3)),
    ("fc6", (4096, 25088)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096)),
)
#: (name, shape, lr_mult, decay_mult) of every learnable blob, net order: weights 1/1, biases 2/0
VGG16_BLOBS = tuple(
    b for name, shape in VGG16_LAYERS for b in ((f"{name}/0", shape, 1.0, 1.0), (f"{name}/1", (shape[0],), 2.0, 0.0))
)
MEASURES = ("import", "schedule", "jit", "corpus", "vgg")
TARGETS = {"schedule_s": 0.1, "vgg_s": 5.0, "vgg_rss_x_params": 3.0, "corpus_s": 10.0}
SCHEDULE_ITERS = 10_000_000
VGG_ITERS = 3
WORKDIR = Path(tempfile.gettempdir()) / "caffe-harness-bench"


def vgg16_blobs():
    """VGG-16's learnable blobs as ``BlobSpec`` (net order)."""
    from harness.config import BlobSpec

    return tuple(BlobSpec(n, tuple(s), lr, dm) for n, s, lr, dm in VGG16_BLOBS)


def _sgd_config(blobs, iters: int = VGG_ITERS):
    from harness.config import SolverConfig

    return SolverConfig.from_dict({
        "type": "SGD", "base_lr": 0.01, "lr_policy": "step", "gamma": 0.1, "stepsize": 100000, "max_iter": iters,
        "momentum": 0.9, "weight_decay": 0.0005,
        "blobs": [{"name": b.name, "shape": list(b.shape), "lr_mult": b.lr_mult, "decay_mult": b.decay_mult}
                  for b in blobs],
    })


# ---------------------------------------------------------------------------
# the VGG-16-sized golden trace, written without holding it in memory
# ---------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def build_vgg_trace(out: Path, seed: int = 0) -> Path:
    """Write the VGG-16-sized SGD trace to ``out`` (a golden trace directory); return it."""
    return build_trace(out, vgg16_blobs(), name="vgg16-sgd", seed=seed)


def build_trace(out: Path, blobs, *, name: str = "synthetic-sgd", iters: int = VGG_ITERS, seed: int = 0) -> Path:
    """Write an ``iters``-iteration SGD golden trace over ``blobs`` to ``out`` without holding it in memory.

    The manifest comes from ``write_golden`` on the same trace with every
    blob shrunk to one element; the full-size arrays are then written as
    version-1.0 ``.npy`` memory maps (expectations from ``Reference``) and
    the shapes, sizes and checksums of the manifest and ``SHA256SUMS``
    replaced by theirs. Returns ``out``.
    """
    import numpy as np

    from harness.config import BlobSpec
    from harness.io.golden import _manifest_bytes, write_golden
    from harness.reference import Reference
    from harness.trace import Iteration, Trace

    blobs = tuple(blobs)
    tiny = tuple(BlobSpec(b.name, (1,), b.lr_mult, b.decay_mult) for b in blobs)
    rng = np.random.default_rng(seed)

    def draw(spec, scale):
        x = rng.standard_normal(spec.count, dtype=np.float32)
        x *= np.float32(scale)
        return x.reshape(spec.shape)

    # the manifest template: same names, kinds, iterations and lr, one element per blob
    cfg_tiny = _sgd_config(tiny, iters)
    ref = Reference(cfg_tiny, {b.name: np.zeros(1, np.float32) for b in tiny})
    its = []
    for k in range(iters):
        g = {b.name: np.full(1, 0.001, np.float32) for b in tiny}
        r = ref.step(g)
        its.append(Iteration(k, [g], r.lr, r.params, r.diff, r.history, r.current_step))
    prov = {"origin": "reference", "blas": "openblas", "profile": "caffe-openblas",
            "note": "synthetic VGG-16-sized trace of benchmarks/bench_scale.py"}
    trace = Trace(name, cfg_tiny, {b.name: np.zeros(1, np.float32) for b in tiny}, its, provenance=prov)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write_golden(trace, tmp)
    manifest = json.loads((tmp / "trace.json").read_text())
    manifest["blobs"] = [{"name": b.name, "shape": list(b.shape), "lr_mult": b.lr_mult, "decay_mult": b.decay_mult}
                         for b in blobs]
    shapes = {b.name: b.shape for b in blobs}
    maps = {}
    for e in manifest["arrays"]:
        shape = tuple(e["shape"][:-1]) + tuple(shapes[e["blob"]])
        e["shape"] = list(shape)
        maps[(e["kind"], e["blob"], e.get("slot") or 0)] = np.lib.format.open_memmap(
            tmp / e["file"], mode="w+", dtype="<f4", shape=shape, version=(1, 0))

    def put(kind, name, row, value, slot=0):
        m = maps[(kind, name, slot)]
        if row is None:
            m[...] = value
        else:
            m[row] = value

    init = {b.name: draw(b, 0.05) for b in blobs}
    for b in blobs:
        put("init_params", b.name, None, init[b.name])
    ref = Reference(_sgd_config(blobs, iters), init)
    del init
    for k in range(iters):
        grads = {b.name: draw(b, 1e-3) for b in blobs}
        for b in blobs:
            put("grads", b.name, k, grads[b.name][None])
        r = ref.step(grads, copy=False)
        for b in blobs:
            put("params", b.name, k, r.params[b.name])
            put("diff", b.name, k, r.diff[b.name])
        for h, arr in enumerate(r.history):
            put("history", blobs[h % len(blobs)].name, k, arr)
        del grads, r
    del ref
    for m in maps.values():
        m.flush()
    maps.clear()
    for e in manifest["arrays"]:
        p = tmp / e["file"]
        e["bytes"] = p.stat().st_size
        e["sha256"] = _sha256_file(p)
    mraw = _manifest_bytes(manifest)
    (tmp / "trace.json").write_bytes(mraw)
    sums = [(hashlib.sha256(mraw).hexdigest(), "trace.json")] + [(e["sha256"], e["file"]) for e in manifest["arrays"]]
    (tmp / "SHA256SUMS").write_text("".join(f"{h}  {f}\n" for h, f in sums))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------
# children: one measure per process
# ---------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_import(_args) -> dict:
    t0 = time.perf_counter()
    importlib.import_module("harness")
    t = time.perf_counter() - t0
    return {"seconds": t, "numba_imported": "numba" in sys.modules,
            "kernel_modules_imported": sorted(m for m in sys.modules if m.startswith("harness.kernels")),
            "peak_rss_mb": _peak_rss_mb()}


def _child_schedule(args) -> dict:
    import numpy as np

    from harness import lr_schedule
    from harness.config import SolverConfig

    configs = {
        "fixed": {}, "step": {"gamma": 0.1, "stepsize": 100000}, "exp": {"gamma": 0.9999999},
        "inv": {"gamma": 0.0001, "power": 0.75}, "multistep": {"gamma": 0.5, "stepvalue": list(range(10**5, 10**7, 10**5))},
        "poly": {"power": 0.9, "max_iter": SCHEDULE_ITERS}, "sigmoid": {"gamma": 1e-6, "stepsize": 5 * 10**6},
    }
    out = {}
    for policy, extra in configs.items():
        cfg = SolverConfig.from_dict({"type": "SGD", "base_lr": 0.01, "lr_policy": policy, **extra})
        lr_schedule(cfg, 1000)
        ts = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            r = lr_schedule(cfg, SCHEDULE_ITERS)
            ts.append(time.perf_counter() - t0)
        out[policy] = {"seconds": statistics.median(ts), "runs": ts, "finite": bool(np.isfinite(r).all())}
    return {"iterations": SCHEDULE_ITERS, "policies": out}


def _replay_child(paths) -> dict:
    """``harness.replay(paths)``, timing the trace readers it calls apart (load and checksum vs the rest)."""
    import harness
    import harness.io.capture as capture_io
    import harness.io.golden as golden_io

    spent = {"load": 0.0}

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent["load"] += time.perf_counter() - t
        return wrapper

    golden_io.read_golden = timed(golden_io.read_golden)
    capture_io.load_capture = timed(capture_io.load_capture)
    t0 = time.perf_counter()
    results = harness.replay([str(p) for p in paths])
    total = time.perf_counter() - t0
    statuses: dict[str, int] = {}
    bad = []
    for res in results:
        statuses[res.status] = statuses.get(res.status, 0) + 1
        if res.status not in ("exact", "refused"):
            bad.append(f"{res.name}: {res.status} {res.message}")
    return {"runs": len(results), "seconds": total, "load_seconds": spent["load"],
            "replay_seconds": total - spent["load"], "statuses": statuses, "not_exact": bad[:10],
            "peak_rss_mb": _peak_rss_mb()}


def _child_replay(args) -> dict:
    return _replay_child(args.paths)


def _jit_workload() -> dict:
    """Step every solver type once and evaluate every lr policy (compiles what a replay needs)."""
    import numpy as np

    from harness import Reference, lr_schedule
    from harness.config import LR_POLICIES, SOLVER_TYPES, BlobSpec, SolverConfig

    times = {}
    blobs = (BlobSpec("ip0/0", (4, 3)), BlobSpec("ip0/1", (4,), 2.0, 0.0))
    for solver in SOLVER_TYPES:
        t0 = time.perf_counter()
        cfg = SolverConfig.from_dict({"type": solver, "base_lr": 0.01, "lr_policy": "fixed",
                                      "momentum": 0.0 if solver in ("AdaGrad", "RMSProp") else 0.9, "weight_decay": 0.0005,
                                      "blobs": [{"name": b.name, "shape": list(b.shape), "lr_mult": b.lr_mult,
                                                 "decay_mult": b.decay_mult} for b in blobs]})
        ref = Reference(cfg, {b.name: np.ones(b.shape, np.float32) for b in blobs})
        ref.step({b.name: np.full(b.shape, 0.5, np.float32) for b in blobs})
        times[solver] = time.perf_counter() - t0
    for policy in LR_POLICIES:
        t0 = time.perf_counter()
        cfg = SolverConfig.from_dict({"type": "SGD", "base_lr": 0.01, "lr_policy": policy, "gamma": 0.5, "power": 0.5,
                                      "stepsize": 10, "max_iter": 100, "stepvalue": [5, 10]})
        lr_schedule(cfg, 50)
        times[f"lr:{policy}"] = time.perf_counter() - t0
    return times


def _child_jit(_args) -> dict:
    t0 = time.perf_counter()
    importlib.import_module("harness")
    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    importlib.import_module("harness.reference")  # imports the kernels: compiled, or loaded from the cache
    t_kernels = time.perf_counter() - t1
    times = _jit_workload()
    total = time.perf_counter() - t0
    import numba

    from harness.kernels import lr_policy, update

    hits = misses = 0
    compiled = []
    for mod in (update, lr_policy):
        for name in dir(mod):
            obj = getattr(mod, name)
            if isinstance(obj, numba.core.dispatcher.Dispatcher) and obj.signatures:
                st = obj.stats
                hits += sum(st.cache_hits.values())
                m = sum(st.cache_misses.values())
                misses += m
                if m:
                    compiled.append(f"{mod.__name__.rsplit('.', 1)[1]}.{name}")
    return {"seconds": total, "import_seconds": t_import, "kernel_import_seconds": t_kernels,
            "workload_seconds": times, "cache_hits": hits, "cache_misses": misses, "compiled": sorted(compiled),
            "peak_rss_mb": _peak_rss_mb()}


_CHILDREN = {"import": _child_import, "schedule": _child_schedule, "replay": _child_replay, "jit": _child_jit}


def _spawn(kind: str, extra: list[str] | None = None, env: dict | None = None, timeout: float = 1800) -> dict:
    """Run ``--child kind`` in a fresh interpreter; its JSON result plus wall time and the children's peak RSS."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *(extra or [])]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["process_wall_seconds"] = wall
    return out


# ---------------------------------------------------------------------------
# measures
# ---------------------------------------------------------------------------
def _golden_paths() -> list[str]:
    gold = ROOT / "golden"
    if gold.is_dir() and any(gold.rglob("trace.json")):
        return [str(gold)]
    return []


def measure(name: str, args) -> dict:
    """Run one measure (see the module docstring); a dict with its numbers and targets."""
    if name == "import":
        r = _spawn("import")
        r["ok"] = not r["numba_imported"] and not r["kernel_modules_imported"]
        return r
    if name == "schedule":
        r = _spawn("schedule", ["--repeat", str(args.repeat)])
        worst = max(v["seconds"] for v in r["policies"].values())
        r.update(worst_seconds=worst, target_seconds=TARGETS["schedule_s"], met=worst <= TARGETS["schedule_s"])
        return r
    if name == "jit":
        cache = Path(tempfile.mkdtemp(prefix="numba-cache-"))
        try:
            env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
            first = _spawn("jit", env=env)
            warm = _spawn("jit", env=env)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        return {"first_ever": first, "warm": warm, "warm_compiles_nothing": warm["cache_misses"] == 0 and not warm["compiled"]}
    if name == "corpus":
        paths = _golden_paths()
        if not paths:
            return {"skipped": "no golden traces in golden/ yet"}
        _spawn("replay", ["--paths", *paths])  # warms the numba cache
        r = _spawn("replay", ["--paths", *paths])
        r.update(target_seconds=TARGETS["corpus_s"], met=r["seconds"] <= TARGETS["corpus_s"])
        return r
    if name == "vgg":
        work = Path(args.workdir)
        trace = work / "vgg16-sgd-3"
        built = None
        if args.rebuild or not (trace / "SHA256SUMS").is_file():
            work.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            build_vgg_trace(trace)
            built = time.perf_counter() - t0
        params = sum(int(__import__("math").prod(s)) for _, s, _, _ in VGG16_BLOBS)
        _spawn("replay", ["--paths", str(ROOT / "fixtures" / "caffe-runs" / "sgd-multistep")])  # warm the cache
        r = _spawn("replay", ["--paths", str(trace)])
        pbytes = params * 4
        r.update(params=params, param_mb=pbytes / 2**20, trace_mb=sum(f.stat().st_size for f in trace.iterdir()) / 2**20,
                 build_seconds=built, rss_x_params=r["peak_rss_mb"] * 2**20 / pbytes,
                 met_time=r["seconds"] <= TARGETS["vgg_s"], met_rss=r["peak_rss_mb"] * 2**20 <= TARGETS["vgg_rss_x_params"] * pbytes)
        return r
    raise ValueError(name)


def render(out: dict) -> str:
    """A Markdown summary of a result dict."""
    lines = [f"Run {out['date']}: `{out['command']}` (load {out['load_at_start']} -> {out.get('load_at_end')})", ""]
    m = out["measures"]
    if "import" in m:
        r = m["import"]
        lines.append(f"- `import harness`: {r['seconds'] * 1e3:.0f} ms, numba imported: {r['numba_imported']}, "
                     f"kernel modules imported: {r['kernel_modules_imported'] or 'none'}")
    if "schedule" in m:
        r = m["schedule"]
        per = ", ".join(f"{k} {v['seconds'] * 1e3:.0f} ms" for k, v in r["policies"].items())
        lines.append(f"- lr_schedule of {r['iterations']:,} iterations: {per} (worst {r['worst_seconds']:.3f} s; "
                     f"target <= {r['target_seconds']} s: {'met' if r['met'] else 'MISSED'})")
    if "jit" in m:
        f, w = m["jit"]["first_ever"], m["jit"]["warm"]
        lines.append(f"- JIT: first-ever start {f['seconds']:.1f} s (kernel modules {f['kernel_import_seconds']:.1f} s, "
                     f"{f['cache_misses']} compilations), warm start {w['seconds']:.2f} s (kernel modules "
                     f"{w['kernel_import_seconds']:.2f} s, {w['cache_hits']} cache hits, {w['cache_misses']} misses"
                     f"{': ' + ', '.join(w['compiled']) if w['compiled'] else ''})")
    if "corpus" in m:
        r = m["corpus"]
        if "skipped" in r:
            lines.append(f"- golden corpus: skipped ({r['skipped']})")
        else:
            lines.append(f"- golden corpus: {r['runs']} traces replayed in {r['seconds']:.2f} s warm (load "
                         f"{r['load_seconds']:.2f} s, replay {r['replay_seconds']:.2f} s), {r['statuses']}; target <= "
                         f"{r['target_seconds']} s: {'met' if r['met'] else 'MISSED'}; peak RSS {r['peak_rss_mb']:.0f} MB")
    if "vgg" in m:
        r = m["vgg"]
        lines.append(f"- VGG-16 replay ({r['params']:,} params, {r['param_mb']:.0f} MB per copy, trace {r['trace_mb']:.0f} MB "
                     f"on disk, {VGG_ITERS} iterations): {r['seconds']:.1f} s (load+verify {r['load_seconds']:.1f} s, "
                     f"replay {r['replay_seconds']:.1f} s), {r['statuses']}; peak RSS {r['peak_rss_mb']:.0f} MB = "
                     f"{r['rss_x_params']:.1f}x the parameter bytes; targets <= {TARGETS['vgg_s']} s: "
                     f"{'met' if r['met_time'] else 'MISSED'}, <= {TARGETS['vgg_rss_x_params']}x: "
                     f"{'met' if r['met_rss'] else 'MISSED'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run the measures asked for; print a summary and write ``--json``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(MEASURES), help=f"comma-separated subset of {','.join(MEASURES)}")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--workdir", default=str(WORKDIR), help="where the VGG-16 trace is built (kept for reuse)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the VGG-16 trace")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--paths", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_CHILDREN[args.child](args)))
        return 0
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in MEASURES]
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)} (known: {', '.join(MEASURES)})")
    out = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": " ".join(["python benchmarks/bench_scale.py"] + argv),
           "python": platform.python_version(), "load_at_start": [round(x, 2) for x in os.getloadavg()],
           "targets": TARGETS, "measures": {}}
    for n in names:
        t0 = time.perf_counter()
        out["measures"][n] = measure(n, args)
        out["measures"][n]["measure_seconds"] = time.perf_counter() - t0
        print(render({**out, "measures": {n: out["measures"][n]}}).splitlines()[-1], flush=True)
    out["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(render(out))
    if args.json:
        from harness.io.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
