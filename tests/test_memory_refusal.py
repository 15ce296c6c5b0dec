"""Jobs that cannot fit in memory are refused before they start (qwen_edge/footprint.py): one `error:` line,
exit 2, within seconds, nothing written; and the estimates are checked against measured peaks (tiny models
here, the real 0.5B in test_quant_real.py)."""

import os
import subprocess
import sys
import time

import pytest

from peak_rss import run_measured
from shaped_models import hollow_checkpoint
from tiny_models import make_tiny

GIB = 2**30


def cli(*args, env=None, timeout=60):
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", *map(str, args)], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=timeout)
    return r, time.perf_counter() - t


def measured(*args, env=None) -> tuple[int, int]:
    """(exit code, the child's own peak RSS in bytes)."""
    return run_measured([sys.executable, "-m", "qwen_edge.cli", *map(str, args)], env=env)


@pytest.fixture(scope="module")
def shaped(tmp_path_factory):
    root = tmp_path_factory.mktemp("shaped")
    return {s: hollow_checkpoint(root / s, s) for s in ("1.5b", "3b", "7b")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "hf")[1]


def one_error_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize("size", ["1.5b", "3b", "7b"])
def test_a_target_on_a_machine_too_small_for_the_sensitivity_pass_is_refused_at_once(shaped, size, tmp_path):
    out = tmp_path / "out"
    r, secs = cli("quantize", shaped[size], "-o", out, "--method", "rtn", "--target-size", "2GiB",
                  env={"QWEN_EDGE_MEMORY_LIMIT": "5GiB"})
    line = one_error_line(r)
    assert "the sensitivity pass" in line and "--recipe" in line and "5.0 GiB" in line, line
    assert secs < 10 and not out.exists()


def test_gptq_at_7b_on_a_small_machine_names_rtn(shaped, tmp_path):
    out = tmp_path / "out"
    r, secs = cli("quantize", shaped["7b"], "-o", out, "--method", "gptq", env={"QWEN_EDGE_MEMORY_LIMIT": "10GiB"})
    line = one_error_line(r)
    assert "GPTQ calibration" in line and "--method rtn" in line, line
    assert secs < 10 and not out.exists()


def test_the_sensitivity_estimate_matches_the_measured_real_peaks(shaped):
    """The 0.5B's layer-by-layer sensitivity pass measured 3,634 MiB (scripts/bench_sensitivity.py; the
    whole-model pass took 11.2 GB): the estimate is above it and within 1.5x; larger shapes cost more and
    the 7B fits the issue's 16 GB."""
    from qwen_edge import footprint as FP
    from qwen_edge.sources import open_source
    s05 = type("S", (), dict(hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14, num_kv_heads=2,
                             head_dim=64, vocab_size=151936, tie_word_embeddings=True))
    measured = 3634 * 2**20
    assert measured < FP.sensitivity(s05, 512, 16).total < 1.5 * measured
    est = {k: FP.sensitivity(open_source(str(v)).spec, 512, 16).total for k, v in shaped.items()}
    assert FP.sensitivity(s05, 512, 16).total < est["1.5b"] < est["3b"] < est["7b"] < 16e9


def test_export_run_bench_and_eval_refuse_on_a_machine_too_small(tiny, tmp_path):
    small = {"QWEN_EDGE_MEMORY_LIMIT": "64MiB"}
    out = tmp_path / "fp32"
    r, _ = cli("export", tiny, "-o", out, env=small)
    assert "needs about" in one_error_line(r) and not out.exists()
    r, _ = cli("export", tiny, "-o", out)
    assert r.returncode == 0, r.stderr
    for args in (("run", out, "-p", "hi", "--max-new-tokens", "2"), ("bench", out, "--prompt-tokens", "8", "--new-tokens", "2"),
                 ("eval", out, "--max-tokens", "64")):
        r, secs = cli(*args, env=small)
        assert "needs about" in one_error_line(r), args
        assert secs < 10


def test_a_bad_memory_limit_is_one_error_line(tiny, tmp_path):
    r, _ = cli("export", tiny, "-o", tmp_path / "x", env={"QWEN_EDGE_MEMORY_LIMIT": "lots"})
    assert "QWEN_EDGE_MEMORY_LIMIT" in one_error_line(r)


def test_the_estimate_bounds_the_measured_peak_on_a_tiny_model(tiny, tmp_path):
    """Measured in a child process: the estimate is never below the peak, and at most 1.5 GiB above (the
    allowance for the interpreter and libraries dominates at this size)."""
    from qwen_edge import footprint as FP
    from qwen_edge.sources import open_source
    spec = open_source(str(tiny)).spec
    for n, (args, stages) in enumerate((
        (("--method", "rtn", "--bits", "4"), [FP.writing(spec, FP.packed_bytes(spec, 4.8))]),
        (("--method", "gptq", "--samples", "4", "--seq-len", "64", "--calibration", "enwiki"),
         [FP.writing(spec, FP.packed_bytes(spec, 4.8)), FP.calibration(spec, 4, 64, "gptq", FP.packed_bytes(spec, 4.8))]),
        (("--method", "rtn", "--bpw", "6", "--sensitivity-samples", "2", "--seq-len", "64", "--target-speed", "0"),
         [FP.writing(spec, FP.packed_bytes(spec, 6)), FP.sensitivity(spec, 64)]),
    )):
        code, peak = measured("quantize", tiny, "-o", tmp_path / f"q{n}", "--no-progress", *args)
        assert code == 0, args
        est = max(e.total for e in stages)
        assert peak <= est <= peak + 1.5 * GIB, (args, peak / GIB, est / GIB)
