"""``caffe-harness inspect FILE...``: what a Caffe file holds.

Reads ``.caffemodel``, ``.solverstate`` (binary or HDF5, told apart by
content) and ``.prototxt`` (solver or net, told apart by which parse gets
further) and prints, per file, an aligned table: blob names, shapes, count,
min/max/mean over the finite values and NaN/Inf counts; ``iter``,
``current_step`` and the history count for solver states; the set fields of a
solver; the layers and learnable blobs (TRAIN phase) of a net.

Exit 0 when every file reads, 1 when a net is one Caffe refuses at start,
2 on bad input (missing, empty, truncated, corrupt, wrong kind, typo).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

__all__ = ["add_parser", "run", "inspect_file", "blob_stats"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def add_parser(sub) -> None:
    """Register ``inspect`` on the CLI's subparsers."""
    p = sub.add_parser(
        "inspect",
        help="show the blobs, shapes and statistics of caffemodels, solverstates and prototxts",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".caffemodel, .solverstate, .prototxt (or their .h5 forms)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------


def blob_stats(name: str, arr: np.ndarray) -> dict:
    """Name, shape, count, min/max/mean over finite values, NaN and Inf counts of one array."""
    a = np.asarray(arr)
    finite = np.isfinite(a)
    nan = int(np.isnan(a).sum())
    inf = int(a.size - nan - int(finite.sum()))
    vals = a[finite]
    if vals.size:
        lo, hi, mean = float(vals.min()), float(vals.max()), float(vals.astype(np.float64).mean())
    else:
        lo = hi = mean = None
    return {
        "name": name, "shape": [int(d) for d in a.shape], "count": int(a.size),
        "min": lo, "max": hi, "mean": mean, "nan": nan, "inf": inf,
    }


def _sniff(path: str) -> str:
    """``"binary"``, ``"hdf5"`` or ``"text"`` from the first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return "binary"  # the reader reports the problem in its own words
    if head.startswith(HDF5_SIGNATURE):
        return "hdf5"
    if not head:
        return "text" if path.endswith((".prototxt", ".pt", ".txt")) else "binary"
    printable = sum(1 for b in head if 32 <= b < 127 or b in (9, 10, 13))
    if printable >= 0.95 * len(head) or path.endswith((".prototxt", ".pt")):
        return "text"
    return "binary"


def inspect_file(path: str | os.PathLike) -> dict:
    """A JSON-able description of one file (raises InputError on bad input).

    Keys: ``path``, ``kind`` (``caffemodel``, ``solverstate``, ``solver``,
    ``net``), ``format`` (``binary``, ``hdf5``, ``text``) and the kind's own
    fields (``blobs`` rows as :func:`blob_stats` gives them, ``iter``,
    ``current_step``, ``learned_net``, ``history``, ``fields``, ``layers``,
    ``learnable``, ``refusal``).
    """
    from ..io import blobs as B

    path = os.fspath(path)
    fmt = _sniff(path)
    if fmt == "text":
        return _inspect_prototxt(path)
    kind = B.snapshot_kind(path)
    if kind == "caffemodel":
        weights = B.read_caffemodel(path)
        rows = []
        for layer, bs in weights.items():
            for i, b in enumerate(bs):
                if b.data is not None:
                    rows.append(blob_stats(f"{layer}/{i}", b.data))
                if b.diff is not None:
                    rows.append(blob_stats(f"{layer}/{i} diff", b.diff))
        n_blobs = sum(len(bs) for bs in weights.values())
        return {"path": path, "kind": kind, "format": fmt, "layers": len(weights), "blob_count": n_blobs, "blobs": rows}
    state = B.read_solverstate(path)
    return {
        "path": path, "kind": kind, "format": fmt, "iter": state.iter, "current_step": state.current_step,
        "learned_net": state.learned_net, "history_count": len(state.history),
        "blobs": [blob_stats(f"history/{i}", h) for i, h in enumerate(state.history)],
    }


def _inspect_prototxt(path: str) -> dict:
    from google.protobuf import text_format

    from ..errors import CaffeRefusal, InputError
    from ..io.net import learnable_blobs, load_net
    from ..io.prototxt import parse_text
    from ..proto import caffe_pb2

    try:
        solver = parse_text(path, caffe_pb2.SolverParameter)
    except InputError as e:
        solver_error = e
    else:
        fields = []
        for fd, value in solver.ListFields():
            if fd.message_type is not None:
                items = value if _repeated(fd) else [value]
                for v in items:
                    fields.append((fd.name, "{ " + text_format.MessageToString(v, as_one_line=True) + " }"))
            elif _repeated(fd):
                fields.append((fd.name, ", ".join(_scalar(fd, v) for v in value)))
            else:
                fields.append((fd.name, _scalar(fd, value)))
        return {"path": path, "kind": "solver", "format": "text", "fields": [{"field": k, "value": v} for k, v in fields]}
    try:
        net = load_net(path)
    except InputError as net_error:
        # the parse that got further is the file's kind; a tie goes to the solver
        if (net_error.line or 0) > (solver_error.line or 0):
            raise net_error from None
        raise solver_error from None
    layers = []
    for layer in net.layer:
        layers.append({"name": layer.name, "type": layer.type, "bottom": list(layer.bottom), "top": list(layer.top)})
    out = {"path": path, "kind": "net", "format": "text", "name": net.name, "layers": layers, "learnable": [], "refusal": None}
    try:
        specs = learnable_blobs(net, source=path)
    except CaffeRefusal as e:
        out["refusal"] = e.message
    else:
        out["learnable"] = [
            {"name": b.name, "lr_mult": b.lr_mult, "decay_mult": b.decay_mult} for b in specs
        ]
    return out


def _repeated(fd) -> bool:
    # protobuf 7 has only is_repeated; older runtimes only label
    if hasattr(fd, "is_repeated"):
        return bool(fd.is_repeated)
    return fd.label == fd.LABEL_REPEATED


def _scalar(fd, value) -> str:
    if fd.enum_type is not None:
        return fd.enum_type.values_by_number[value].name
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # SolverParameter floats are float32: print the shortest text that is that float32
        return str(np.float32(value)) if fd.type == fd.TYPE_FLOAT else repr(value)
    return str(value)


# ---------------------------------------------------------------------------
# text output
# ---------------------------------------------------------------------------


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [len(h) for h in header]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = []
    for r in [header] + rows:
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _blob_table(rows: list[dict]) -> list[str]:
    header = ["blob", "shape", "count", "min", "max", "mean", "NaN", "Inf"]
    body = [
        [r["name"], "x".join(str(d) for d in r["shape"]) or "()", str(r["count"]),
         _num(r["min"]), _num(r["max"]), _num(r["mean"]), str(r["nan"]), str(r["inf"])]
        for r in rows
    ]
    return _table(header, body, right={2, 3, 4, 5, 6, 7})


def render_text(info: dict) -> str:
    """The text form of one :func:`inspect_file` result."""
    p, kind = info["path"], info["kind"]
    if kind == "caffemodel":
        lines = [f"{p}: caffemodel ({info['format']}), {info['layers']} layers, {info['blob_count']} blobs"]
        lines += _blob_table(info["blobs"]) if info["blobs"] else ["  (no blobs)"]
    elif kind == "solverstate":
        lines = [
            f"{p}: solverstate ({info['format']}), iter {info['iter']}, current_step {info['current_step']}, "
            f"{info['history_count']} history blobs, learned_net {json.dumps(info['learned_net'])}"
        ]
        lines += _blob_table(info["blobs"]) if info["blobs"] else ["  (no history)"]
    elif kind == "solver":
        lines = [f"{p}: solver prototxt, {len(info['fields'])} fields set"]
        lines += _table(["field", "value"], [[f["field"], f["value"]] for f in info["fields"]], right=set())
    else:
        lines = [f"{p}: net prototxt {json.dumps(info['name'])}, {len(info['layers'])} layers, "
                 f"{len(info['learnable'])} learnable blobs (TRAIN)"]
        by_layer: dict[str, list[dict]] = {}
        for b in info["learnable"]:
            by_layer.setdefault(b["name"].rsplit("/", 1)[0], []).append(b)
        rows = []
        for l in info["layers"]:
            learn = ", ".join(
                f"{b['name'].rsplit('/', 1)[1]}: lr_mult {b['lr_mult']:g} decay_mult {b['decay_mult']:g}"
                for b in by_layer.get(l["name"], [])
            )
            rows.append([l["name"], l["type"], " ".join(l["bottom"]) or "-", " ".join(l["top"]) or "-", learn or "-"])
        lines += _table(["layer", "type", "bottom", "top", "learnable"], rows, right=set())
        if info["refusal"]:
            lines.append(f"  Caffe refuses this net at start: {info['refusal']}")
    return "\n".join(lines)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def run(args) -> int:
    """Inspect every file; print text tables or one JSON document."""
    infos = [inspect_file(path) for path in args.files]
    if args.format == "json":
        print(json.dumps({"files": _json_safe(infos)}, indent=1, allow_nan=False))
    else:
        print("\n\n".join(render_text(i) for i in infos))
    return 1 if any(i.get("refusal") for i in infos) else 0
