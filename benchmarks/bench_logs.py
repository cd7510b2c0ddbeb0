#!/usr/bin/env python3
"""Throughput of the Caffe log parser (``harness.logs``) on a large synthetic log.

Writes a log of ``--mb`` megabytes (default 256) to ``--out`` (default
``/tmp/caffe-harness-bench.log``) built from the line shapes real Caffe prints
(``fixtures/caffe-runs/*/caffe.log``): the start-up block with the solver
parameters and the net set-up, then per iteration the display line, train net
outputs with loss weights, MultiStep status, the lr line, gradient clipping,
snapshots, and every ``--test-interval`` iterations a test phase; foreign
lines are interleaved. Then times ``read_runs`` (compact series, the path the
CLI uses; on a file this large, the numba scanner) and ``parse_log`` (one
record object per line) on one core and prints MB/s. The first ``read_runs``
call, which starts numba, is timed apart (``first call``); ``--regex`` also
times ``read_runs`` through the regex passes it takes for small files.

    python benchmarks/bench_logs.py [--mb 256] [--out PATH] [--keep] [--repeat 3] [--regex]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness import logs  # noqa: E402
from harness.logs import parse_log, read_runs  # noqa: E402

HEADER_LOG = os.path.join(os.path.dirname(HERE), "fixtures", "caffe-runs", "sgd-multistep", "caffe.log")


def _stamp(t: float) -> str:
    s = int(t)
    us = int((t - s) * 1e6)
    return f"I1123 {s // 3600 % 24:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{us:06d}  7839"


def write_log(path: str, megabytes: float, *, outputs: int = 9, test_interval: int = 500, seed: int = 0) -> int:
    """Write a synthetic ``caffe train`` log of at least ``megabytes`` MB; return its size."""
    rng = random.Random(seed)
    with open(HEADER_LOG) as f:
        head = f.read().split("solver.cpp:239]")[0].rsplit("\n", 1)[0] + "\n"
    target = int(megabytes * 1e6)
    t = 19 * 3600.0
    it = 0
    step = 0
    lr = 0.02
    parts = [head]
    size = len(head)
    with open(path + ".tmp", "w") as out:
        while size < target:
            t += 0.0001
            lines = []
            if it % test_interval == 0:
                lines.append(f"{_stamp(t)} solver.cpp:347] Iteration {it}, Testing net (#0)")
                lines.append(f"{_stamp(t)} net.cpp:693] Ignoring source layer inject")
                lines.append(f"{_stamp(t)} solver.cpp:414]     Test net output #0: accuracy = {rng.random():.6g}")
                v = rng.random() * 3
                lines.append(f"{_stamp(t)} solver.cpp:414]     Test net output #1: loss = {v:.6g} (* 1 = {v:.6g} loss)")
            loss = rng.gauss(0, 5)
            lines.append(f"{_stamp(t)} solver.cpp:239] Iteration {it} (1 iter/s, 0s/1 iters), loss = {loss:.6g}")
            for k in range(outputs):
                v = rng.gauss(0, 3)
                lines.append(
                    f"{_stamp(t)} solver.cpp:258]     Train net output #{k}: z{k // 3} = {v:.6g} (* 1 = {v:.6g} loss)"
                )
            if it and it % 100000 == 0:
                step += 1
                lr *= 0.3
                lines.append(f"{_stamp(t)} sgd_solver.cpp:50] MultiStep Status: Iteration {it}, step = {step}")
            lines.append(f"{_stamp(t)} sgd_solver.cpp:112] Iteration {it}, lr = {lr:.6g}")
            n = rng.uniform(5, 300)
            lines.append(
                f"{_stamp(t)} sgd_solver.cpp:99] Gradient clipping: scaling down gradients "
                f"(L2 norm {n:.6g} > 5) by scale factor {5 / n:.6g}"
            )
            if it % 1000 == 999:
                lines.append(f"{_stamp(t)} solver.cpp:464] Snapshotting to binary proto file snapshots/run_iter_{it + 1}.caffemodel")
                lines.append(
                    f"{_stamp(t)} sgd_solver.cpp:284] Snapshotting solver state to binary proto file "
                    f"snapshots/run_iter_{it + 1}.solverstate"
                )
            if it % 50 == 7:
                lines.append("some other program writes here: epoch 3 done")
            chunk = "\n".join(lines) + "\n"
            parts.append(chunk)
            size += len(chunk)
            it += 1
            if len(parts) > 2000:
                out.write("".join(parts))
                parts = []
        parts.append(f"{_stamp(t)} solver.cpp:327] Iteration {it}, loss = 1.5\n")
        parts.append(f"{_stamp(t)} solver.cpp:332] Optimization Done.\n")
        out.write("".join(parts))
    os.replace(path + ".tmp", path)
    return os.path.getsize(path)


def _regex_read_runs(path: str):
    """read_runs through the regex passes (the path of small files)."""
    saved = logs._SCAN_MIN, logs._SCAN_MIN_LOADED
    logs._SCAN_MIN = logs._SCAN_MIN_LOADED = 1 << 62
    try:
        return read_runs(path)
    finally:
        logs._SCAN_MIN, logs._SCAN_MIN_LOADED = saved


def bench(path: str, repeat: int, parse_log_too: bool = True, regex: bool = False) -> dict:
    """Best-of-``repeat`` MB/s of read_runs and parse_log on ``path``, by CPU
    time of this process (one core) and by wall time."""
    size = os.path.getsize(path)
    res = {}
    cases = [("read_runs", lambda: read_runs(path))]
    if regex:
        cases.append(("regex", lambda: _regex_read_runs(path)))
    if parse_log_too:
        cases.append(("parse_log", lambda: sum(1 for _ in parse_log(path))))
    for name, fn in cases:
        best_cpu = best_wall = float("inf")
        for _ in range(repeat):
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            best_cpu = min(best_cpu, time.process_time() - c0)
            best_wall = min(best_wall, time.perf_counter() - w0)
        res[name] = (size / 1e6 / best_cpu, size / 1e6 / best_wall)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=256.0, help="size of the synthetic log in MB (default 256)")
    ap.add_argument("--out", default="/tmp/caffe-harness-bench.log", help="where to write it")
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions, best is reported")
    ap.add_argument("--keep", action="store_true", help="keep (and reuse) the log file")
    ap.add_argument("--outputs", type=int, default=9, help="train net outputs per display (default 9, as the fixtures)")
    ap.add_argument("--no-parse-log", action="store_true", help="time read_runs only")
    ap.add_argument("--regex", action="store_true", help="also time read_runs through the regex passes")
    args = ap.parse_args(argv)
    if not (os.path.exists(args.out) and os.path.getsize(args.out) >= args.mb * 1e6 and args.keep):
        write_log(args.out, args.mb, outputs=args.outputs)
    size = os.path.getsize(args.out)
    load = os.getloadavg()[0]
    c0, w0 = time.process_time(), time.perf_counter()
    runs = read_runs(args.out)  # starts numba (import, kernel from its cache)
    first = (size / 1e6 / (time.process_time() - c0), size / 1e6 / (time.perf_counter() - w0))
    npoints = sum(len(r.lr) for r in runs)
    res = {"first call": first}
    res.update(bench(args.out, args.repeat, not args.no_parse_log, args.regex))
    print(f"log: {args.out}, {size / 1e6:.1f} MB, {npoints} lr lines, {args.outputs} outputs per display")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load {load:.2f} before / {os.getloadavg()[0]:.2f} after, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    for name, (cpu, wall) in res.items():
        print(f"{name:11s} {cpu:7.1f} MB/s (CPU time, one core)  {wall:7.1f} MB/s (wall)")
    if not args.keep:
        os.unlink(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
