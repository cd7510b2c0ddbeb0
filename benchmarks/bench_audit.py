#!/usr/bin/env python3
"""Peak memory and speed of ``caffe-harness audit`` on a VGG-16-sized pair of snapshots.

Writes two consecutive snapshots (``run_iter_1000`` and ``run_iter_1001``,
with ``snapshot_diff``) of VGG-16's 32 learnable blobs (138,357,544 values:
a 553 MB data-only caffemodel) to ``--out``, without ever holding a blob
whole: each file's protobuf layout is computed first, then every chunk of
every blob is made by the reference kernels (``harness.kernels.update``,
profile ``caffe-openblas``) -- random initial weights and history, two
updates with random gradients -- and written at its offset. The pair is
therefore a real pair of Caffe updates and every audit row passes.

Then it runs ``audit`` on the pair in a fresh process and reports that
process's peak RSS (``VmHWM``), the RSS after imports and kernel compilation,
wall and CPU time, and the bytes read. ``--full-read`` also measures what
``harness.io.blobs.read_caffemodel`` + ``read_solverstate`` (whole
messages through protobuf) peak at for one snapshot, for comparison.

    python benchmarks/bench_audit.py [--type SGD|Adam|AdaGrad] [--out DIR] [--keep] [--full-read]

Measured 2026-11-23 on the project VM (2 vCPU AMD EPYC, 24 GB, Debian 12,
Python 3.11.7, numpy 2.4.6, numba 0.68; page cache warm; load average ~7
from other jobs, so wall times are pessimistic):

=======  ==============================  ==========  ===========  ======  =====
type     pair on disk                    peak RSS    after        wall    cpu
                                         (audit)     imports
=======  ==============================  ==========  ===========  ======  =====
SGD      2 x (1107 MB model + 553 MB)    210 MB      177 MB       15.5 s  4.8 s
Adam     2 x (1107 MB model + 1107 MB)   223 MB      177 MB       28.7 s  9.4 s
=======  ==============================  ==========  ===========  ======  =====

For comparison, ``read_caffemodel`` + ``read_solverstate`` of ONE SGD
snapshot of the same pair peak at 2245 MB (40.9 s).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

#: VGG-16 (Simonyan & Zisserman, configuration D) learnable blobs, in net order
VGG16 = [
    ("conv1_1", 64, 3), ("conv1_2", 64, 64),
    ("conv2_1", 128, 64), ("conv2_2", 128, 128),
    ("conv3_1", 256, 128), ("conv3_2", 256, 256), ("conv3_3", 256, 256),
    ("conv4_1", 512, 256), ("conv4_2", 512, 512), ("conv4_3", 512, 512),
    ("conv5_1", 512, 512), ("conv5_2", 512, 512), ("conv5_3", 512, 512),
]
FC = [("fc6", 4096, 25088), ("fc7", 4096, 4096), ("fc8", 1000, 4096)]


def vgg16_layers() -> list[tuple[str, str, list[tuple[int, ...]]]]:
    """``(name, type, [weight shape, bias shape])`` for VGG-16's 16 learnable layers."""
    out = [(n, "Convolution", [(o, i, 3, 3), (o,)]) for n, o, i in VGG16]
    out += [(n, "InnerProduct", [(o, i), (o,)]) for n, o, i in FC]
    return out


# -- protobuf wire encoding with precomputed layout ---------------------------------


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint, as the snapshot writer encodes it."""
    from harness.io.blobs import _enc_varint

    return _enc_varint(n)


def _tag(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _ld(number: int, payload_len: int) -> bytes:
    """The key and length of a length-delimited field."""
    return _tag(number, 2) + _varint(payload_len)


def _shape_msg(shape) -> bytes:
    dims = b"".join(_varint(d) for d in shape)
    inner = _ld(1, len(dims)) + dims
    return _ld(7, len(inner)) + inner


class Layout:
    """A binary protobuf file whose float payloads are written later, by offset."""

    def __init__(self):
        self.pieces: list[bytes | tuple[str, int]] = []  # bytes, or (region, nbytes)

    def add(self, b: bytes) -> None:
        self.pieces.append(b)

    def region(self, key: str, nbytes: int) -> None:
        self.pieces.append((key, nbytes))

    def write_skeleton(self, path: str) -> dict[str, int]:
        """Write the fixed bytes, leave holes for the regions; return each region's offset."""
        offsets = {}
        pos = 0
        with open(path, "wb") as f:
            for p in self.pieces:
                if isinstance(p, bytes):
                    f.seek(pos)
                    f.write(p)
                    pos += len(p)
                else:
                    offsets[p[0]] = pos
                    pos += p[1]
            f.truncate(pos)
        return offsets


def _blob(layout: Layout, key: str, shape, with_diff: bool) -> None:
    n = int(np.prod(shape)) * 4
    shape_b = _shape_msg(shape)
    body = len(_ld(5, n)) + n + (len(_ld(6, n)) + n if with_diff else 0) + len(shape_b)
    layout.add(_ld(7, body) if key.startswith("m:") else _ld(3, body))
    layout.add(_ld(5, n))
    layout.region(key + ":data", n)
    if with_diff:
        layout.add(_ld(6, n))
        layout.region(key + ":diff", n)
    layout.add(shape_b)


def caffemodel_layout(layers) -> Layout:
    """A ``NetParameter`` with one ``layer { name blobs... }`` per layer, data and diff per blob."""
    lay = Layout()
    name = b"VGG_ILSVRC_16_layers"
    lay.add(_ld(1, len(name)) + name)
    for lname, _, shapes in layers:
        nb = lname.encode()
        blobs_len = 0
        for shape in shapes:
            n = int(np.prod(shape)) * 4
            body = len(_ld(5, n)) + n + len(_ld(6, n)) + n + len(_shape_msg(shape))
            blobs_len += len(_ld(7, body)) + body
        layer_len = len(_ld(1, len(nb))) + len(nb) + blobs_len
        lay.add(_ld(100, layer_len) + _ld(1, len(nb)) + nb)
        for i, shape in enumerate(shapes):
            _blob(lay, f"m:{lname}/{i}", shape, True)
    return lay


def solverstate_layout(it: int, learned_net: str, shapes, slots: int) -> Layout:
    """A ``SolverState``: iter, learned_net, ``slots`` x N history blobs, current_step 0."""
    lay = Layout()
    ln = learned_net.encode()
    lay.add(_tag(1, 0) + _varint(it) + _ld(2, len(ln)) + ln)
    for s in range(slots):
        for j, shape in enumerate(shapes):
            _blob(lay, f"h:{s}/{j}", shape, False)
    lay.add(_tag(4, 0) + _varint(0))
    return lay


# -- the synthetic pair --------------------------------------------------------------


def write_pair(out: str, typ: str, chunk: int = 1 << 22, seed: int = 0, layers=None) -> dict:
    """Write ``run_iter_1000``/``run_iter_1001`` (states, caffemodels), solver and net; return sizes."""
    from harness.config import SolverConfig
    from harness.kernels import update as K
    from harness.lr import learning_rate
    from harness.reference import get_profile

    prof = get_profile("caffe-openblas")
    fz = (prof.fused, prof.zero_fill)
    f32 = np.float32
    one = f32(1)
    os.makedirs(os.path.join(out, "snapshots"), exist_ok=True)
    layers = layers or vgg16_layers()
    shapes = [s for _, _, ss in layers for s in ss]
    slots = 2 if typ == "Adam" else 1
    base_lr, momentum, momentum2, delta = 0.001, 0.9, 0.999, 1e-8
    solver = (f'net: "net.prototxt"\ntype: "{typ}"\nbase_lr: {base_lr}\nlr_policy: "fixed"\nmax_iter: 2000\n'
              + (f"momentum: {momentum}\n" if typ != "AdaGrad" else "")
              + (f"momentum2: {momentum2}\n" if typ == "Adam" else "")
              + f'delta: {delta}\nsnapshot: 1\nsnapshot_diff: true\nsnapshot_prefix: "snapshots/run"\nsolver_mode: CPU\n')
    with open(os.path.join(out, "solver.prototxt"), "w") as f:
        f.write(solver)
    with open(os.path.join(out, "net.prototxt"), "w") as f:
        f.write('name: "VGG_ILSVRC_16_layers"\n')
        for lname, ltype, (w, _) in layers:
            p = "convolution_param { num_output: %d kernel_size: 3 pad: 1 }" % w[0] if ltype == "Convolution" \
                else "inner_product_param { num_output: %d }" % w[0]
            f.write(f'layer {{ name: "{lname}" type: "{ltype}" param {{ lr_mult: 1 decay_mult: 1 }} '
                    f'param {{ lr_mult: 2 decay_mult: 0 }} {p} }}\n')

    cfg = SolverConfig(type=typ, base_lr=float(f32(base_lr)), lr_policy="fixed", momentum=float(f32(momentum)),
                       momentum2=float(f32(momentum2)), delta=float(f32(delta)))
    paths = {}
    offsets = {}
    for k in (1000, 1001):
        for kind, lay in (("caffemodel", caffemodel_layout(layers)),
                          ("solverstate", solverstate_layout(k, f"snapshots/run_iter_{k}.caffemodel", shapes, slots))):
            p = os.path.join(out, "snapshots", f"run_iter_{k}.{kind}")
            offsets[(k, kind)] = lay.write_skeleton(p)
            paths[(k, kind)] = p
    fds = {key: os.open(p, os.O_WRONLY) for key, p in paths.items()}
    rng = np.random.default_rng(seed)
    try:
        j = 0
        for lname, _, ss in layers:
            for i, shape in enumerate(ss):
                lr_mult = f32(1 if i == 0 else 2)
                count = int(np.prod(shape))
                for a in range(0, count, chunk):
                    n = min(chunk, count - a)
                    w = (rng.standard_normal(n) * 0.01).astype(f32)
                    h = [(np.abs(rng.standard_normal(n)) * 1e-4).astype(f32) for _ in range(slots)]
                    if typ in ("SGD",):
                        h[0] = (rng.standard_normal(n) * 1e-4).astype(f32)
                    for k in (1000, 1001):
                        g = (rng.standard_normal(n) * 0.01).astype(f32)
                        rate, _ = learning_rate(cfg, k - 1, 0)
                        lr = f32(f32(rate) * lr_mult)
                        pro = (one, one, 0, f32(0))
                        if typ == "SGD":
                            K.sgd_update(w, g, h[0], *pro, lr, f32(momentum), *fz)
                        elif typ == "AdaGrad":
                            K.adagrad_update(w, g, h[0], *pro, lr, f32(delta), *fz)
                        else:
                            corr = f32(K.adam_correction(np.float64(f32(momentum)), np.float64(f32(momentum2)),
                                                         float(k)))
                            b1, b2 = f32(momentum), f32(momentum2)
                            K.adam_update(w, g, h[0], h[1], *pro, f32(lr * corr), b1, one - b1, b2, one - b2,
                                          f32(delta), *fz)
                        mo, so = offsets[(k, "caffemodel")], offsets[(k, "solverstate")]
                        os.pwrite(fds[(k, "caffemodel")], w.tobytes(), mo[f"m:{lname}/{i}:data"] + 4 * a)
                        os.pwrite(fds[(k, "caffemodel")], g.tobytes(), mo[f"m:{lname}/{i}:diff"] + 4 * a)
                        for s in range(slots):
                            os.pwrite(fds[(k, "solverstate")], h[s].tobytes(), so[f"h:{s}/{j}:data"] + 4 * a)
                j += 1
    finally:
        for fd in fds.values():
            os.close(fd)
    return {f"run_iter_{k}.{kind}": os.path.getsize(p) for (k, kind), p in paths.items()}


_CHILD = r"""
import json, os, resource, sys, time
sys.path.insert(0, {root!r})
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
mode = {mode!r}
out = {out!r}
t0 = time.perf_counter(); c0 = time.process_time()
if mode == "audit":
    from harness.audit import audit
    # compile/load the kernels on a tiny sequence first, so the baseline includes them
    fx = os.path.join({root!r}, "fixtures", "caffe-runs", {fixture!r})
    audit([os.path.join(fx, "snapshots")], solver=os.path.join(fx, "solver.prototxt"))
    base = rss()
    t0 = time.perf_counter(); c0 = time.process_time()
    r = audit([os.path.join(out, "snapshots")], solver=os.path.join(out, "solver.prototxt"))
    res = dict(ok=r.ok, rows={{x.id: [x.status, x.values] for x in r.invariants}})
else:
    from harness.io.blobs import read_caffemodel, read_solverstate
    base = rss()
    t0 = time.perf_counter(); c0 = time.process_time()
    m = read_caffemodel(os.path.join(out, "snapshots", "run_iter_1001.caffemodel"))
    s = read_solverstate(os.path.join(out, "snapshots", "run_iter_1001.solverstate"))
    res = dict(blobs=sum(len(v) for v in m.values()), history=len(s.history))
res.update(base_rss=base, peak_rss=hwm(), wall=time.perf_counter() - t0, cpu=time.process_time() - c0)
print(json.dumps(res))
"""


def measure(mode: str, out: str, typ: str) -> dict:
    """Run ``audit`` (or the whole-file readers) on the pair in a fresh process; its peak RSS and times."""
    fixture = {"SGD": "sgd-fixed", "Adam": "adam-fixed", "AdaGrad": "adagrad-fixed"}[typ]
    code = _CHILD.format(root=ROOT, mode=mode, out=out, fixture=fixture)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{mode} child failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--type", default="SGD", choices=("SGD", "Adam", "AdaGrad"))
    ap.add_argument("--out", default="/tmp/caffe-harness-bench-audit")
    ap.add_argument("--keep", action="store_true", help="keep the snapshots (reused by the next run)")
    ap.add_argument("--full-read", action="store_true", help="also measure harness.io.blobs's whole-file readers")
    args = ap.parse_args(argv)
    out = os.path.join(args.out, args.type)
    marker = os.path.join(out, "done.json")
    t = time.perf_counter()
    if os.path.exists(marker):
        sizes = json.load(open(marker))
        made = "reused"
    else:
        sizes = write_pair(out, args.type)
        json.dump(sizes, open(marker, "w"))
        made = f"written in {time.perf_counter() - t:.0f} s"
    mb = 1e6
    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, {platform.processor() or ''}"
          f" Python {platform.python_version()}, numpy {np.__version__}; {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"pair ({args.type}, VGG-16, {made}):", ", ".join(f"{k} {v / mb:.0f} MB" for k, v in sorted(sizes.items())))
    one = sizes["run_iter_1001.caffemodel"] + sizes["run_iter_1001.solverstate"]
    total = sum(sizes.values())
    r = measure("audit", out, args.type)
    print(f"audit: ok={r['ok']}  peak RSS {r['peak_rss'] / mb:.0f} MB (after imports+compile {r['base_rss'] / mb:.0f} MB;"
          f" one snapshot is {one / mb:.0f} MB)  wall {r['wall']:.1f} s  cpu {r['cpu']:.1f} s"
          f"  ({total / mb / r['wall']:.0f} MB/s of snapshot files)")
    print("  rows:", ", ".join(f"{k} {v[0]} ({v[1]})" for k, v in r["rows"].items()))
    if args.full_read:
        f = measure("full", out, args.type)
        print(f"read_caffemodel+read_solverstate of ONE snapshot: peak RSS {f['peak_rss'] / mb:.0f} MB"
              f" (base {f['base_rss'] / mb:.0f} MB)  wall {f['wall']:.1f} s")
    if not args.keep:
        shutil.rmtree(out)
    return 0 if r["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
