"""Smoke tests of the benchmark scripts at tiny sizes (never timed asserts).

The benchmarks must run end to end, report every solver, and their checks
must be able to fail: a kernel that is one ulp off is reported as differing
(exit 1), and a powf form that claims certainty where glibc disagrees is
caught by the exhaustive checker's sampled mode.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "tools" / "bench"
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_kernels  # noqa: E402
import bench_scale  # noqa: E402

#: keep the smoke runs light: tiny arrays, a small triad, one timed call
TINY = ["--sizes", "4000", "--no-caffe", "--repeat", "1", "--triad-elements", "262144", "--quiet"]


def _run(args, **kw):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


@pytest.mark.parametrize(
    "text, sizes",
    [("1M,10M,100M", [10**6, 10**7, 10**8]), ("2.5M", [2_500_000]), ("100k", [100_000]), ("1e6, 4000", [10**6, 4000])],
    ids=["default", "fraction", "kilo", "plain"],
)
def test_parse_sizes(text, sizes):
    assert bench_kernels.parse_sizes(text) == sizes


@pytest.mark.parametrize("text", ["abc", "1.5", "10", "1M;2M", ""], ids=["word", "fraction-of-one", "too-small", "bad-sep",
                                                                      "empty"])
def test_parse_sizes_refuses(text):
    with pytest.raises(ValueError, match="--sizes"):
        bench_kernels.parse_sizes(text)


def test_bad_sizes_exit_2():
    p = _run([BENCH, "--sizes", "lots", "--no-caffe"])
    assert p.returncode == 2
    assert "--sizes" in p.stderr


def test_bytes_per_param_counts_each_array_read_and_written():
    assert bench_kernels.BYTES_PER_PARAM == {"SGD": 24, "Nesterov": 24, "AdaGrad": 24, "RMSProp": 24,
                                             "AdaDelta": 32, "Adam": 32}


def test_kernel_bench_smoke(tmp_path):
    out = tmp_path / "k.json"
    p = _run([BENCH, *TINY, "--json", out])
    assert p.returncode == 0, p.stderr
    assert "| solver | params |" in p.stdout
    res = json.loads(out.read_text())
    assert [r["solver"] for r in res["results"]] == list(bench_kernels.SOLVERS)
    for r in res["results"]:
        assert r["params"] == 4000
        assert r["bit_exact"] is True, r
        assert r["plain_differing"] == 0 and r["naive_differing"] == 0
        assert r["kernel_ms"] > 0 and r["numpy_ms"] > 0 and r["bound_ms"] > 0
        assert r["bytes_per_param"] == bench_kernels.BYTES_PER_PARAM[r["solver"]]
    assert res["triad"]["gbs"] > 0
    assert set(res["verdict"]) == set(bench_kernels.SOLVERS)
    assert "cpu" in res["machine"] and res["machine"]["cores"] >= 1


def test_kernel_bench_reports_a_kernel_one_ulp_off(tmp_path):
    broken = tmp_path / "broken_update.py"
    broken.write_text(textwrap.dedent("""
        import numpy as np
        from harness.kernels.update import *  # noqa: F401,F403
        from harness.kernels import update as _u

        def sgd_update(w, g, h, *args):
            _u.sgd_update(w, g, h, *args)
            w[w.size // 2] = np.nextafter(w[w.size // 2], np.float32(np.inf))
    """))
    p = _run([BENCH, *TINY, "--solvers", "SGD", "--kernels", broken])
    assert p.returncode == 1, p.stdout + p.stderr
    assert "**differ**" in p.stdout


def test_plain_loops_match_naive_on_specials():
    """The benchmark's plain serial loops agree with tests/naive.py (its bit-check yardstick)."""
    import naive

    for solver in bench_kernels.SOLVERS:
        st = bench_kernels._special_sample(solver, 400, seed=3)
        mine = {k: v.copy() for k, v in st.items()}
        s = bench_kernels.SETTINGS[solver]
        with np.errstate(all="ignore"):
            bench_kernels.plain_step(solver, mine)
            naive.apply_update(solver, st["w"], st["g"], [st["h"]] + ([st["h2"]] if "h2" in st else []),
                               blas=naive.OPENBLAS, weight_decay=bench_kernels.WEIGHT_DECAY, rate=s["base_lr"],
                               momentum=s.get("momentum", 0.0), momentum2=s.get("momentum2", 0.999),
                               rms_decay=s.get("rms_decay", 0.99), delta=s.get("delta", 1e-8))
        assert bench_kernels._differing(mine, st) == 0, solver


def test_caffe_log_interval_parsing(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "I1123 23:59:59.500000  7 solver.cpp:239] Iteration 0 (0 iter/s, 0s/1 iters), loss = 1\n"
        "I1123 23:59:59.750000  7 sgd_solver.cpp:112] Iteration 0, lr = 0.01\n"
        "I1124 00:00:01.250000  7 solver.cpp:464] something\n"
        "I1124 00:00:02.000000  7 solver.cpp:327] Optimization Done.\n"
    )
    assert bench_kernels._train_seconds(log) == pytest.approx(2.25)  # across midnight
    (tmp_path / "bad.log").write_text("F1123 00:00:00.000000 7 x.cpp:1] Check failed\n")
    with pytest.raises(RuntimeError, match="Optimization Done"):
        bench_kernels._train_seconds(tmp_path / "bad.log")


def test_scale_import_and_schedule(tmp_path):
    out = tmp_path / "s.json"
    p = _run([ROOT / "benchmarks" / "bench_scale.py", "--only", "import,schedule", "--repeat", "1", "--json", out])
    assert p.returncode == 0, p.stderr
    m = json.loads(out.read_text())["measures"]
    assert m["import"]["numba_imported"] is False and m["import"]["kernel_modules_imported"] == []
    assert set(m["schedule"]["policies"]) == {"fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid"}
    assert all(v["finite"] for v in m["schedule"]["policies"].values())


def test_streaming_trace_writer_makes_a_valid_golden_that_replays_exactly(tmp_path):
    from harness.config import BlobSpec
    from harness.io.golden import verify_golden

    out = bench_scale.build_trace(tmp_path / "t", (BlobSpec("a/0", (3, 4)), BlobSpec("a/1", (3,), 2.0, 0.0)), iters=2)
    assert verify_golden(out) == []
    p = _run([ROOT / "benchmarks" / "bench_scale.py", "--child", "replay", "--paths", out])
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["runs"] == 1 and r["statuses"] == {"exact": 1}


def test_vgg16_blob_list_is_vgg16():
    assert sum(int(np.prod(s)) for _, s, _, _ in bench_scale.VGG16_BLOBS) == 138_357_544
    assert len(bench_scale.VGG16_BLOBS) == 32


def test_powf_check_sampled(tmp_path):
    """The exhaustive checker in sampled mode: the repo's forms pass, or there are none to check (exit 2)."""
    from harness.kernels import update

    p = _run([ROOT / "benchmarks" / "check_powf_exhaustive.py", "--stride", "2048", "--quiet", "--json", tmp_path / "p.json"])
    if hasattr(update, "_square"):
        assert p.returncode == 0, p.stderr
        res = json.loads((tmp_path / "p.json").read_text())
        assert all(r["certified"]["differ"] == 0 for r in res["results"])
    else:
        assert p.returncode == 2 and "no _square" in p.stderr


def test_powf_check_catches_overclaiming_forms(tmp_path):
    """Forms that call fl(x*x) and sqrtf certain everywhere are refuted on the sampled near-ties."""
    fake = tmp_path / "overclaim.py"
    fake.write_text(textwrap.dedent("""
        import numba
        import numpy as np
        from harness.kernels.update import powf  # noqa: F401

        @numba.njit
        def _square(x):
            return x * x, True

        @numba.njit
        def _root(x):
            return np.sqrt(x), True
    """))
    out = tmp_path / "p.json"
    p = _run([ROOT / "benchmarks" / "check_powf_exhaustive.py", "--kernels", fake, "--stride", "2048", "--quiet",
              "--json", out])
    assert p.returncode == 1
    res = {r["exponent"]: r for r in json.loads(out.read_text())["results"]}
    assert res[2.0]["certified"]["differ"] > 0  # ties 1 + k*2^-12 squared: glibc rounds some the other way
    assert res[0.5]["certified"]["by_kind"]["zero"] == 1  # powf(-0, 0.5) = +0, sqrtf(-0) = -0
