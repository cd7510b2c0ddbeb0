"""Real Caffe 1.0 as the oracle: find the install, build the injection net, capture runs.

``tools/install-caffe`` unpacks Debian 11's CPU build of Caffe (``caffe``,
``libcaffe1``) with three BLAS libraries into a private prefix (``.caffe/``);
:func:`find_caffe` finds it and gives the environment that selects a BLAS.

A *capture* is one run of ``caffe train`` on a gradient-injection net, written
in the layout of ``docs/CAPTURE_FORMAT.md`` (the same as ``fixtures/caffe-runs/*``):

- ``HDF5Data`` (batch 1, no shuffle) feeds one row per forward pass; row
  ``k*iter_size + p`` feeds pass ``p`` of iteration ``k``;
- each layer ``J`` is ``InnerProduct`` (``x``\\ :sub:`J` of length D, ``num_output`` O)
  followed by ``Eltwise PROD`` with a row ``c``\\ :sub:`J` of O powers of two, ``loss_weight: 1``;
- so the weight gradient is exactly ``c[o]*x[d]`` and the bias gradient ``c[o]``.

:func:`capture` draws ``x`` and ``c`` from a seeded generator (optionally with
zeros, subnormals, huge values, NaN and Inf injected) or decomposes a user's
``gradients.npz`` into that form; :func:`capture_like` re-runs real Caffe on
the exact inputs of an existing capture. ``docs/ORACLE.md`` has the details,
the layer spec syntax (:func:`parse_layers`) and how resumed runs are recorded.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import BlobSpec, SolverConfig
from .errors import InputError, OracleError, OracleUnavailable

__all__ = [
    "BLAS_CHOICES",
    "GRAD_SPECIALS",
    "CaffeInstall",
    "find_caffe",
    "LayerSpec",
    "parse_layers",
    "GradientSpec",
    "Injection",
    "generate_injection",
    "injection_from_gradients",
    "read_injection",
    "net_prototxt",
    "solver_prototxt",
    "solver_fields",
    "CaptureResult",
    "capture",
    "capture_like",
]

#: the BLAS libraries ``tools/install-caffe`` installs, selected at run time
BLAS_CHOICES = ("openblas", "reference", "atlas")
#: special gradient values the generator can inject
GRAD_SPECIALS = ("zeros", "subnormal", "huge", "nan", "inf")

_TRIPLET = "x86_64-linux-gnu"
_MANIFEST = "caffe-harness-install.json"
#: BLAS -> (package reporting its version, library dirs put first); same table as tools/install-caffe
_BLAS_LAYOUT = {
    "openblas": ("libopenblas0-pthread", (f"usr/lib/{_TRIPLET}/openblas-pthread",)),
    "reference": ("libblas3", (f"usr/lib/{_TRIPLET}/blas", f"usr/lib/{_TRIPLET}/lapack")),
    "atlas": ("libatlas3-base", (f"usr/lib/{_TRIPLET}/atlas",)),
}
_COMMON_LIBDIRS = (f"usr/lib/{_TRIPLET}", f"lib/{_TRIPLET}", "usr/lib", f"usr/lib/{_TRIPLET}/hdf5/serial")
_NOT_INSTALLED = "real Caffe is not installed: run tools/install-caffe"

#: exponents of the power-of-two multipliers c (±2^-3..2^3)
_C_EXP_MIN, _C_EXP_MAX = -3, 3
#: CPU flags that can change float rounding or the BLAS kernel chosen
_CPU_FLAGS = ("sse2", "sse4_1", "sse4_2", "avx", "avx2", "fma", "fma4", "f16c", "avx512f", "avx512dq", "avx512vl")


def _check_blas(blas: str) -> str:
    if blas not in BLAS_CHOICES:
        raise InputError(None, f"unknown blas {blas!r}: expected one of {', '.join(BLAS_CHOICES)}")
    return blas


# =============================================================================
# The install
# =============================================================================
@dataclass(frozen=True)
class CaffeInstall:
    """A private install of Debian's Caffe 1.0 (CPU) with three BLAS libraries.

    ``prefix`` is the unpacked root (``usr/bin/caffe`` under it), ``version``
    the Debian package version of ``caffe`` (e.g. ``1.0.0+git20180821.99bd997-8+b2``),
    ``packages`` every unpacked package and its version, ``libdirs`` the
    ``LD_LIBRARY_PATH`` directories for each BLAS (that BLAS first).
    """

    prefix: Path
    version: str
    packages: Mapping[str, str] = field(default_factory=dict)
    libdirs: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)

    @property
    def caffe(self) -> Path:
        """The ``caffe`` executable."""
        return self.prefix / "usr" / "bin" / "caffe"

    def env(self, blas: str = "openblas", base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment that runs ``caffe`` with ``blas``'s ``libblas.so.3``.

        ``LD_LIBRARY_PATH`` holds that BLAS's directories first, then Caffe's
        own; an inherited ``LD_LIBRARY_PATH`` is dropped so no other BLAS can
        be picked up. ``OPENBLAS_NUM_THREADS`` defaults to 1 so that results do
        not depend on the machine's core count.
        """
        _check_blas(blas)
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(str(d) for d in self.libdirs[blas])
        env.setdefault("OPENBLAS_NUM_THREADS", "1")
        env.setdefault("OMP_NUM_THREADS", "1")
        return env

    def blas_package(self, blas: str) -> str:
        """``"<package> <version>"`` of the BLAS library ``blas`` selects."""
        pkg = _BLAS_LAYOUT[_check_blas(blas)][0]
        text = f"{pkg} {self.packages.get(pkg, 'unknown')}"
        if blas == "reference":
            text += f", liblapack3 {self.packages.get('liblapack3', 'unknown')}"
        return text

    def blas_library(self, blas: str) -> Path:
        """The ``libblas.so.3`` that ``caffe`` actually loads with ``blas`` (asks ``ldd``)."""
        try:
            p = subprocess.run(["ldd", str(self.caffe)], env=self.env(blas), capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OracleError(f"ldd {self.caffe}: {e}") from None
        for line in p.stdout.splitlines():
            m = re.match(r"\s*libblas\.so\.3 => (\S+)", line)
            if m:
                if m.group(1) == "not":
                    raise OracleError(f"{self.caffe}: libblas.so.3 not found with blas={blas!r}")
                return Path(m.group(1))
        raise OracleError(f"{self.caffe}: ldd does not list libblas.so.3 (exit {p.returncode})")

    def run(self, args: Sequence[str], *, cwd, blas: str = "openblas", timeout: float = 600,
            log=None) -> int:
        """Run ``caffe ARGS`` in ``cwd`` with glog on stderr; return its exit code.

        The combined output goes to the open file ``log`` (or is discarded).
        A negative code is the signal that ended Caffe (``-6``: a failed CHECK).
        """
        env = self.env(blas)
        env["GLOG_logtostderr"] = "1"
        try:
            p = subprocess.run([str(self.caffe), *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                               stdout=log if log is not None else subprocess.DEVNULL,
                               stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise OracleError(f"caffe {' '.join(args)}: no result after {timeout:g} s (in {cwd})") from None
        except OSError as e:
            raise OracleError(f"{self.caffe}: cannot run: {e.strerror}") from None
        return p.returncode


def _default_prefix() -> Path:
    env = os.environ.get("CAFFE_HARNESS_CAFFE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / ".caffe"


def find_caffe(prefix: str | os.PathLike | None = None) -> CaffeInstall:
    """The real Caffe install: ``prefix``, else ``$CAFFE_HARNESS_CAFFE``, else ``<repo>/.caffe``.

    Reads the manifest ``tools/install-caffe`` writes; a prefix without one
    (unpacked by hand in the same Debian layout) works too, with versions
    read from its ``usr/share/doc``. Raises :class:`OracleUnavailable` when
    there is no ``usr/bin/caffe`` or no BLAS library.
    """
    root = Path(prefix) if prefix is not None else _default_prefix()
    root = root.resolve() if root.exists() else root
    if not (root / "usr" / "bin" / "caffe").is_file():
        raise OracleUnavailable(_NOT_INSTALLED if prefix is None else f"{root}: no usr/bin/caffe here: {_NOT_INSTALLED}")
    packages: dict[str, str] = {}
    libdirs: dict[str, tuple[Path, ...]] = {}
    manifest_path = root / _MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            packages = {str(k): str(v) for k, v in manifest["packages"].items()}
            for blas, spec in manifest.get("blas", {}).items():
                libdirs[blas] = tuple(root / d for d in spec["libdirs"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OracleUnavailable(f"{manifest_path}: unreadable install manifest: rerun tools/install-caffe --force") from None
    else:
        packages = _versions_from_docs(root)
    for blas, (_, dirs) in _BLAS_LAYOUT.items():
        libdirs.setdefault(blas, tuple(root / d for d in dirs + _COMMON_LIBDIRS))
    missing = [b for b in BLAS_CHOICES if not any((d / "libblas.so.3").exists() for d in libdirs[b][:2])]
    if missing:
        raise OracleUnavailable(f"{root}: no libblas.so.3 for {', '.join(missing)}: {_NOT_INSTALLED}")
    return CaffeInstall(prefix=root, version=packages.get("caffe", "unknown"), packages=packages, libdirs=libdirs)


def _versions_from_docs(root: Path) -> dict[str, str]:
    import gzip

    out = {}
    for pkg in ("caffe", "libopenblas0-pthread", "libblas3", "liblapack3", "libatlas3-base"):
        doc = root / "usr" / "share" / "doc" / pkg
        for name in ("changelog.Debian.amd64.gz", "changelog.Debian.gz"):
            try:
                with gzip.open(doc / name, "rt", errors="replace") as f:
                    m = re.match(r"\S+ \(([^)]+)\)", f.readline())
            except OSError:
                continue
            if m:
                out[pkg] = m.group(1)
                break
    return out


# =============================================================================
# Layers of the injection net
# =============================================================================
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_LAYER_KEYS = ("D", "O", "bias", "lr_w", "decay_w", "lr_b", "decay_b", "name")
#: Caffe's customary multipliers: weights lr 1 decay 1, bias lr 2 decay 0
_LAYER_DEFAULTS = {"bias": True, "lr_w": 1, "decay_w": 1, "lr_b": 2, "decay_b": 0}


@dataclass(frozen=True)
class LayerSpec:
    """One ``InnerProduct`` layer of the injection net: D inputs, O outputs.

    Its weight blob is ``(O, D)``, its bias ``(O,)`` when ``bias``;
    ``lr_w``/``decay_w`` and ``lr_b``/``decay_b`` are the ``lr_mult`` and
    ``decay_mult`` of weight and bias. Numbers keep the type they were given
    (``1`` prints as ``1``, ``2.0`` as ``2.0``), so a spec read from a
    capture's ``config.json`` writes the same ``net.prototxt`` again.
    ``name`` defaults to ``ip<J>``.
    """

    D: int
    O: int
    bias: bool = True
    lr_w: float = 1
    decay_w: float = 1
    lr_b: float = 2
    decay_b: float = 0
    name: str | None = None

    def layer_name(self, j: int) -> str:
        """The InnerProduct layer's name (``ip<j>`` unless named)."""
        return self.name or f"ip{j}"

    def blob_specs(self, j: int) -> tuple[BlobSpec, ...]:
        """The layer's learnable blobs as :class:`harness.config.BlobSpec`."""
        n = self.layer_name(j)
        out = [BlobSpec(f"{n}/0", (self.O, self.D), float(self.lr_w), float(self.decay_w))]
        if self.bias:
            out.append(BlobSpec(f"{n}/1", (self.O,), float(self.lr_b), float(self.decay_b)))
        return tuple(out)

    def to_dict(self) -> dict:
        """The ``config.json`` form: ``D``, ``O`` and the non-default keys only."""
        d: dict = {"D": self.D, "O": self.O}
        for k, default in _LAYER_DEFAULTS.items():
            v = getattr(self, k)
            if k == "bias":
                if not v:
                    d["bias"] = False
            elif self.bias or not k.endswith("_b"):
                if type(v) is not type(default) or v != default:
                    d[k] = v
        if self.name:
            d["name"] = self.name
        return d


def _layer_from_dict(d: Mapping, where: str) -> LayerSpec:
    if not isinstance(d, Mapping):
        raise InputError(None, f"{where}: expected an object with D and O, got {d!r}")
    unknown = sorted(set(d) - set(_LAYER_KEYS))
    if unknown:
        raise InputError(None, f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_LAYER_KEYS)})")
    kw = {}
    for k in ("D", "O"):
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(None, f"{where}: {k} must be a positive integer, got {v!r}")
        kw[k] = v
    if "bias" in d:
        if not isinstance(d["bias"], bool):
            raise InputError(None, f"{where}: bias must be true or false, got {d['bias']!r}")
        kw["bias"] = d["bias"]
    for k in ("lr_w", "decay_w", "lr_b", "decay_b"):
        if k in d:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(None, f"{where}: {k} must be a finite number, got {v!r}")
            kw[k] = v
    if "name" in d:
        if not isinstance(d["name"], str) or not _NAME_RE.match(d["name"]):
            raise InputError(None, f"{where}: name must match {_NAME_RE.pattern}, got {d['name']!r}")
        kw["name"] = d["name"]
    return LayerSpec(**kw)


def _parse_number(text: str, where: str) -> float | int:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise InputError(None, f"{where}: expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise InputError(None, f"{where}: expected a finite number, got {text!r}")
    return v


def _parse_layer_text(item: str, j: int) -> LayerSpec:
    where = f"layer {j} ({item!r})"
    parts = item.strip().split(":")
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", parts[0])
    if not m:
        raise InputError(None, f"{where}: expected DxO (inputs x outputs), e.g. 7x3")
    d: dict = {"D": int(m.group(1)), "O": int(m.group(2))}
    for opt in parts[1:]:
        opt = opt.strip()
        if opt in ("bias", "nobias"):
            d["bias"] = opt == "bias"
        elif "=" in opt:
            k, v = (s.strip() for s in opt.split("=", 1))
            if k == "name":
                d[k] = v
            elif k in ("lr_w", "decay_w", "lr_b", "decay_b"):
                d[k] = _parse_number(v, f"{where}: {k}")
            else:
                raise InputError(None, f"{where}: unknown option {k!r} (known: nobias, bias, lr_w, decay_w, lr_b, decay_b, name)")
        else:
            raise InputError(None, f"{where}: unknown option {opt!r} (known: nobias, bias, lr_w=, decay_w=, lr_b=, decay_b=, name=)")
    return _layer_from_dict(d, where)


def parse_layers(spec) -> tuple[LayerSpec, ...]:
    """Layers from a spec string, a JSON file, a list of dicts/LayerSpecs or BlobSpecs.

    The string form is comma-separated layers ``DxO[:option...]`` with options
    ``nobias``, ``lr_w=F``, ``decay_w=F``, ``lr_b=F``, ``decay_b=F``,
    ``name=NAME``; e.g. ``"7x3,5x2:nobias:lr_w=0.5:decay_w=2.0"``. A path to a
    ``.json`` file holds a list of ``{"D":7,"O":3,...}`` objects (or a
    ``config.json`` with a ``"layers"`` list). A sequence of
    :class:`harness.config.BlobSpec` (a ``SolverConfig.blobs``) is grouped by
    layer: blob 0 must be a 2-D ``(O, D)`` weight, blob 1 an ``(O,)`` bias.
    """
    if isinstance(spec, LayerSpec):
        spec = [spec]
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        if text.endswith(".json") or (os.sep in text and os.path.exists(text)):
            try:
                data = json.loads(Path(text).read_text())
            except OSError as e:
                raise InputError(text, f"cannot read: {e.strerror}") from None
            except ValueError as e:
                raise InputError(text, f"not valid JSON: {e}") from None
            if isinstance(data, Mapping) and "layers" in data:
                data = data["layers"]
            if not isinstance(data, list):
                raise InputError(text, "expected a list of layers (or an object with \"layers\")")
            try:
                layers = tuple(_layer_from_dict(d, f"layer {j}") for j, d in enumerate(data))
            except InputError as e:
                raise InputError(text, e.problem) from None
        else:
            items = [s for s in text.split(",") if s.strip()]
            layers = tuple(_parse_layer_text(s, j) for j, s in enumerate(items))
    elif isinstance(spec, Sequence) and spec and all(isinstance(b, BlobSpec) for b in spec):
        layers = _layers_from_blobs(spec)
    elif isinstance(spec, Sequence):
        layers = tuple(s if isinstance(s, LayerSpec) else _layer_from_dict(s, f"layer {j}") for j, s in enumerate(spec))
    else:
        raise InputError(None, f"layers: expected a spec string, a JSON file or a list, got {type(spec).__name__}")
    if not layers:
        raise InputError(None, "layers: at least one layer is needed")
    names = [l.layer_name(j) for j, l in enumerate(layers)]
    reserved = {"inject"} | {f"s{j}" for j in range(len(layers))}
    for j, n in enumerate(names):
        if names.count(n) > 1 or n in reserved:
            raise InputError(None, f"layer {j}: name {n!r} is used twice or reserved")
    return layers


def _layers_from_blobs(blobs: Sequence[BlobSpec]) -> tuple[LayerSpec, ...]:
    groups: dict[str, dict[int, BlobSpec]] = {}
    for b in blobs:
        groups.setdefault(b.layer, {})[b.index] = b
    out = []
    for j, (name, g) in enumerate(groups.items()):
        w, bias = g.get(0), g.get(1)
        if w is None or len(w.shape) != 2 or set(g) - {0, 1}:
            raise InputError(None, f"blob {name}: the injection net needs a 2-D (O, D) weight and an optional (O,) bias per layer")
        if bias is not None and tuple(bias.shape) != (w.shape[0],):
            raise InputError(None, f"blob {name}/1: bias shape {tuple(bias.shape)} does not match weight {tuple(w.shape)}")
        kw = dict(D=int(w.shape[1]), O=int(w.shape[0]), bias=bias is not None, lr_w=_tidy(w.lr_mult), decay_w=_tidy(w.decay_mult))
        if bias is not None:
            kw.update(lr_b=_tidy(bias.lr_mult), decay_b=_tidy(bias.decay_mult))
        if name != f"ip{j}":
            kw["name"] = name
        out.append(_layer_from_dict(kw, f"blob {name}"))
    return tuple(out)


def _tidy(v: float) -> float | int:
    """A float multiplier as the shortest number that is the same float32 (ints stay ints)."""
    f = float(np.float32(v))
    return int(f) if f.is_integer() and abs(f) < 2**31 else float(str(np.float32(f)))


# =============================================================================
# Gradient streams
# =============================================================================
@dataclass(frozen=True)
class GradientSpec:
    """The seeded generator's settings for the injected rows.

    ``x`` is standard normal (float32) and ``c`` a random ±2^e, e in -3..3.
    ``special`` lists kinds from :data:`GRAD_SPECIALS` injected into ``x``
    elements at ``rate`` (each element independently; the kind drawn
    uniformly); ``zeros`` also zeroes ``c`` elements at ``rate`` (zero bias
    gradients). ``positions`` are exact injections, each a dict
    ``{"iter": k, "pass": p, "layer": J or name, "d": i, "kind": K}`` (``x[d]``)
    or with ``"o": i`` instead of ``"d"`` and kind ``zeros`` (``c[o] = 0``).
    Rows holding subnormals get ``c >= 1`` and rows holding huge values
    ``c <= 1``, so every product ``c*x`` stays exact.
    """

    special: tuple[str, ...] = ()
    rate: float = 0.05
    positions: tuple[Mapping, ...] = ()

    def __post_init__(self):
        sp = (self.special,) if isinstance(self.special, str) else tuple(self.special)
        bad = [s for s in sp if s not in GRAD_SPECIALS]
        if bad:
            raise InputError(None, f"unknown gradient special(s) {', '.join(map(repr, bad))}: expected {', '.join(GRAD_SPECIALS)}")
        object.__setattr__(self, "special", sp)
        if isinstance(self.rate, bool) or not isinstance(self.rate, (int, float)) or not 0 <= self.rate <= 1:
            raise InputError(None, f"gradient rate must be in [0, 1], got {self.rate!r}")
        object.__setattr__(self, "positions", tuple(dict(p) for p in self.positions))

    def to_dict(self) -> dict:
        """The ``config.json`` form."""
        d: dict = {"generator": "injection-v1"}
        if self.special:
            d["special"] = list(self.special)
            d["rate"] = self.rate
        if self.positions:
            d["positions"] = [dict(p) for p in self.positions]
        return d


@dataclass
class Injection:
    """The injected rows: per layer ``x`` (rows, D) and ``c`` (rows, O), float32.

    Row ``k*iter_size + p`` feeds pass ``p`` of iteration ``k``.
    """

    layers: tuple[LayerSpec, ...]
    iters: int
    iter_size: int
    x: list[np.ndarray]
    c: list[np.ndarray]

    @property
    def rows(self) -> int:
        return self.iters * self.iter_size

    def gradients(self) -> dict[str, np.ndarray]:
        """``grad/<iter>/<pass>/<layer>/<blob>`` as Caffe's backward pass produces them.

        Weight ``c[o]*x[d]`` and bias ``c[o]`` (exact products), added to
        Caffe's zeroed diff, so a ``-0`` product reads ``+0``; blobs with
        ``lr_mult`` 0 get zeros (Caffe does not back-propagate into them).
        """
        out: dict[str, np.ndarray] = {}
        zero = np.float32(0)
        for k in range(self.iters):
            for p in range(self.iter_size):
                r = k * self.iter_size + p
                for j, layer in enumerate(self.layers):
                    n = layer.layer_name(j)
                    x, c = self.x[j][r], self.c[j][r]
                    if layer.lr_w != 0:
                        with np.errstate(all="ignore"):
                            w = (c[:, None] * x[None, :]) + zero
                    else:
                        w = np.zeros((layer.O, layer.D), np.float32)
                    out[f"grad/{k}/{p}/{n}/0"] = w.astype(np.float32, copy=False)
                    if layer.bias:
                        out[f"grad/{k}/{p}/{n}/1"] = (c + zero) if layer.lr_b != 0 else np.zeros(layer.O, np.float32)
        return out

    def write_h5(self, path: Path, first_row: int = 0) -> None:
        """Write rows ``first_row..`` as datasets ``x<J>``, ``c<J>`` (float32)."""
        import h5py

        tmp = path.with_name(path.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            for j in range(len(self.layers)):
                f.create_dataset(f"x{j}", data=np.ascontiguousarray(self.x[j][first_row:], np.float32))
                f.create_dataset(f"c{j}", data=np.ascontiguousarray(self.c[j][first_row:], np.float32))
        os.replace(tmp, path)


def _special_values(rng: np.random.Generator, kinds: np.ndarray, names: Sequence[str]) -> np.ndarray:
    n = len(kinds)
    sign = np.where(rng.random(n) < 0.5, np.float32(-1), np.float32(1)).astype(np.float32)
    sub = (rng.integers(1, 1 << 23, n, dtype=np.uint32)).view(np.float32) * sign
    huge = (np.ldexp(1 + rng.random(n), rng.integers(100, 125, n)) * sign).astype(np.float32)
    table = {
        "zeros": np.zeros(n, np.float32),
        "subnormal": sub,
        "huge": huge,
        "nan": np.full(n, np.nan, np.float32),
        "inf": (np.float32(np.inf) * sign).astype(np.float32),
    }
    out = np.empty(n, np.float32)
    for i, name in enumerate(names):
        m = kinds == i
        out[m] = table[name][m]
    return out


def _kind_value(kind: str) -> np.float32:
    return {
        "zeros": np.float32(0),
        "subnormal": np.uint32(0x00012345).view(np.float32),
        "huge": np.float32(2.0**120 * 1.5),
        "nan": np.float32(np.nan),
        "inf": np.float32(np.inf),
    }[kind]


def _power_of_two(e: np.ndarray, sign: np.ndarray) -> np.ndarray:
    return (np.ldexp(np.float32(1), e) * sign).astype(np.float32)


def generate_injection(layers, iters: int, iter_size: int = 1, spec: GradientSpec | Mapping | None = None,
                       *, seed: int = 1) -> tuple[Injection, dict[str, np.ndarray]]:
    """Draw the injected rows and the initial weights from ``seed``.

    Returns the :class:`Injection` and the initial blobs keyed ``<layer>/<index>``
    (weights ``0.5*N(0,1)``, biases ``0.1*N(0,1)``, float32).
    """
    layers = parse_layers(layers)
    spec = _gradient_spec(spec)
    _check_counts(iters, iter_size)
    rng = np.random.default_rng(seed)
    init: dict[str, np.ndarray] = {}
    for j, l in enumerate(layers):
        n = l.layer_name(j)
        init[f"{n}/0"] = (rng.standard_normal((l.O, l.D)) * 0.5).astype(np.float32)
        if l.bias:
            init[f"{n}/1"] = (rng.standard_normal(l.O) * 0.1).astype(np.float32)
    rows = iters * iter_size
    xs, cs = [], []
    for j, l in enumerate(layers):
        x = rng.standard_normal((rows, l.D)).astype(np.float32)
        e = rng.integers(_C_EXP_MIN, _C_EXP_MAX + 1, (rows, l.O))
        sign = np.where(rng.random((rows, l.O)) < 0.5, -1.0, 1.0)
        czero = np.zeros((rows, l.O), bool)
        if spec.special and spec.rate > 0:
            mask = rng.random((rows, l.D)) < spec.rate
            kinds = rng.integers(0, len(spec.special), int(mask.sum()))
            x[mask] = _special_values(rng, kinds, spec.special)
            if "zeros" in spec.special:
                czero = rng.random((rows, l.O)) < spec.rate
        xs.append(x)
        cs.append((e, sign, czero))
    names = {l.layer_name(j): j for j, l in enumerate(layers)}
    for i, pos in enumerate(spec.positions):
        j, r, kind = _position(pos, i, layers, names, iters, iter_size)
        if "o" in pos:
            o = pos["o"]
            if kind != "zeros" or not isinstance(o, int) or not 0 <= o < layers[j].O:
                raise InputError(None, f"gradient position {i}: 'o' needs kind 'zeros' and 0 <= o < {layers[j].O}, got {pos!r}")
            cs[j][2][r, o] = True
        else:
            d = pos.get("d")
            if not isinstance(d, int) or not 0 <= d < layers[j].D:
                raise InputError(None, f"gradient position {i}: 'd' must be in 0..{layers[j].D - 1}, got {pos!r}")
            xs[j][r, d] = _kind_value(kind)
    c_out = []
    for j, (x, (e, sign, czero)) in enumerate(zip(xs, cs)):
        a = np.abs(x)
        tiny = ((a > 0) & (a < np.finfo(np.float32).tiny)).any(axis=1)
        big = (np.isfinite(a) & (a >= np.float32(2.0**100))).any(axis=1)
        e = np.where(tiny[:, None], np.maximum(e, 0), e)
        e = np.where(big[:, None], np.minimum(e, 0), e)
        c = _power_of_two(e, sign)
        # no c = 0 in rows holding NaN/Inf: 0*Inf is NaN in some BLAS and skipped (0) in others
        c[czero & np.isfinite(x).all(axis=1)[:, None]] = 0
        c_out.append(c)
    return Injection(layers, iters, iter_size, xs, c_out), init


def _position(pos: Mapping, i: int, layers, names, iters: int, iter_size: int):
    if not isinstance(pos, Mapping):
        raise InputError(None, f"gradient position {i}: expected an object, got {pos!r}")
    k, p, lay, kind = pos.get("iter"), pos.get("pass", 0), pos.get("layer", 0), pos.get("kind")
    if kind not in GRAD_SPECIALS:
        raise InputError(None, f"gradient position {i}: kind must be one of {', '.join(GRAD_SPECIALS)}, got {kind!r}")
    if not isinstance(k, int) or not 0 <= k < iters or not isinstance(p, int) or not 0 <= p < iter_size:
        raise InputError(None, f"gradient position {i}: iter must be in 0..{iters - 1} and pass in 0..{iter_size - 1}, got {pos!r}")
    j = names.get(lay) if isinstance(lay, str) else lay
    if not isinstance(j, int) or not 0 <= j < len(layers):
        raise InputError(None, f"gradient position {i}: unknown layer {lay!r}")
    return j, k * iter_size + p, kind


def _gradient_spec(spec) -> GradientSpec:
    if spec is None:
        return GradientSpec()
    if isinstance(spec, GradientSpec):
        return spec
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"special", "rate", "positions", "generator"}
        if unknown:
            raise InputError(None, f"gradient spec: unknown key(s) {', '.join(sorted(unknown))} (known: special, rate, positions)")
        return GradientSpec(**{k: v for k, v in spec.items() if k != "generator"})
    raise InputError(None, f"gradients: expected a GradientSpec, a dict, or a .npz path, got {type(spec).__name__}")


def _check_counts(iters, iter_size):
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise InputError(None, f"the number of iterations (max_iter) must be a positive integer, got {iters!r}")
    if isinstance(iter_size, bool) or not isinstance(iter_size, int) or iter_size < 1:
        raise InputError(None, f"iter_size must be a positive integer, got {iter_size!r}")


_GRAD_KEY = re.compile(r"^grad/(\d+)/(\d+)/([^/]+)/(\d+)$")
_INIT_KEY = re.compile(r"^init/([^/]+)/(\d+)$")


def _load_arrays(gradients, source: str) -> dict[str, np.ndarray]:
    if isinstance(gradients, Mapping):
        return {str(k): np.asarray(v) for k, v in gradients.items()}
    try:
        with np.load(gradients, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise InputError(source, "no such file") from None
    except (OSError, ValueError, EOFError) as e:
        raise InputError(source, f"not a readable .npz file: {e}") from None
    except Exception as e:  # zipfile.BadZipFile and friends
        raise InputError(source, f"not a readable .npz file: {type(e).__name__}: {e}") from None


def injection_from_gradients(gradients, layers=None, *, iter_size: int | None = None
                             ) -> tuple[Injection, dict[str, np.ndarray], tuple[LayerSpec, ...]]:
    """Decompose a user's gradient stream into injected rows.

    ``gradients`` is a ``.npz`` path (or a mapping) with
    ``grad/<iter>/<pass>/<layer>/<blob>`` float32 arrays (and optionally
    ``init/<layer>/<blob>``). Every weight gradient must be ``c[o]*x[d]`` and
    every bias gradient ``c[o]``, with ``c[o]`` 0 or ±2^e (e in -3..3); blobs
    with ``lr_mult`` 0 must have zero gradients. Without ``layers`` they are
    read from the shapes (multipliers default). Returns the injection, the
    ``init/`` blobs found (may be empty) and the layers. Anything else raises
    :class:`InputError` naming the key.
    """
    source = "<gradients>" if isinstance(gradients, Mapping) else os.fspath(gradients)
    arrays = _load_arrays(gradients, source)
    grads: dict[tuple[int, int, str, int], np.ndarray] = {}
    init: dict[str, np.ndarray] = {}
    order: list[str] = []
    for key, arr in arrays.items():
        m = _GRAD_KEY.match(key)
        mi = _INIT_KEY.match(key)
        if not (m or mi):
            raise InputError(source, f"unexpected key {key!r}: expected grad/<iter>/<pass>/<layer>/<blob> or init/<layer>/<blob>")
        if arr.dtype != np.float32:
            raise InputError(source, f"{key}: dtype {arr.dtype}, expected float32")
        if m:
            k, p, name, b = int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4))
            grads[(k, p, name, b)] = arr
            if name not in order:
                order.append(name)
        else:
            init[f"{mi.group(1)}/{mi.group(2)}"] = arr
    if not grads:
        raise InputError(source, "no grad/<iter>/<pass>/<layer>/<blob> arrays")
    iters = max(k for k, _, _, _ in grads) + 1
    passes = max(p for _, p, _, _ in grads) + 1
    if iter_size is not None and passes != iter_size:
        raise InputError(source, f"gradients have {passes} pass(es) per iteration but iter_size is {iter_size}")
    if layers is None:
        first = {(n, b): grads[(0, 0, n, b)] for (k, p, n, b) in grads if k == 0 and p == 0}
        specs = []
        for j, n in enumerate(_net_order(order, init)):
            w = first.get((n, 0))
            if w is None or w.ndim != 2:
                raise InputError(source, f"grad/0/0/{n}/0: missing or not a 2-D (O, D) weight gradient")
            d = {"D": int(w.shape[1]), "O": int(w.shape[0]), "bias": (n, 1) in first}
            ws = [a for (k, p, m, b), a in grads.items() if m == n and b == 0]
            bs = [a for (k, p, m, b), a in grads.items() if m == n and b == 1]
            if bs and not any(np.any(a != 0) for a in bs) and any(np.any(a != 0) for a in ws):
                d["lr_b"] = 0  # zero bias gradients under nonzero weight gradients: the bias is not learned
            if n != f"ip{j}":
                d["name"] = n
            specs.append(_layer_from_dict(d, f"layer {n}"))
        layers = tuple(specs)
    else:
        layers = parse_layers(layers)
    xs = [np.zeros((iters * passes, l.D), np.float32) for l in layers]
    cs = [np.ones((iters * passes, l.O), np.float32) for l in layers]
    for k in range(iters):
        for p in range(passes):
            r = k * passes + p
            for j, l in enumerate(layers):
                n = l.layer_name(j)
                w = grads.get((k, p, n, 0))
                b = grads.get((k, p, n, 1))
                key = f"grad/{k}/{p}/{n}"
                if w is None or (l.bias and b is None):
                    raise InputError(source, f"{key}/{0 if w is None else 1}: missing")
                if w.shape != (l.O, l.D) or (b is not None and b.shape != (l.O,)):
                    raise InputError(source, f"{key}: shapes {w.shape}{'' if b is None else ', ' + str(b.shape)} do not match the layer ({l.O}, {l.D})")
                if b is not None and not l.bias:
                    raise InputError(source, f"{key}/1: a bias gradient for a layer without bias")
                xs[j][r], cs[j][r] = _decompose(w, b, l, key, source)
    extra = sorted({n for (_, _, n, _) in grads} - {l.layer_name(j) for j, l in enumerate(layers)})
    if extra:
        raise InputError(source, f"gradients for layer(s) not in the layer spec: {', '.join(extra)}")
    return Injection(layers, iters, passes, xs, cs), init, layers


def _net_order(order: list[str], init: Mapping[str, np.ndarray]) -> list[str]:
    """Layer names in net order: ``ip<J>`` by J, else first appearance."""
    def key(n):
        m = re.fullmatch(r"ip(\d+)", n)
        return (0, int(m.group(1)), "") if m else (1, 0, n)
    if all(re.fullmatch(r"ip\d+", n) for n in order):
        return sorted(order, key=key)
    return order


def _is_c(v: np.ndarray) -> np.ndarray:
    """Elementwise: v is 0 or ±2^e with e in -3..3."""
    a = np.abs(v.astype(np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.log2(a)
    return (a == 0) | (np.isfinite(e) & (e == np.round(e)) & (e >= _C_EXP_MIN) & (e <= _C_EXP_MAX))


def _same_values(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Equal floats (so -0 matches the +0 Caffe's zeroed diff turns it into), NaN matching NaN."""
    return (a == b) | (np.isnan(a) & np.isnan(b))


def _decompose(w: np.ndarray, b: np.ndarray | None, layer: LayerSpec, key: str, source: str):
    """``(x, c)`` for one pass of one layer; arrays of ``lr_mult`` 0 blobs are ignored (Caffe gives them none)."""
    zero = np.float32(0)
    lw, lb = layer.lr_w != 0, layer.bias and layer.lr_b != 0
    form = f"c[o]*x[d] with c[o] 0 or a power of two in ±2^{_C_EXP_MIN}..2^{_C_EXP_MAX}"
    if lb:
        bad = np.flatnonzero(~_is_c(b))
        if bad.size:
            raise InputError(source, f"{key}/1: bias gradient {b[bad[0]]!r} at [{bad[0]}] is not 0 or ±2^e, e in {_C_EXP_MIN}..{_C_EXP_MAX}")
        c = b.astype(np.float32) + zero
        if not lw:
            return np.zeros(layer.D, np.float32), c
        rows = np.flatnonzero(c != 0)
        x = (w[rows[0]] / c[rows[0]]).astype(np.float32) if rows.size else np.zeros(layer.D, np.float32)
    elif lw:
        c, x = _factor(w)
        if c is None:
            raise InputError(source, f"{key}/0: not {form} (the rows are not power-of-two multiples of one vector)")
    else:
        return np.zeros(layer.D, np.float32), np.ones(layer.O, np.float32)
    with np.errstate(all="ignore"):
        again = (c[:, None] * x[None, :]) + zero
    same = _same_values(again, w)
    if not same.all():
        o, d = np.argwhere(~same)[0]
        raise InputError(source, f"{key}/0: not {form}: [{o},{d}] is {w[o, d]!r}, c*x gives {again[o, d]!r}")
    return x, c


def _factor(w: np.ndarray):
    """``(c, x)`` with ``w == c[:,None]*x`` and c powers of two within range, or ``(None, None)``."""
    fin = np.isfinite(w) & (w != 0)
    rows = np.flatnonzero(fin.any(axis=1))
    O = w.shape[0]
    if rows.size == 0:
        # all zero or non-finite: c = 1 everywhere and x = the first row; checked by the caller
        return np.ones(O, np.float32), w[0].astype(np.float32)
    o0 = rows[0]
    ref = w[o0].astype(np.float64)
    cols = np.flatnonzero(fin[o0])
    exps = np.zeros(O, np.int64)
    sign = np.ones(O)
    zero_row = np.zeros(O, bool)
    for o in range(O):
        r = w[o, cols].astype(np.float64) / ref[cols]
        if np.all(r == 0):
            zero_row[o] = True
            continue
        r0 = r[0]
        if not np.all(r == r0) or r0 == 0:
            return None, None
        m, e = math.frexp(abs(r0))
        if m != 0.5:
            return None, None
        exps[o], sign[o] = e - 1, math.copysign(1.0, r0)
    live = exps[~zero_row]
    lo, hi = _C_EXP_MIN - live.min(), _C_EXP_MAX - live.max()
    if lo > hi:
        return None, None
    s = int(min(max(0, lo), hi))
    c = np.where(zero_row, 0.0, np.ldexp(sign, exps + s)).astype(np.float32)
    x = (w[o0].astype(np.float64) / math.ldexp(1.0, s)).astype(np.float32)
    return c, x


# =============================================================================
# Text of net.prototxt and solver.prototxt
# =============================================================================
def _num(v) -> str:
    """A number as Caffe's text files take it: ints as ints, floats as the shortest float32."""
    if isinstance(v, (bool, np.bool_)):
        raise InputError(None, f"expected a number, got {v!r}")
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = np.float32(v)
    if np.isnan(f):
        return "nan"
    if np.isinf(f):
        return "inf" if f > 0 else "-inf"
    return str(f)


def net_prototxt(layers, *, source: str = "inject.txt") -> str:
    """The gradient-injection net for ``layers`` reading ``source`` (an HDF5 file list)."""
    layers = parse_layers(layers)
    tops = " ".join(f'top: "x{j}" top: "c{j}"' for j in range(len(layers)))
    lines = [
        'name: "inject"',
        f'layer {{ name: "inject" type: "HDF5Data" {tops} hdf5_data_param {{ source: "{source}" batch_size: 1 }} }}',
    ]
    for j, l in enumerate(layers):
        params = f"param {{ lr_mult: {_num(l.lr_w)} decay_mult: {_num(l.decay_w)} }}"
        if l.bias:
            params += f" param {{ lr_mult: {_num(l.lr_b)} decay_mult: {_num(l.decay_b)} }}"
        lines.append(
            f'layer {{ name: "{l.layer_name(j)}" type: "InnerProduct" bottom: "x{j}" top: "y{j}" {params} '
            f"inner_product_param {{ num_output: {l.O} bias_term: {'true' if l.bias else 'false'} }} }}"
        )
        lines.append(
            f'layer {{ name: "s{j}" type: "Eltwise" bottom: "y{j}" bottom: "c{j}" top: "z{j}" '
            "eltwise_param { operation: PROD } loss_weight: 1 }"
        )
    return "\n".join(lines) + "\n"


#: the order solver fields are written in (then any other field, then the capture's own)
SOLVER_FIELD_ORDER = (
    "type", "base_lr", "lr_policy", "gamma", "power", "stepsize", "max_iter", "momentum", "momentum2",
    "delta", "rms_decay", "weight_decay", "regularization_type", "clip_gradients", "iter_size", "stepvalue",
)
#: fields the capture sets itself
CAPTURE_FIELDS = ("net", "display", "snapshot", "snapshot_diff", "snapshot_prefix", "solver_mode", "random_seed")
#: fields that name other nets/tests/devices: dropped from a user's solver file
_FOREIGN_FIELDS = (
    "train_net", "test_net", "train_net_param", "test_net_param", "net_param", "train_state", "test_state",
    "test_iter", "test_interval", "test_compute_loss", "test_initialization", "snapshot_format", "device_id",
    "weights", "debug_info", "layer_wise_reduce",
)


def _solver_descriptor():
    from .proto import caffe_pb2

    return caffe_pb2.SolverParameter.DESCRIPTOR


def _repeated(fd) -> bool:
    """Whether a protobuf field is repeated (``is_repeated`` in protobuf >= 6, ``label`` before)."""
    rep = getattr(fd, "is_repeated", None)
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


def _field_text(name: str, value, fd) -> list[str]:
    from google.protobuf.descriptor import FieldDescriptor as F

    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not _repeated(fd) and len(values) != 1:
        raise InputError(None, f"solver field {name!r} takes one value, got {value!r}")
    out = []
    for v in values:
        if fd.type == F.TYPE_STRING:
            if not isinstance(v, str):
                raise InputError(None, f"solver field {name!r} is a string, got {v!r}")
            text = '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
        elif fd.type == F.TYPE_BOOL:
            if not isinstance(v, (bool, np.bool_)):
                raise InputError(None, f"solver field {name!r} is true/false, got {v!r}")
            text = "true" if v else "false"
        elif fd.type == F.TYPE_ENUM:
            names = [e.name for e in fd.enum_type.values]
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and fd.enum_type.values_by_number.get(int(v)):
                text = fd.enum_type.values_by_number[int(v)].name
            elif isinstance(v, str) and v in names:
                text = v
            else:
                raise InputError(None, f"solver field {name!r}: {v!r} is not one of {', '.join(names)}")
        elif fd.type in (F.TYPE_FLOAT, F.TYPE_DOUBLE):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise InputError(None, f"solver field {name!r} is a number, got {v!r}")
            text = _num(float(v)) if fd.type == F.TYPE_FLOAT else repr(float(v))
            if isinstance(v, (int, np.integer)) and fd.type == F.TYPE_FLOAT:
                text = _num(int(v)) if float(np.float32(v)) == v else text
        else:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) and not (
                isinstance(v, float) and v.is_integer()
            ):
                raise InputError(None, f"solver field {name!r} is an integer, got {v!r}")
            text = str(int(v))
        out.append(f"{name}: {text}")
    return out


def solver_fields(solver, *, strict: bool = True) -> dict:
    """The solver's explicitly set fields as a dict in Caffe's names.

    ``solver`` is a :class:`SolverConfig` (fields that differ from Caffe's
    defaults, plus ``type``, ``base_lr``, ``lr_policy``, ``max_iter``), a
    ``caffe_pb2.SolverParameter`` (its set fields), a path to a
    solver.prototxt, or a dict of ``SolverParameter`` fields. The capture's
    own fields (``net``, ``display``, ``snapshot*``, ``solver_mode``) and the
    ones naming other nets (``test_*``, ``train_net``, ...) are refused in a
    dict when ``strict``, dropped otherwise.
    """
    desc = _solver_descriptor()
    if isinstance(solver, (str, os.PathLike)):
        from .io.prototxt import parse_text
        from .proto import caffe_pb2

        solver = parse_text(solver, caffe_pb2.SolverParameter)
        strict = False
    if isinstance(solver, SolverConfig):
        fields = _config_fields(solver)
        strict = False
    elif hasattr(solver, "ListFields") and hasattr(solver, "DESCRIPTOR"):
        fields = {}
        for fd, v in solver.ListFields():
            fields[fd.name] = list(v) if _repeated(fd) else (v if fd.type != fd.TYPE_MESSAGE else None)
        strict = False
    elif isinstance(solver, Mapping):
        fields = dict(solver)
    else:
        raise InputError(None, f"solver: expected a SolverConfig, a dict or a solver.prototxt path, got {type(solver).__name__}")
    out = {}
    for k, v in fields.items():
        if k not in desc.fields_by_name:
            raise InputError(None, f"unknown solver field {k!r}")
        if k in CAPTURE_FIELDS + _FOREIGN_FIELDS and k != "random_seed":
            if strict:
                raise InputError(None, f"solver field {k!r} is set by the capture (or names another net); leave it out")
            continue
        if k == "solver_type" and "type" not in fields:
            k, v = "type", _solver_type_name(v)
        elif k == "solver_type":
            continue
        out[k] = v
    return out


def _solver_type_name(v) -> str:
    desc = _solver_descriptor().fields_by_name["solver_type"].enum_type
    if isinstance(v, str):
        v = desc.values_by_name[v].number if v in desc.values_by_name else 0
    names = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
             "ADADELTA": "AdaDelta", "ADAM": "Adam"}
    return names.get(desc.values_by_number[int(v)].name, "SGD")


def _config_fields(cfg: SolverConfig) -> dict:
    default = SolverConfig()
    out = {}
    for name in ("type", "base_lr", "lr_policy", "max_iter"):
        v = getattr(cfg, name)
        if v != "" or name != "lr_policy":
            out[name] = list(v) if isinstance(v, tuple) else v
    for f in dataclasses.fields(SolverConfig):
        if f.name in out or f.name in ("blobs", "source", "net") or (
                f.name in CAPTURE_FIELDS + _FOREIGN_FIELDS and f.name != "random_seed"):
            continue
        if f.name not in _solver_descriptor().fields_by_name:
            continue
        v = getattr(cfg, f.name)
        if v != getattr(default, f.name):
            out[f.name] = list(v) if isinstance(v, tuple) else v
    if "random_seed" in out and out["random_seed"] == -1:
        del out["random_seed"]
    return out


def solver_prototxt(fields: Mapping, *, random_seed: int, net: str = "net.prototxt",
                    snapshot_prefix: str = "snapshots/run") -> str:
    """The solver.prototxt text of a capture: ``fields`` in Caffe's order, then the capture's own.

    Floats are written as the shortest text that is the same float32, so
    Caffe reads back exactly the value given.
    """
    desc = _solver_descriptor()
    fields = dict(fields)
    fields.pop("random_seed", None)
    keys = [k for k in SOLVER_FIELD_ORDER if k in fields] + [k for k in fields if k not in SOLVER_FIELD_ORDER]
    lines = [f'net: "{net}"']
    for k in keys:
        if k not in desc.fields_by_name:
            raise InputError(None, f"unknown solver field {k!r}")
        lines += _field_text(k, fields[k], desc.fields_by_name[k])
    lines += ["display: 1", "snapshot: 1", "snapshot_diff: true", f'snapshot_prefix: "{snapshot_prefix}"',
              "solver_mode: CPU", f"random_seed: {int(random_seed)}"]
    text = "\n".join(lines) + "\n"
    from google.protobuf import text_format
    from .proto import caffe_pb2

    try:
        text_format.Parse(text, caffe_pb2.SolverParameter())
    except text_format.ParseError as e:  # a value our formatting cannot express
        raise InputError(None, f"solver fields do not form a valid SolverParameter: {e}") from None
    return text


# =============================================================================
# Capture
# =============================================================================
@dataclass(frozen=True)
class CaptureResult:
    """What a capture produced: its folder, Caffe's exit code and fatal line."""

    path: Path
    caffe_exit: int
    fatal: str | None
    iterations: int
    blas: str
    resume_exit: int | None = None

    @property
    def refused(self) -> bool:
        """Caffe stopped with a fatal ``F...`` line (a refused setting)."""
        return self.fatal is not None


_FATAL = re.compile(r"^F\d{4} [\d:.]+\s+\d+ ([^\]]+)\] (.*)$")


def _fatal_line(log: Path) -> str | None:
    try:
        with open(log, errors="replace") as f:
            for line in f:
                m = _FATAL.match(line.rstrip("\n"))
                if m:
                    return m.group(2).strip()
    except OSError:
        return None
    return None


def _cpu() -> dict:
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and model == "unknown":
                    model = v.strip()
                elif k == "flags" and not flags:
                    flags = set(v.split())
    except OSError:
        pass
    return {"cpu": model, "cpu_flags": [f for f in _CPU_FLAGS if f in flags]}


def _provenance(install: CaffeInstall, blas: str, command: str) -> dict:
    from . import __version__

    try:
        lib = install.blas_library(blas)
        lib_text = str(lib.relative_to(install.prefix)) if lib.is_relative_to(install.prefix) else str(lib)
    except OracleError as e:
        lib_text = f"unknown ({e})"
    env = install.env(blas)
    return {
        "caffe": f"caffe {install.version}",
        "blas_package": install.blas_package(blas),
        "blas_library": lib_text,
        "openblas_num_threads": env.get("OPENBLAS_NUM_THREADS"),
        **_cpu(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "harness": f"caffe-harness {__version__}",
        "command": command,
    }


def _write_caffemodel(path: Path, layers: Sequence[LayerSpec], init: Mapping[str, np.ndarray]) -> None:
    """init.caffemodel: one layer per LayerSpec with its initial blobs (data only)."""
    from .io.blobs import write_caffemodel

    weights = {}
    for j, l in enumerate(layers):
        n = l.layer_name(j)
        weights[n] = [np.asarray(init[f"{n}/{i}"], np.float32) for i in range(2 if l.bias else 1)]
    write_caffemodel(path, weights, name="inject")


def _read_caffemodel(path: Path) -> dict[str, np.ndarray]:
    """``<layer>/<index>`` -> data of a caffemodel."""
    from .io.blobs import params_by_name, read_caffemodel

    return {k: b.data for k, b in params_by_name(read_caffemodel(path)).items() if b.data is not None}


def _check_init(init: Mapping[str, np.ndarray], layers: Sequence[LayerSpec], source: str) -> dict[str, np.ndarray]:
    out = {}
    for j, l in enumerate(layers):
        n = l.layer_name(j)
        for i, shape in enumerate([(l.O, l.D)] + ([(l.O,)] if l.bias else [])):
            a = init.get(f"{n}/{i}")
            if a is None:
                raise InputError(source, f"no initial value for blob {n}/{i}")
            a = np.asarray(a)
            if a.dtype != np.float32 and not (a.dtype.kind == "f" and np.array_equal(a.astype(np.float32), a, equal_nan=True)):
                raise InputError(source, f"blob {n}/{i}: dtype {a.dtype} is not float32")
            if a.shape != shape:
                raise InputError(source, f"blob {n}/{i}: shape {a.shape}, expected {shape}")
            out[f"{n}/{i}"] = a.astype(np.float32)
    return out


def _init_from(init, layers, source_hint: str) -> dict[str, np.ndarray]:
    if isinstance(init, (str, os.PathLike)):
        p = Path(init)
        if p.suffix == ".npz":
            arrays = _load_arrays(p, str(p))
            init = {k[len("init/"):]: v for k, v in arrays.items() if k.startswith("init/")}
        else:
            init = _read_caffemodel(p)
        return _check_init(init, layers, str(p))
    if isinstance(init, Mapping):
        flat = {}
        for k, v in init.items():
            if isinstance(v, (list, tuple)):  # layer -> [weight, bias]
                flat.update({f"{k}/{i}": a for i, a in enumerate(v)})
            else:
                flat[str(k)[len("init/"):] if str(k).startswith("init/") else str(k)] = v
        return _check_init(flat, layers, source_hint)
    raise InputError(None, f"init: expected a dict of arrays, a .caffemodel or a .npz, got {type(init).__name__}")


def _json_value(v):
    if isinstance(v, (float, np.floating)):
        f = np.float32(v)
        return float(str(f)) if np.isfinite(f) else str(f)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    return v


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _prepare_out(out_dir, force: bool) -> tuple[Path, Path]:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(out, "folder is not empty (use force=True / --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.capture-", dir=out.parent))
    return out, tmp


def _finish_out(out: Path, tmp: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "x")
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _run_caffe(install: CaffeInstall, work: Path, args: list[str], log_name: str, blas: str, timeout: float) -> int:
    (work / "snapshots").mkdir(exist_ok=True)
    with open(work / log_name, "wb") as log:
        return install.run(args, cwd=work, blas=blas, timeout=timeout, log=log)


def _execute(install: CaffeInstall, work: Path, config: dict, *, blas: str, iters: int, iter_size: int,
             injection: Injection | None, resume_at: int | None, timeout: float) -> CaptureResult:
    """Run phase 1 (and the resumed phase 2) in ``work``; fill config's run fields."""
    cmd = ["train", "--solver=solver.prototxt", "--weights=init.caffemodel"]
    rc = _run_caffe(install, work, cmd, "caffe.log", blas, timeout)
    fatal = _fatal_line(work / "caffe.log")
    if rc != 0 and fatal is None:
        tail = (work / "caffe.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise OracleError(f"caffe exited with {rc} without a fatal line; last line: {tail[0]}")
    if rc == 0:
        missing = [k for k in range(1, iters + 1) if not (work / "snapshots" / f"run_iter_{k}.solverstate").exists()]
        if missing:
            raise OracleError(f"caffe exited 0 but wrote no snapshot for iteration(s) {missing[:5]}")
    config["caffe_exit"] = rc
    config["blas"] = blas
    config["provenance"] = _provenance(install, blas, "caffe " + " ".join(cmd))
    resume_rc = None
    if resume_at is not None and rc == 0:
        resume_rc = _resume(install, work, config, blas=blas, iters=iters, iter_size=iter_size,
                            injection=injection, k=resume_at, timeout=timeout)
    elif resume_at is not None:
        config["resume"] = {"at": resume_at, "skipped": "the straight run did not finish"}
    snaps = work / "snapshots"
    if snaps.is_dir() and not any(snaps.iterdir()):
        snaps.rmdir()
    return CaptureResult(path=work, caffe_exit=rc, fatal=fatal, iterations=iters, blas=blas, resume_exit=resume_rc)


_RESUME_FILES = ("solver_resume.prototxt", "net_resume.prototxt", "inject_resume.txt", "inject_resume.h5")


def _resume(install, work: Path, config: dict, *, blas, iters, iter_size, injection, k, timeout) -> int:
    """Phase 2: continue from ``run_iter_K.solverstate`` reading rows ``K*iter_size..``."""
    first = k * iter_size
    if injection is not None:  # fresh capture: write the continuation's inputs
        injection.write_h5(work / "inject_resume.h5", first_row=first)
        (work / "inject_resume.txt").write_text("inject_resume.h5\n")
        (work / "net_resume.prototxt").write_text(
            (work / "net.prototxt").read_text().replace('source: "inject.txt"', 'source: "inject_resume.txt"'))
        (work / "solver_resume.prototxt").write_text(
            (work / "solver.prototxt").read_text()
            .replace('net: "net.prototxt"', 'net: "net_resume.prototxt"')
            .replace('snapshot_prefix: "snapshots/run"', 'snapshot_prefix: "snapshots/resumed"'))
    state = f"snapshots/run_iter_{k}.solverstate"
    cmd = ["train", "--solver=solver_resume.prototxt", f"--snapshot={state}"]
    rc = _run_caffe(install, work, cmd, "caffe_resume.log", blas, timeout)
    config["resume"] = {
        "at": k,
        "from": state,
        "solver": "solver_resume.prototxt",
        "net": "net_resume.prototxt",
        "source": "inject_resume.txt",
        "h5": "inject_resume.h5",
        "first_row": first,
        "snapshot_prefix": "snapshots/resumed",
        "log": "caffe_resume.log",
        "command": "caffe " + " ".join(cmd),
        "caffe_exit": rc,
    }
    if rc != 0 and _fatal_line(work / "caffe_resume.log") is None:
        tail = (work / "caffe_resume.log").read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise OracleError(f"resumed caffe exited with {rc}; last line: {tail[0]}")
    return rc


def capture(solver, blobs=None, gradients=None, out_dir=None, *, blas: str = "openblas", init=None,
            seed: int = 1, resume_at: int | None = None, force: bool = False,
            install: CaffeInstall | None = None, timeout: float = 600) -> CaptureResult:
    """Run real Caffe on ``solver`` with injected gradients; write a capture to ``out_dir``.

    ``solver``: a :class:`SolverConfig`, a dict of ``SolverParameter`` fields
    or a solver.prototxt path; its ``max_iter`` is the number of iterations
    (from the gradients when they come from a ``.npz`` and ``max_iter`` is
    unset). ``blobs``: the layers (see :func:`parse_layers`; default: the
    SolverConfig's blobs, or the ``.npz``'s shapes). ``gradients``: a
    :class:`GradientSpec` or dict (seeded generator), or a ``.npz`` path /
    mapping to decompose. ``init``: initial weights (dict ``<layer>/<i>`` ->
    array, a ``.caffemodel`` or ``.npz`` with ``init/`` keys); default: the
    ``.npz``'s ``init/`` arrays, else drawn from ``seed``. ``seed`` seeds the
    generator and is Caffe's ``random_seed``. ``resume_at=K`` adds a second
    run resumed from ``snapshots/run_iter_K.solverstate`` (see docs/ORACLE.md).

    The folder is written atomically (temp folder, then rename); a non-empty
    ``out_dir`` is refused unless ``force``. A run Caffe refuses is written
    too (``caffe_exit`` non-zero, the ``F`` line in caffe.log).
    """
    if out_dir is None:
        raise InputError(None, "capture: out_dir is required")
    _check_blas(blas)
    fields = solver_fields(solver)
    if blobs is None and isinstance(solver, SolverConfig) and solver.blobs:
        blobs = solver.blobs
    layers = parse_layers(blobs) if blobs is not None else None
    iter_size = fields.get("iter_size", 1)
    from_npz = isinstance(gradients, (str, os.PathLike)) or (
        isinstance(gradients, Mapping) and any(str(k).startswith("grad/") for k in gradients))
    if from_npz:
        injection, npz_init, layers = injection_from_gradients(gradients, layers, iter_size=iter_size)
        iters = fields.get("max_iter") or injection.iters
        if iters != injection.iters:
            raise InputError(None if isinstance(gradients, Mapping) else gradients,
                             f"gradients hold {injection.iters} iteration(s) but max_iter is {iters}")
        fields["max_iter"] = iters
        init_arrays = _init_from(init if init is not None else npz_init, layers,
                                 "<init>" if init is not None else str(gradients)) if (init is not None or npz_init) else None
        spec_json: dict = {"npz": os.path.basename(os.fspath(gradients)) if not isinstance(gradients, Mapping) else "<mapping>"}
        if not isinstance(gradients, Mapping):
            spec_json["sha256"] = hashlib.sha256(Path(gradients).read_bytes()).hexdigest()
    else:
        if layers is None:
            raise InputError(None, "capture: the layers (blobs) are needed for generated gradients")
        iters = fields.get("max_iter", 0)
        spec = _gradient_spec(gradients)
        injection, gen_init = generate_injection(layers, iters, iter_size, spec, seed=seed)
        init_arrays = _init_from(init, layers, "<init>") if init is not None else gen_init
        spec_json = spec.to_dict()
    if init_arrays is None:
        _, init_arrays = generate_injection(layers, injection.iters, injection.iter_size, None, seed=seed)
    if resume_at is not None and (isinstance(resume_at, bool) or not isinstance(resume_at, int)
                                  or not 1 <= resume_at < injection.iters):
        raise InputError(None, f"resume_at must be an iteration in 1..{injection.iters - 1}, got {resume_at!r}")
    random_seed = int(fields.pop("random_seed", seed))
    solver_text = solver_prototxt(fields, random_seed=random_seed)
    config = {"seed": seed}
    config.update({k: _json_value(v) for k, v in fields.items()})
    if random_seed != seed:
        config["random_seed"] = random_seed
    config["layers"] = [l.to_dict() for l in layers]
    config["gradients"] = spec_json
    install = install or find_caffe()
    out, work = _prepare_out(out_dir, force)
    try:
        (work / "solver.prototxt").write_text(solver_text)
        (work / "net.prototxt").write_text(net_prototxt(layers))
        (work / "inject.txt").write_text("inject.h5\n")
        injection.write_h5(work / "inject.h5")
        _write_caffemodel(work / "init.caffemodel", layers, init_arrays)
        arrays = {f"init/{k}": v for k, v in init_arrays.items()}
        arrays.update(injection.gradients())
        _save_npz(work / "gradients.npz", arrays)
        result = _execute(install, work, config, blas=blas, iters=injection.iters, iter_size=injection.iter_size,
                          injection=injection, resume_at=resume_at, timeout=timeout)
        _write_json(work / "config.json", config)
        _finish_out(out, work)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dataclasses.replace(result, path=out)


def read_injection(capture_dir) -> tuple[Injection, dict[str, np.ndarray]]:
    """The injected rows and initial blobs of an existing capture.

    Read from its ``solver.prototxt`` (``max_iter``, ``iter_size``),
    ``net.prototxt`` (layers, multipliers), ``inject.h5`` and
    ``init.caffemodel``; ``Injection.gradients()`` then gives the gradients
    Caffe saw. A net that is not a gradient-injection net raises
    :class:`InputError`.
    """
    import h5py

    from .io.prototxt import parse_text
    from .proto import caffe_pb2

    src = Path(capture_dir)
    param = parse_text(src / "solver.prototxt", caffe_pb2.SolverParameter)
    net = parse_text(src / "net.prototxt", caffe_pb2.NetParameter)
    iters, iter_size = param.max_iter, param.iter_size or 1
    products = {l.bottom[0]: l.bottom[1] for l in net.layer if l.type == "Eltwise" and len(l.bottom) == 2}
    layers, datasets = [], []
    try:
        h5 = h5py.File(src / "inject.h5", "r")
    except OSError as e:
        raise InputError(src / "inject.h5", f"not a readable HDF5 file: {e}") from None
    with h5:
        for l in net.layer:
            if l.type != "InnerProduct":
                continue
            xname, cname = l.bottom[0], products.get(l.top[0])
            if cname is None or xname not in h5 or cname not in h5:
                raise InputError(src / "net.prototxt", f"layer {l.name!r} is not fed by the injection (x, c) rows of inject.h5")
            x, c = np.asarray(h5[xname], np.float32), np.asarray(h5[cname], np.float32)
            ps = list(l.param) + [caffe_pb2.ParamSpec()] * 2
            bias = l.inner_product_param.bias_term
            d = {"D": int(x.shape[1]), "O": int(l.inner_product_param.num_output), "bias": bias,
                 "lr_w": _tidy(ps[0].lr_mult), "decay_w": _tidy(ps[0].decay_mult)}
            if bias:
                d.update(lr_b=_tidy(ps[1].lr_mult), decay_b=_tidy(ps[1].decay_mult))
            if l.name != f"ip{len(layers)}":
                d["name"] = l.name
            layers.append(_layer_from_dict(d, f"layer {l.name}"))
            datasets.append((x, c))
    rows = iters * iter_size
    for (x, c), l in zip(datasets, layers):
        if len(x) < rows or len(c) < rows or c.shape[1] != l.O:
            raise InputError(src / "inject.h5", f"needs {rows} rows of x/c for {l.O} outputs, has {len(x)} / {c.shape}")
    injection = Injection(tuple(layers), iters, iter_size, [x[:rows] for x, _ in datasets], [c[:rows] for _, c in datasets])
    init = _check_init(_read_caffemodel(src / "init.caffemodel"), layers, str(src / "init.caffemodel"))
    return injection, init


def capture_like(existing_dir, out_dir, *, blas: str | None = None, force: bool = False,
                 install: CaffeInstall | None = None, timeout: float = 600) -> CaptureResult:
    """Re-run real Caffe on the exact inputs of the capture in ``existing_dir``.

    Its ``solver.prototxt``, ``net.prototxt``, ``init.caffemodel``,
    ``inject.h5``/``inject.txt`` (and the resume inputs of a resumed capture)
    are copied unchanged; ``gradients.npz`` is rebuilt from them; ``blas``
    defaults to the one the existing capture names. ``config.json`` keeps the
    existing settings and records the new run (``recaptured_from``).
    """
    src = Path(existing_dir)
    if not src.is_dir():
        raise InputError(src, "no such capture folder")
    for name in ("solver.prototxt", "net.prototxt", "init.caffemodel", "inject.h5", "inject.txt"):
        if not (src / name).is_file():
            raise InputError(src / name, "missing: not a capture folder")
    old: dict = {}
    if (src / "config.json").is_file():
        try:
            old = json.loads((src / "config.json").read_text())
        except ValueError as e:
            raise InputError(src / "config.json", f"not valid JSON: {e}") from None
        if not isinstance(old, dict):
            raise InputError(src / "config.json", "expected a JSON object")
    blas = _check_blas(blas or old.get("blas", "openblas"))
    injection, init = read_injection(src)
    iters = injection.iters
    resume = old.get("resume") if isinstance(old.get("resume"), dict) and "from" in old.get("resume", {}) else None
    if resume and not all((src / f).is_file() for f in _RESUME_FILES):
        raise InputError(src, f"config.json records a resume but {', '.join(_RESUME_FILES)} are not all there")
    install = install or find_caffe()
    out, work = _prepare_out(out_dir, force)
    try:
        for name in ("solver.prototxt", "net.prototxt", "init.caffemodel", "inject.h5", "inject.txt") + (
                _RESUME_FILES if resume else ()):
            shutil.copyfile(src / name, work / name)
        arrays = {f"init/{k}": v for k, v in init.items()}
        arrays.update(injection.gradients())
        _save_npz(work / "gradients.npz", arrays)
        config = {k: v for k, v in old.items() if k not in ("caffe_exit", "blas", "provenance", "resume", "recaptured_from")}
        config["recaptured_from"] = os.fspath(src)
        result = _execute(install, work, config, blas=blas, iters=iters, iter_size=injection.iter_size,
                          injection=None, resume_at=int(resume["at"]) if resume else None, timeout=timeout)
        _write_json(work / "config.json", config)
        _finish_out(out, work)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dataclasses.replace(result, path=out)
