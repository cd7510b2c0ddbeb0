"""Golden traces: a ``Trace`` on disk, checksummed, readable from any language.

A golden trace is a directory holding ``trace.json`` (the manifest),
``SHA256SUMS`` (``sha256sum -c`` format, covering every other file) and plain
``.npy`` files (version 1.0, little-endian float32, C order), one per blob and
kind, stacked over iterations. The layout is specified in
``docs/TRACE_FORMAT.md``; this module is its reference implementation.

* ``write_golden(trace, out_dir)`` writes atomically (temp dir, then rename) and
  deterministically: the same ``Trace`` always gives the same bytes.
* ``read_golden(path)`` verifies every checksum and the manifest's own
  consistency before it returns a ``Trace``; the first problem raises an
  ``InputError`` naming the file.
* ``verify_golden(path)`` lists every problem instead of stopping at the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import mmap
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import SolverConfig
from ..errors import InputError
from ..trace import Iteration, Trace

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "CHECKSUMS",
    "ORIGINS",
    "write_golden",
    "read_golden",
    "verify_golden",
    "is_golden",
    "trace_differences",
]

FORMAT_NAME = "caffe-harness-trace"
FORMAT_VERSION = 1
MANIFEST = "trace.json"
CHECKSUMS = "SHA256SUMS"
#: Where a trace's expectations came from; written into every manifest.
ORIGINS = ("caffe", "reference")

#: Array kinds, in the order their files are listed in the manifest.
_KINDS = ("init_params", "init_history", "grads", "params", "diff", "history")
_PER_ITERATION = ("grads", "params", "diff", "history")
_DESCR = "<f4"
_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


# --------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------
def _f32_hex(x: float) -> str:
    return "0x%08x" % int(np.float32(x).view(np.uint32))


def _f32_from_hex(s: str) -> float:
    return float(np.uint32(int(s, 16)).view(np.float32))


def _f32_decimal(x: float) -> str:
    """Shortest decimal that reads back as the same float32 (``nan``, ``inf`` spelled so)."""
    v = np.float32(x)
    if np.isnan(v):
        return "nan"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    return np.format_float_positional(v, unique=True, trim="-") if 1e-4 <= abs(v) < 1e16 or v == 0 else (
        np.format_float_scientific(v, unique=True, trim="-")
    )


def _short(x: float) -> float:
    """The float32 value ``x`` as the double with the shortest float32 decimal (0.01, not 0.009999999776482582).

    ``float32(_short(x)) == float32(x)``; non-float32 values are returned unchanged.
    """
    if not isinstance(x, float) or not math.isfinite(x) or float(np.float32(x)) != x:
        return x
    return float(_f32_decimal(x))


def _parse_text_float(text: str) -> float | None:
    """A number as C's printf writes it (``nan``, ``-nan``, ``inf`` included), or None."""
    t = text.strip().lower()
    if t.lstrip("+-") == "nan":
        return float("nan")
    try:
        return float(t)
    except ValueError:
        return None


def _jsonable(x: Any) -> Any:
    """Make ``x`` strict JSON: non-finite floats become the strings ``nan``/``inf``/``-inf``."""
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    return x


def _npy_bytes(a: np.ndarray) -> bytes:
    """``a`` as a version-1.0 ``.npy`` file: fixed header text, no timestamps."""
    a = np.asarray(a, dtype=_DESCR)  # (ascontiguousarray would turn a 0-d array into 1-d)
    header = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (_DESCR, tuple(int(d) for d in a.shape))
    pad = 64 - (len(_NPY_MAGIC) + 2 + len(header) + 1) % 64
    header = (header + " " * (pad % 64) + "\n").encode("latin1")
    return _NPY_MAGIC + len(header).to_bytes(2, "little") + header + a.tobytes(order="C")


def _parse_npy(raw) -> tuple[tuple[int, ...], str, bool, int]:
    """(shape, descr, fortran_order, data offset) of a ``.npy`` file; ValueError if malformed."""
    import ast

    if len(raw) < 10 or bytes(raw[:6]) != b"\x93NUMPY":
        raise ValueError("not a .npy file (bad magic)")
    major = raw[6]
    if major == 1:
        hlen, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        hlen, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise ValueError(f"unsupported .npy version {major}.{raw[7]}")
    if start + hlen > len(raw):
        raise ValueError("truncated .npy header")
    try:
        d = ast.literal_eval(bytes(raw[start : start + hlen]).decode("latin1"))
        shape = tuple(int(x) for x in d["shape"])
        descr = str(d["descr"])
        fortran = bool(d["fortran_order"])
    except Exception as e:  # noqa: BLE001 - any malformed header is the same problem
        raise ValueError(f"malformed .npy header ({e.__class__.__name__})") from None
    return shape, descr, fortran, start + hlen


def _safe(name: str) -> str:
    return _SAFE.sub("_", name.replace("/", "_")).strip("._") or "blob"


# --------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------
def _check_array(a, what: str, shape: tuple[int, ...], where) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise InputError(where, f"{what} is {type(a).__name__}, expected a float32 ndarray")
    if a.dtype != np.float32:
        raise InputError(where, f"{what} is {a.dtype}, expected float32")
    if tuple(a.shape) != tuple(shape):
        raise InputError(where, f"{what} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return a


def _build(trace: Trace, where) -> tuple[dict, dict[str, bytes]]:
    """The manifest (without checksums filled) and the ``.npy`` payloads of ``trace``."""
    cfg = trace.config
    blobs = cfg.blobs
    if not blobs:
        raise InputError(where, f"trace {trace.name!r} has no learnable blobs in its config (net unknown)")
    names = [b.name for b in blobs]
    shapes = {b.name: tuple(b.shape) for b in blobs}
    nb = len(blobs)
    origin = trace.provenance.get("origin")
    if origin not in ORIGINS:
        raise InputError(where, f"provenance origin is {origin!r}, expected one of {', '.join(ORIGINS)}")
    if trace.refusal_when not in (None, "start", "first-update"):
        raise InputError(where, f"refusal_when is {trace.refusal_when!r}, expected 'start' or 'first-update'")

    files: dict[str, bytes] = {}
    entries: list[dict] = []

    def add(kind: str, index: int, blob: str, arr: np.ndarray, *, slot=None, iterations=None):
        fname = f"{kind}.{index:02d}.{_safe(blob)}" + (f".s{slot}" if slot else "") + ".npy"
        files[fname] = _npy_bytes(arr)
        e = {"file": fname, "kind": kind, "blob": blob}
        if kind.endswith("history"):
            e["slot"] = slot
        e["dtype"] = _DESCR
        e["shape"] = list(arr.shape)
        if iterations is not None:
            e["iterations"] = iterations
        entries.append(e)

    def history_blob(h: int) -> tuple[str, int]:
        return names[h % nb], h // nb

    def check_history(hist, what) -> None:
        if len(hist) != nb * cfg.history_slots:
            raise InputError(
                where, f"{what} has {len(hist)} blobs, expected {nb * cfg.history_slots} ({cfg.type}, {nb} learnable blobs)"
            )
        for h, a in enumerate(hist):
            _check_array(a, f"{what}[{h}]", shapes[history_blob(h)[0]], where)

    # init
    if set(trace.init_params) != set(names):
        raise InputError(where, f"init_params has blobs {sorted(trace.init_params)}, expected {names}")
    for j, n in enumerate(names):
        add("init_params", j, n, _check_array(trace.init_params[n], f"init_params[{n}]", shapes[n], where))
    if trace.init_history is not None:
        check_history(trace.init_history, "init_history")
        for h, a in enumerate(trace.init_history):
            n, s = history_blob(h)
            add("init_history", h, n, a, slot=s)

    # iterations
    its = trace.iterations
    passes = {len(it.grads) for it in its}
    if len(passes) > 1:
        raise InputError(where, f"iterations have different numbers of gradient passes: {sorted(passes)}")
    npass = passes.pop() if passes else 0
    prev = None
    for pos, it in enumerate(its):
        if prev is not None and it.iter <= prev:
            raise InputError(where, f"iteration {it.iter} follows iteration {prev}: iterations must increase")
        prev = it.iter
        for p, g in enumerate(it.grads):
            if set(g) != set(names):
                raise InputError(where, f"iteration {it.iter} pass {p} grads have blobs {sorted(g)}, expected {names}")
            for n in names:
                _check_array(g[n], f"iteration {it.iter} pass {p} grad {n}", shapes[n], where)
        for kind in ("params", "diff"):
            d = getattr(it, kind)
            if d is not None:
                if set(d) != set(names):
                    raise InputError(where, f"iteration {it.iter} {kind} has blobs {sorted(d)}, expected {names}")
                for n in names:
                    _check_array(d[n], f"iteration {it.iter} {kind} {n}", shapes[n], where)
        if it.history is not None:
            check_history(it.history, f"iteration {it.iter} history")

    if npass and its:
        rows = list(range(len(its)))
        for j, n in enumerate(names):
            add("grads", j, n, np.stack([np.stack([it.grads[p][n] for p in range(npass)]) for it in its]), iterations=rows)
    for kind in ("params", "diff"):
        rows = [pos for pos, it in enumerate(its) if getattr(it, kind) is not None]
        if rows:
            for j, n in enumerate(names):
                add(kind, j, n, np.stack([getattr(its[r], kind)[n] for r in rows]), iterations=rows)
    rows = [pos for pos, it in enumerate(its) if it.history is not None]
    if rows:
        for h in range(nb * cfg.history_slots):
            n, s = history_blob(h)
            add("history", h, n, np.stack([its[r].history[h] for r in rows]), slot=s, iterations=rows)

    for e in entries:
        raw = files[e["file"]]
        e["bytes"] = len(raw)
        e["sha256"] = hashlib.sha256(raw).hexdigest()

    iterations = []
    for it in its:
        lr = None
        if isinstance(it.lr, str):  # printed by Caffe's log: 6 significant digits
            v = _parse_text_float(it.lr)
            if v is None:
                raise InputError(where, f"iteration {it.iter} lr text {it.lr!r} is not a number")
            lr = {"log_text": it.lr, "f32_hex": _f32_hex(v), "decimal": _f32_decimal(v)}
        elif it.lr is not None:
            lr = {"f32_hex": _f32_hex(it.lr), "decimal": _f32_decimal(it.lr)}
        iterations.append({"iter": int(it.iter), "lr": lr, "current_step": None if it.current_step is None else int(it.current_step)})

    from .. import __version__

    config = cfg.to_dict()
    float_fields = {f.name for f in dataclasses.fields(SolverConfig) if f.type == "float"}
    for k in float_fields:
        config[k] = _short(config[k])
    for b in config["blobs"]:
        b["lr_mult"], b["decay_mult"] = _short(b["lr_mult"]), _short(b["decay_mult"])
    if SolverConfig.from_dict(config) != cfg:
        back = SolverConfig.from_dict(config)
        bad = [k for k in config if k != "blobs" and getattr(back, k) != getattr(cfg, k)] or ["blobs"]
        raise InputError(where, f"config field(s) {', '.join(bad)} do not survive float32 rounding (build configs with SolverConfig.replace/from_dict)")
    config_blobs = config.pop("blobs")
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": trace.name,
        "origin": origin,
        "provenance": _jsonable(dict(trace.provenance)),
        "source": trace.source,
        "writer": {"program": "caffe-harness", "version": __version__},
        "config": _jsonable(config),
        "blobs": _jsonable(config_blobs),
        "history_slots": cfg.history_slots,
        "passes": npass,
        "init": {
            "iter": int(trace.init_iter),
            "current_step": int(trace.init_current_step),
            "history": trace.init_history is not None,
        },
        "refusal": None if trace.refusal is None else {"message": trace.refusal, "when": trace.refusal_when},
        "iterations": iterations,
        "arrays": entries,
    }
    try:
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InputError(where, f"trace metadata is not plain JSON (provenance/config): {e}") from None
    return manifest, files


def _dump(obj: Any, indent: int = 0) -> str:
    """Deterministic, diff-friendly JSON: containers that fit in 120 columns stay on one line."""
    flat = json.dumps(obj, ensure_ascii=True, allow_nan=False)
    if not isinstance(obj, (dict, list)) or len(flat) + indent <= 120 or not obj:
        return flat
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {_dump(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + _dump(v, indent + 1) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"


def _manifest_bytes(manifest: dict) -> bytes:
    return (_dump(manifest) + "\n").encode("ascii")


def write_golden(trace: Trace, out_dir, *, overwrite: bool = False) -> Path:
    """Write ``trace`` as a golden trace directory ``out_dir``; return its path.

    The directory is built next to ``out_dir`` under a temporary name and
    renamed into place, so a reader never sees half a trace. An existing
    ``out_dir`` is refused unless ``overwrite=True``. Output is a pure function
    of ``trace``: the date and every other provenance field come from
    ``trace.provenance``, never from the clock.

    Raises ``InputError`` when the trace is not writable as is: arrays that
    are not float32 or do not match the blob shapes, no blob list, or a
    provenance without ``origin`` in ``ORIGINS``.
    """
    out = Path(out_dir)
    manifest, files = _build(trace, out)
    if out.exists() and not overwrite:
        raise InputError(out, "already exists; refusing to overwrite (use overwrite=True / --force)")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        sums = []
        for fname, raw in files.items():
            (tmp / fname).write_bytes(raw)
        mraw = _manifest_bytes(manifest)
        (tmp / MANIFEST).write_bytes(mraw)
        sums.append((hashlib.sha256(mraw).hexdigest(), MANIFEST))
        sums += [(e["sha256"], e["file"]) for e in manifest["arrays"]]
        (tmp / CHECKSUMS).write_bytes("".join(f"{h}  {f}\n" for h, f in sums).encode("ascii"))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / "trace")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


# --------------------------------------------------------------------------
# read / verify
# --------------------------------------------------------------------------
class _Problems(Exception):
    """Internal: stop reading after the first problem (read_golden)."""


@dataclass
class _Reader:
    root: Path
    collect: bool
    problems: list

    def fail(self, fname: str | None, problem: str, *, line: int | None = None) -> None:
        err = InputError(self.root / fname if fname else self.root, problem, line=line)
        self.problems.append(err)
        if not self.collect:
            raise _Problems()


def _typed(r: _Reader, obj: dict, key: str, types, what: str, *, nullable=False):
    if not isinstance(obj, dict) or key not in obj:
        r.fail(MANIFEST, f"{what}: missing field {key!r}")
        return None
    v = obj[key]
    if v is None and nullable:
        return None
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        r.fail(MANIFEST, f"{what}.{key} is {v!r}, expected {_tname(types)}")
        return None
    if not isinstance(v, types):
        r.fail(MANIFEST, f"{what}.{key} is {v!r}, expected {_tname(types)}")
        return None
    return v


def _tname(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join({"int": "an integer", "str": "a string", "list": "a list", "dict": "an object", "bool": "true/false"}.get(t.__name__, t.__name__) for t in types)


def _read_checksums(r: _Reader) -> dict[str, str]:
    p = r.root / CHECKSUMS
    try:
        text = p.read_bytes().decode("ascii")
    except FileNotFoundError:
        r.fail(CHECKSUMS, "missing checksum file")
        return {}
    except UnicodeDecodeError:
        r.fail(CHECKSUMS, "not ASCII text")
        return {}
    sums: dict[str, str] = {}
    for ln, line in enumerate(text.splitlines(), 1):
        m = re.fullmatch(r"([0-9a-f]{64}) [ *]([^/\\]+)", line)
        if not m:
            r.fail(CHECKSUMS, f"expected '<sha256>  <file>', got {line[:60]!r}", line=ln)
            continue
        if m.group(2) in sums:
            r.fail(CHECKSUMS, f"file {m.group(2)!r} listed twice", line=ln)
        sums[m.group(2)] = m.group(1)
    if MANIFEST not in sums:
        r.fail(CHECKSUMS, f"does not list {MANIFEST}")
    return sums


def _read_file(r: _Reader, fname: str, sums: dict[str, str], nbytes: int | None = None) -> memoryview | None:
    """The file's bytes, checked against ``SHA256SUMS``: a writable, copy-on-write memory map.

    Arrays are views of that map (``np.frombuffer``), so a large trace is
    never copied.
    """
    try:
        with open(r.root / fname, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # a private copy-on-write map: pages come from the page cache as they are used, nothing is
            # copied, and the arrays on it are writable without touching the file
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else None
            raw = memoryview(mm) if mm is not None else memoryview(b"")
    except FileNotFoundError:
        r.fail(fname, "missing file")
        return None
    except IsADirectoryError:
        r.fail(fname, "is a directory, expected a file")
        return None
    if not sums:  # no usable SHA256SUMS: already reported
        return raw
    want = sums.get(fname)
    got = hashlib.sha256(raw).hexdigest()
    if mm is not None:
        mm.madvise(mmap.MADV_DONTNEED)  # hashing paged the file in; let it page in again only where it is used
    if want is None:
        r.fail(fname, f"not listed in {CHECKSUMS}")
    elif want != got:
        how = f"truncated or extended: {len(raw)} bytes, expected {nbytes}" if nbytes is not None and nbytes != len(raw) else "contents modified"
        r.fail(fname, f"sha256 mismatch: {CHECKSUMS} says {want[:16]}..., file has {got[:16]}... ({how})")
    return raw  # verify_golden goes on to report what else is wrong with it


def _load(root, *, collect: bool) -> tuple[Trace | None, list[InputError]]:
    r = _Reader(Path(root), collect, [])
    try:
        return _load_inner(r), r.problems
    except _Problems:
        return None, r.problems


def _load_inner(r: _Reader) -> Trace | None:
    if not r.root.is_dir():
        r.fail(None, "not a golden trace directory" if r.root.exists() else "no such golden trace directory")
        return None
    sums = _read_checksums(r)
    raw = _read_file(r, MANIFEST, sums)
    if raw is None:
        return None
    try:
        m = json.loads(bytes(raw).decode("utf-8"), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"non-JSON constant {c}")))
    except UnicodeDecodeError:
        r.fail(MANIFEST, "not UTF-8 text")
        return None
    except json.JSONDecodeError as e:
        r.fail(MANIFEST, f"bad JSON: {e.msg} (column {e.colno})", line=e.lineno)
        return None
    except ValueError as e:
        r.fail(MANIFEST, f"bad JSON: {e}")
        return None
    if not isinstance(m, dict):
        r.fail(MANIFEST, "bad manifest: expected a JSON object at top level")
        return None
    if m.get("format") != FORMAT_NAME:
        r.fail(MANIFEST, f"format is {m.get('format')!r}, expected {FORMAT_NAME!r}")
        return None
    if m.get("version") != FORMAT_VERSION or isinstance(m.get("version"), bool):
        r.fail(MANIFEST, f"unknown format version {m.get('version')!r}; this harness reads version {FORMAT_VERSION}")
        return None

    # -- scalar fields
    name = _typed(r, m, "name", str, "manifest")
    origin = _typed(r, m, "origin", str, "manifest")
    if origin is not None and origin not in ORIGINS:
        r.fail(MANIFEST, f"origin is {origin!r}, expected one of {', '.join(ORIGINS)}")
    prov = _typed(r, m, "provenance", dict, "manifest")
    if prov is not None and origin is not None and prov.get("origin") != origin:
        r.fail(MANIFEST, f"provenance.origin {prov.get('origin')!r} disagrees with origin {origin!r}")
    source = _typed(r, m, "source", str, "manifest")
    cfgd = _typed(r, m, "config", dict, "manifest")
    blobsd = _typed(r, m, "blobs", list, "manifest")
    slots = _typed(r, m, "history_slots", int, "manifest")
    npass = _typed(r, m, "passes", int, "manifest")
    init = _typed(r, m, "init", dict, "manifest")
    refusal = _typed(r, m, "refusal", dict, "manifest", nullable=True)
    itsd = _typed(r, m, "iterations", list, "manifest")
    arrays = _typed(r, m, "arrays", list, "manifest")
    if None in (name, origin, prov, source, cfgd, blobsd, slots, npass, init, itsd, arrays):
        return None

    try:
        cfg = SolverConfig.from_dict({**cfgd, "blobs": blobsd})
    except (KeyError, TypeError, ValueError) as e:
        r.fail(MANIFEST, f"bad solver config: {e.__class__.__name__}: {e}")
        return None
    if not cfg.blobs:
        r.fail(MANIFEST, "blobs is empty")
        return None
    if slots != cfg.history_slots:
        r.fail(MANIFEST, f"history_slots is {slots}, expected {cfg.history_slots} for {cfg.type}")
    names = [b.name for b in cfg.blobs]
    if len(set(names)) != len(names):
        r.fail(MANIFEST, f"blob names repeat: {names}")
        return None
    shapes = {b.name: tuple(b.shape) for b in cfg.blobs}
    nb = len(names)
    nh = nb * cfg.history_slots

    init_iter = _typed(r, init, "iter", int, "init")
    init_step = _typed(r, init, "current_step", int, "init")
    init_hist = _typed(r, init, "history", bool, "init")
    refusal_msg = refusal_when = None
    if refusal is not None:
        refusal_msg = _typed(r, refusal, "message", str, "refusal")
        refusal_when = _typed(r, refusal, "when", str, "refusal")
        if refusal_when not in (None, "start", "first-update"):
            r.fail(MANIFEST, f"refusal.when is {refusal_when!r}, expected 'start' or 'first-update'")

    # -- iterations
    iterations: list[Iteration] = []
    prev = None
    for pos, d in enumerate(itsd):
        what = f"iterations[{pos}]"
        k = _typed(r, d, "iter", int, what)
        step = _typed(r, d, "current_step", int, what, nullable=True)
        lrd = _typed(r, d, "lr", dict, what, nullable=True)
        if k is None:
            continue
        if prev is not None and k <= prev:
            r.fail(MANIFEST, f"{what}.iter is {k} after {prev}: iterations must increase")
        prev = k
        lr = None
        if lrd is not None:
            hx = _typed(r, lrd, "f32_hex", str, f"{what}.lr")
            dec = _typed(r, lrd, "decimal", str, f"{what}.lr")
            if hx is not None and dec is not None:
                if not re.fullmatch(r"0x[0-9a-f]{8}", hx):
                    r.fail(MANIFEST, f"{what}.lr.f32_hex is {hx!r}, expected 0x and 8 lowercase hex digits")
                else:
                    lr = _f32_from_hex(hx)
                    try:
                        dv = np.float32(float(dec))
                    except ValueError:
                        r.fail(MANIFEST, f"{what}.lr.decimal is {dec!r}, expected a number")
                    else:
                        if _f32_hex(dv) != hx and not (np.isnan(dv) and np.isnan(lr)):
                            r.fail(MANIFEST, f"{what}.lr: decimal {dec} is float32 {_f32_hex(dv)}, but f32_hex says {hx}")
            if "log_text" in lrd:
                text = _typed(r, lrd, "log_text", str, f"{what}.lr")
                if text is not None:
                    v = _parse_text_float(text)
                    if v is None:
                        r.fail(MANIFEST, f"{what}.lr.log_text is {text!r}, expected a number")
                    elif hx is not None and _f32_hex(v) != hx:
                        r.fail(MANIFEST, f"{what}.lr: log_text {text} is float32 {_f32_hex(v)}, but f32_hex says {hx}")
                    lr = text
        iterations.append(Iteration(iter=k, grads=[], lr=lr, current_step=step))
    n_it = len(iterations)

    # -- arrays
    listed = set()
    init_params: dict[str, np.ndarray] = {}
    init_history: dict[int, np.ndarray] = {}
    per_iter: dict[str, dict] = {k: {} for k in _PER_ITERATION}
    cover: dict[str, set] = {k: set() for k in _KINDS}  # what the manifest lists, loadable or not
    for i, e in enumerate(arrays):
        what = f"arrays[{i}]"
        fname = _typed(r, e, "file", str, what)
        kind = _typed(r, e, "kind", str, what)
        blob = _typed(r, e, "blob", str, what)
        shape = _typed(r, e, "shape", list, what)
        descr = _typed(r, e, "dtype", str, what)
        nbytes = _typed(r, e, "bytes", int, what)
        sha = _typed(r, e, "sha256", str, what)
        if None in (fname, kind, blob, shape, descr, nbytes, sha):
            continue
        if "/" in fname or "\\" in fname or fname in (MANIFEST, CHECKSUMS) or fname.startswith("."):
            r.fail(MANIFEST, f"{what}.file {fname!r} is not a plain file name")
            continue
        if fname in listed:
            r.fail(MANIFEST, f"{what}.file {fname!r} listed twice")
            continue
        listed.add(fname)
        if kind not in _KINDS:
            r.fail(MANIFEST, f"{what}.kind is {kind!r}, expected one of {', '.join(_KINDS)}")
            continue
        if blob not in shapes:
            r.fail(MANIFEST, f"{what}.blob {blob!r} is not a learnable blob ({', '.join(names)})")
            continue
        if descr != _DESCR:
            r.fail(MANIFEST, f"{what}.dtype is {descr!r}, expected {_DESCR!r} (float32)")
            continue
        if sums.get(fname) not in (None, sha):
            r.fail(MANIFEST, f"{what}.sha256 disagrees with {CHECKSUMS} for {fname}")
        # expected shape
        index = None
        bshape = shapes[blob]
        rows = None
        if kind in _PER_ITERATION:
            rows = _typed(r, e, "iterations", list, what)
            if rows is None:
                continue
            if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < n_it for x in rows) or rows != sorted(set(rows)):
                r.fail(MANIFEST, f"{what}.iterations must be increasing positions in 0..{n_it - 1}")
                continue
        if kind in ("init_history", "history"):
            slot = _typed(r, e, "slot", int, what)
            if slot is None:
                continue
            if not 0 <= slot < cfg.history_slots:
                r.fail(MANIFEST, f"{what}.slot is {slot}, expected 0..{cfg.history_slots - 1}")
                continue
            index = slot * nb + names.index(blob)
        if kind == "grads":
            want = (len(rows), npass) + bshape
        elif rows is not None:
            want = (len(rows),) + bshape
        else:
            want = bshape
        if tuple(shape) != want:
            r.fail(MANIFEST, f"{what}.shape is {shape}, expected {list(want)} for {kind} of {blob}")
            continue
        cover[kind].add(index if kind.endswith("history") else blob)
        raw = _read_file(r, fname, sums, nbytes)
        if raw is None:
            continue
        try:
            fshape, fdescr, fortran, off = _parse_npy(raw)
        except ValueError as ex:
            r.fail(fname, str(ex))
            continue
        if fdescr != _DESCR or fortran:
            r.fail(fname, f"dtype {fdescr!r}{' (Fortran order)' if fortran else ''}, expected {_DESCR!r} in C order")
            continue
        if fshape != want:
            r.fail(fname, f"shape {fshape}, manifest says {list(want)}")
            continue
        count = 1
        for dd in fshape:
            count *= dd
        if len(raw) - off != 4 * count:
            how = "truncated" if len(raw) - off < 4 * count else "trailing bytes"
            r.fail(fname, f"{len(raw) - off} data bytes, expected {4 * count} for shape {fshape} ({how})")
            continue
        arr = np.frombuffer(raw, dtype=_DESCR, offset=off).reshape(fshape).astype(np.float32, copy=False)
        if kind == "init_params":
            if blob in init_params:
                r.fail(MANIFEST, f"{what}: second init_params for {blob}")
            init_params[blob] = arr
        elif kind == "init_history":
            if index in init_history:
                r.fail(MANIFEST, f"{what}: second init_history slot {slot} for {blob}")
            init_history[index] = arr
        else:
            key = blob if kind in ("grads", "params", "diff") else index
            if key in per_iter[kind]:
                r.fail(MANIFEST, f"{what}: second {kind} array for {blob}")
            per_iter[kind][key] = (rows, arr)

    # -- completeness
    on_disk = {p.name for p in r.root.iterdir() if p.is_file()} - {MANIFEST, CHECKSUMS}
    for extra in sorted(on_disk - listed):
        r.fail(extra, f"file not listed in {MANIFEST}")
    for extra in sorted(set(sums) - listed - {MANIFEST}):
        r.fail(CHECKSUMS, f"lists {extra!r}, which {MANIFEST} does not")
    for n in names:
        if n not in cover["init_params"]:
            r.fail(MANIFEST, f"no init_params array for blob {n}")
    if init_hist and len(cover["init_history"]) != nh:
        r.fail(MANIFEST, f"init.history is true but {len(cover['init_history'])} of {nh} init_history arrays are listed")
    if not init_hist and cover["init_history"]:
        r.fail(MANIFEST, "init.history is false but init_history arrays are listed")
    if npass and n_it and len(cover["grads"]) != nb:
        r.fail(MANIFEST, f"passes is {npass} but grads arrays cover {len(cover['grads'])} of {nb} blobs")
    if not npass and cover["grads"]:
        r.fail(MANIFEST, "passes is 0 but grads arrays are listed")
    for kind, need in (("params", nb), ("diff", nb), ("history", nh)):
        if cover[kind] and len(cover[kind]) != need:
            r.fail(MANIFEST, f"{kind} arrays cover {len(cover[kind])} of {need} blobs")
        if len({tuple(rows) for rows, _ in per_iter[kind].values()}) > 1:
            r.fail(MANIFEST, f"{kind} arrays disagree on their iterations")
    if r.problems:
        return None

    for n, (rows, arr) in per_iter["grads"].items():
        for j, pos in enumerate(rows):
            if not iterations[pos].grads:
                iterations[pos].grads = [{} for _ in range(npass)]
            for p in range(npass):
                iterations[pos].grads[p][n] = arr[j, p, ...]
    for it in iterations:  # net order inside each dict
        it.grads = [{b: g[b] for b in names} for g in it.grads]
    for kind in ("params", "diff"):
        for n in names:
            if n in per_iter[kind]:
                rows, arr = per_iter[kind][n]
                for j, pos in enumerate(rows):
                    d = getattr(iterations[pos], kind)
                    if d is None:
                        d = {}
                        setattr(iterations[pos], kind, d)
                    d[n] = arr[j, ...]
    if per_iter["history"]:
        for h in range(nh):
            rows, arr = per_iter["history"][h]
            for j, pos in enumerate(rows):
                if iterations[pos].history is None:
                    iterations[pos].history = [None] * nh
                iterations[pos].history[h] = arr[j, ...]

    return Trace(
        name=name,
        config=cfg,
        init_params={n: init_params[n] for n in names},
        iterations=iterations,
        init_history=[init_history[h] for h in range(nh)] if init_hist else None,
        init_iter=init_iter,
        init_current_step=init_step,
        provenance=prov,
        refusal=refusal_msg,
        refusal_when=refusal_when,
        source=source,
    )


def release(*arrays) -> None:
    """Drop the resident pages of arrays ``read_golden`` mapped (a no-op for any other array).

    Their values stay readable (they page in again from the file), but
    changes made to them are lost: call it only on arrays nothing changed,
    once they have been used. Keeps replay's memory to about one
    iteration of a large trace.
    """
    for a in arrays:
        while isinstance(a, np.ndarray):
            a = a.base
        if isinstance(a, memoryview) and isinstance(a.obj, mmap.mmap):
            a.obj.madvise(mmap.MADV_DONTNEED)


def read_golden(path) -> Trace:
    """Read and verify the golden trace directory ``path``.

    Every file's sha256 is checked against ``SHA256SUMS`` and the manifest,
    every ``.npy`` header against the manifest (dtype float32, C order, shape
    from the blob list and iteration count), and the manifest against itself
    (lr hex vs decimal, blob coverage, increasing iterations). The first
    problem raises ``InputError(file, problem)``; e.g.
    ``t/params.00.ip0_0.npy: sha256 mismatch: ...``.
    """
    trace, problems = _load(path, collect=False)
    if problems:
        raise problems[0]
    assert trace is not None
    return trace


def verify_golden(path) -> list[InputError]:
    """Every problem found in the golden trace ``path`` (empty when intact).

    Each problem is an ``InputError`` whose ``str()`` is a one-line message
    naming the file; ``.path`` is that file.
    """
    _, problems = _load(path, collect=True)
    return problems


def is_golden(path) -> bool:
    """True when ``path`` is a directory holding a ``trace.json`` manifest."""
    return (Path(path) / MANIFEST).is_file()


# --------------------------------------------------------------------------
# comparison (round trips, conversions)
# --------------------------------------------------------------------------
def _bits_equal(a, b) -> bool:
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        return False
    return a.dtype == b.dtype == np.float32 and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _same_float(a, b) -> bool:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    return _f32_hex(a) == _f32_hex(b) and (a == b or (math.isnan(a) and math.isnan(b)))


def trace_differences(a: Trace, b: Trace) -> list[str]:
    """How two traces differ, bit for bit (float32 arrays compared as uint32); empty when identical.

    Used to check that a golden trace reads back exactly as written.
    """
    out: list[str] = []
    for f in ("name", "config", "init_iter", "init_current_step", "provenance", "refusal", "refusal_when", "source"):
        if getattr(a, f) != getattr(b, f):
            out.append(f"{f}: {getattr(a, f)!r} != {getattr(b, f)!r}")

    def params(x, y, what):
        if (x is None) != (y is None):
            out.append(f"{what}: one is missing")
            return
        if x is None:
            return
        if list(x) != list(y):
            out.append(f"{what}: blobs {list(x)} != {list(y)}")
            return
        for n in x:
            if not _bits_equal(x[n], y[n]):
                out.append(f"{what}[{n}] differs")

    def hist(x, y, what):
        if (x is None) != (y is None):
            out.append(f"{what}: one is missing")
            return
        if x is None:
            return
        if len(x) != len(y):
            out.append(f"{what}: {len(x)} blobs != {len(y)}")
            return
        for h, (u, v) in enumerate(zip(x, y)):
            if not _bits_equal(u, v):
                out.append(f"{what}[{h}] differs")

    params(a.init_params, b.init_params, "init_params")
    hist(a.init_history, b.init_history, "init_history")
    if len(a.iterations) != len(b.iterations):
        out.append(f"iterations: {len(a.iterations)} != {len(b.iterations)}")
        return out
    for x, y in zip(a.iterations, b.iterations):
        w = f"iteration {x.iter}"
        if x.iter != y.iter or x.current_step != y.current_step:
            out.append(f"{w}: iter/current_step {x.iter}/{x.current_step} != {y.iter}/{y.current_step}")
        if not _same_float(x.lr, y.lr):
            out.append(f"{w}: lr {x.lr!r} != {y.lr!r}")
        if len(x.grads) != len(y.grads):
            out.append(f"{w}: {len(x.grads)} passes != {len(y.grads)}")
        else:
            for p, (gx, gy) in enumerate(zip(x.grads, y.grads)):
                params(gx, gy, f"{w} pass {p} grads")
        params(x.params, y.params, f"{w} params")
        params(x.diff, y.diff, f"{w} diff")
        hist(x.history, y.history, f"{w} history")
    return out
