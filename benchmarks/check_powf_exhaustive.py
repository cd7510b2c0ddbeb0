#!/usr/bin/env python3
"""glibc ``powf(x, 2)`` and ``powf(x, 0.5)`` on all 2^32 float inputs, against vectorizable forms.

Caffe's ``caffe_powx`` calls glibc ``powf`` per element (AdaGrad, RMSProp,
AdaDelta: ``powx(g, 2)`` and ``powx(., 0.5)``; Adam: ``powx(v, 0.5)``); that
call is the speed limit of those solvers unless it is replaced by something
vectorizable with the same bits. This script runs glibc's ``powf`` (the
``powf32`` symbol the kernels and, through ``powf@GLIBC_2.27``, libcaffe
call) on every float32 bit pattern and reports, per exponent:

* where glibc differs from the correctly rounded value (``fl(x*x)``,
  ``sqrtf(x)``): how many inputs, of which kind (zero, subnormal, normal,
  inf, NaN, negative), and the largest distance from a rounding midpoint
  (in ulps) of an exact result that glibc rounded the other way. glibc's
  ``powf`` computes ``exp2(y*log2 x)`` in double and rounds once, so it
  errs only next to midpoints;
* for the certified forms (``_square``/``_root`` of the kernel module: the
  correctly rounded value plus a flag ``certain``): the number of inputs
  flagged certain whose bits differ from glibc's (must be 0: that is the
  proof), and how many are left uncertain (the kernels call glibc for
  those).

    python benchmarks/check_powf_exhaustive.py [--kernels FILE] [--exponents 2,0.5]
                                               [--stride 1] [--json out.json]

``--kernels`` names an ``update.py`` that defines ``_square`` and ``_root``
(default: ``harness.kernels.update``). ``--stride K`` checks every K-th bit
pattern only (a smoke test; the proof needs stride 1). Exit 0 when no
certified input differs, 1 otherwise, 2 when the module has no forms to
check (the serial kernels, before the patch of docs/PERFORMANCE.md). About
2^32 x 5 ns / threads per exponent.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

import numba  # noqa: E402
import numpy as np  # noqa: E402
from llvmlite import ir  # noqa: E402
from numba import types  # noqa: E402
from numba.extending import intrinsic  # noqa: E402

__all__ = ["KINDS", "NoForms", "load_forms", "check_exponent", "main"]

#: input classes, in the order of the count arrays
KINDS = ("zero", "subnormal", "normal", "inf", "nan")
_BLOCKS = 4096


if numba.config.DISABLE_JIT:  # plain Python (the tests' NUMBA_DISABLE_JIT run): numpy bit casts

    def _bits(x):
        return np.float32(x).view(np.uint32)

    def _float(b):
        return np.uint32(b).view(np.float32)

else:

    @intrinsic
    def _bits(typingctx, x):
        if x != types.float32:
            return None

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], ir.IntType(32))

        return types.uint32(x), codegen

    @intrinsic
    def _float(typingctx, b):
        if not isinstance(b, types.Integer):
            return None

        def codegen(context, builder, sig, args):
            v = args[0]
            if b.bitwidth != 32:
                v = builder.trunc(v, ir.IntType(32))
            return builder.bitcast(v, ir.FloatType())

        return types.float32(b), codegen


class NoForms(Exception):
    """The kernel module has no certified forms to check."""


def load_forms(path: str | None = None):
    """The module holding ``powf``, ``_square`` and ``_root`` (see the module docstring)."""
    if path is None:
        from harness.kernels import update as mod
    else:
        p = Path(path).resolve()
        sys.path.insert(0, str(p.parent))
        mod = importlib.import_module(p.stem)
    missing = [n for n in ("powf", "_square", "_root") if not hasattr(mod, n)]
    if missing:
        raise NoForms(f"{mod.__file__}: no {', '.join(missing)}: these kernels call glibc powf for every element "
                      f"(nothing to certify); pass --kernels FILE with the certified forms")
    return mod


def _make_checker(mod):
    powf, square, root = mod.powf, mod._square, mod._root

    @numba.njit(parallel=True, error_model="numpy", nogil=True)
    def check(y, start, stop, stride, plain_mis, cert_mis, uncertain, max_delta, first_bad, in_range):
        """Blocks ``start..stop`` of the 2^32 patterns; per block counts by input kind.

        ``in_range[blk] = (inputs, uncertain ones)`` among those whose correctly
        rounded result is a finite normal float (and ``x > 0`` for the root).
        """
        per = (1 << 32) // _BLOCKS
        for blk in numba.prange(start, stop):
            lo = np.int64(blk) * per
            for j in range(0, per, stride):
                b = np.uint32(lo + j)
                x = _float(b)
                e = (b >> 23) & 0xFF
                m = b & 0x7FFFFF
                kind = 2
                if e == 0:
                    kind = 0 if m == 0 else 1
                elif e == 0xFF:
                    kind = 3 if m == 0 else 4
                r = powf(x, y)
                if y == np.float32(2):
                    c, ok = square(x)
                    xd = np.float64(x)
                    ex = xd * xd
                    plain = x * x
                else:
                    c, ok = root(x)
                    ex = np.sqrt(np.float64(x))
                    plain = np.sqrt(x)
                rb = _bits(r)
                pa = _bits(abs(plain)) >> 23
                if 0 < pa < 0xFF and (y == np.float32(2) or x > 0):
                    in_range[blk, 0] += 1
                    if not ok:
                        in_range[blk, 1] += 1
                if _bits(plain) != rb:
                    plain_mis[blk, kind] += 1
                    p = np.float32(ex)
                    pe = (np.int64(_bits(abs(p))) >> 23) & 0xFF
                    if 0 < pe < 0xFF and ex == ex:  # a finite normal result: its distance from the midpoint
                        ulp = 2.0 ** (pe - 150)
                        d = 0.5 - abs(ex - np.float64(p)) / ulp
                        if d > max_delta[blk]:
                            max_delta[blk] = d
                if ok:
                    if _bits(c) != rb:
                        cert_mis[blk, kind] += 1
                        if first_bad[blk] < 0:
                            first_bad[blk] = b
                else:
                    uncertain[blk, kind] += 1

    return check


def check_exponent(mod, y: float, stride: int = 1, progress=None) -> dict:
    """Run all 2^32 patterns (every ``stride``-th) for exponent ``y``; the summary dict."""
    check = _make_checker(mod)
    shape = (_BLOCKS, len(KINDS))
    plain_mis, cert_mis, uncertain = (np.zeros(shape, np.int64) for _ in range(3))
    max_delta = np.full(_BLOCKS, -1.0)
    first_bad = np.full(_BLOCKS, -1, np.int64)
    in_range = np.zeros((_BLOCKS, 2), np.int64)
    t0 = time.perf_counter()
    step = 256
    for start in range(0, _BLOCKS, step):
        check(np.float32(y), start, start + step, stride, plain_mis, cert_mis, uncertain, max_delta, first_bad,
              in_range)
        if progress:
            progress(start + step, _BLOCKS, time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    total = (1 << 32) // stride
    per_kind = lambda a: {k: int(v) for k, v in zip(KINDS, a.sum(axis=0))}  # noqa: E731
    bad = [int(b) for b in first_bad if b >= 0]
    md = float(max_delta.max())
    ir = in_range.sum(axis=0)
    return {
        "exponent": y,
        "inputs": total,
        "stride": stride,
        "seconds": round(seconds, 1),
        "glibc_vs_correctly_rounded": {
            "differ": int(plain_mis.sum()),
            "by_kind": per_kind(plain_mis),
            "max_midpoint_distance_ulp": md if md >= 0 else None,
            "max_midpoint_distance_log2": float(np.log2(md)) if md > 0 else None,
        },
        "certified": {
            "differ": int(cert_mis.sum()),
            "by_kind": per_kind(cert_mis),
            "first_bad_bits": [f"0x{b:08x}" for b in bad[:5]],
        },
        "uncertain": {
            "count": int(uncertain.sum()),
            "by_kind": per_kind(uncertain),
            "in_range_inputs": int(ir[0]),
            "in_range_uncertain": int(ir[1]),
            "in_range_pct": 100.0 * int(ir[1]) / max(1, int(ir[0])),
        },
    }


def main(argv=None) -> int:
    """Check every exponent asked for; print a summary and write ``--json``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kernels", default=None, help="update.py with the certified forms (default: see above)")
    ap.add_argument("--exponents", default="2,0.5", help="comma-separated: 2 and/or 0.5")
    ap.add_argument("--stride", type=int, default=1, help="check every K-th bit pattern (1 = all: the proof)")
    ap.add_argument("--json", default=None, help="write the summary here")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    try:
        mod = load_forms(args.kernels)
    except NoForms as e:
        print(f"check_powf_exhaustive: {e}", file=sys.stderr)
        return 2
    exps = [float(e) for e in args.exponents.split(",")]
    if any(e not in (2.0, 0.5) for e in exps) or args.stride < 1:
        ap.error("--exponents takes 2 and/or 0.5; --stride must be >= 1")
    out = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/check_powf_exhaustive.py"] + list(argv if argv is not None
                                                                                  else sys.argv[1:])),
        "forms_from": str(Path(mod.__file__).resolve()),
        "powf_symbol": getattr(mod, "_POWF_NAME", "powf"),
        "glibc": platform.libc_ver()[1],
        "cpu_flags": [f for f in ("fma", "avx2") if f in Path("/proc/cpuinfo").read_text()],
        "numba_threads": numba.get_num_threads(),
        "results": [],
    }

    def progress(done, total, secs):
        if not args.quiet:
            print(f"\r  {done}/{total} blocks, {secs:.0f} s", end="", flush=True)

    ok = True
    for y in exps:
        if not args.quiet:
            print(f"powf(x, {y:g}) over {(1 << 32) // args.stride} inputs:")
        r = check_exponent(mod, y, args.stride, progress)
        out["results"].append(r)
        ok &= r["certified"]["differ"] == 0
        if not args.quiet:
            g, c, u = r["glibc_vs_correctly_rounded"], r["certified"], r["uncertain"]
            far = g["max_midpoint_distance_log2"]
            print(f"\r  {r['seconds']:.0f} s; glibc differs from the correctly rounded value on {g['differ']} inputs "
                  f"{g['by_kind']}; farthest from a midpoint among normal results: "
                  + (f"{g['max_midpoint_distance_ulp']:.3g} ulp (2^{far:.2f})" if far is not None else "-"))
            print(f"  certified inputs differing from glibc: {c['differ']} {c['by_kind']} {c['first_bad_bits']}")
            print(f"  uncertain (glibc is called): {u['count']} {u['by_kind']}; {u['in_range_pct']:.3f}% of the "
                  f"{u['in_range_inputs']} inputs with a normal result")
    out["proved"] = ok and args.stride == 1
    if args.json:
        from harness.io.files import write_text_atomic

        write_text_atomic(args.json, json.dumps(out, indent=1) + "\n")
    if not args.quiet:
        print("PROVED: every certified input equals glibc's powf" if out["proved"] else
              ("no certified input differs (sampled, not a proof)" if ok else "FAILED: certified inputs differ"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
