"""The real Qwen2.5-Coder-0.5B-Instruct on enwiki: fp16 gated against the fp32 reference, all reports, the plot.
Bounded to 4096 tokens in windows of 512 so it stays within a few minutes on 2 cores."""

import json
import math
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from qwen_edge.export.writer import export

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def real_fp16(example_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("real16") / "fp16"
    export(str(example_gguf), out, dtype="fp16", max_length=4096, progress=False)
    return out


def test_fp16_against_fp32_on_enwiki(real_fp32, real_fp16, tmp_path):
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "eval", str(real_fp32), str(real_fp16),
                        "--reference", str(real_fp32), "--dataset", "enwiki", "--ctx", "512", "--max-tokens", "4096",
                        "--gate", "ppl_increase<=1%", "--gate", "kl_mean<=0.01", "--gate", "kl_p99<=0.1",
                        "--gate", "top1>=95%",
                        "--report", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml"),
                        "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "p.png")],
                       capture_output=True, text=True, timeout=900)
    seconds = time.perf_counter() - t0
    print(r.stdout, r.stderr[-2000:], f"eval took {seconds:.0f} s", sep="\n")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    fp32, fp16 = (m["metrics"] for m in rep["models"])
    assert fp32["tokens"] == fp16["tokens"] == 4096 - 8  # 8 windows, each window's first token unscored
    assert 2 < fp32["ppl"] < 100 and fp32["ppl_se"] > 0  # real prose under a real model (a broken one is far off)
    assert fp32["kl_max"] == 0 and fp32["top1"] == 1.0
    assert 0 < fp16["kl_mean"] <= 0.01 and fp16["top1"] >= 0.95
    assert abs(fp16["ppl"] / fp32["ppl"] - fp16["ppl_ratio"]) < 1e-9
    assert math.isclose(rep["reference"]["ppl"], fp32["ppl"], rel_tol=1e-9)
    assert all(g["passed"] for g in rep["gates"]) and len(rep["gates"]) == 8
    assert len(ET.parse(tmp_path / "r.xml").getroot().findall("./testsuite/testcase")) == 8
    png = (tmp_path / "p.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    from PIL import Image  # comes with matplotlib
    with Image.open(tmp_path / "p.png") as im:
        im.verify()


def test_int4_against_a_saved_fp32_reference(real_fp32, real_int4, tmp_path):
    """The CI path: save the fp32 reference once, then gate the int4 GPTQ model against the file alone.
    Gates are regression gates for this model and calibration (docs/benchmarks.md has the figures)."""
    common = ["--dataset", "enwiki", "--ctx", "512", "--max-tokens", "4096", "--no-progress"]
    ref = tmp_path / "ref.npz"
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "eval", str(real_fp32), *common,
                        "--save-reference", str(ref)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    gates = ["ppl_increase<=10%", "kl_mean<=0.12", "kl_p99<=1.5", "top1>=80%"]
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "eval", str(real_fp32), str(real_int4), *common,
                        "--reference", str(ref), *sum([["--gate", g] for g in gates], []),
                        "--report", str(tmp_path / "r.json"), "--junit", str(tmp_path / "r.xml"),
                        "--plot", str(tmp_path / "tradeoff.png"), "--json"],
                       capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:], r.stderr[-2000:], sep="\n")
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    fp32, int4 = (m["metrics"] for m in rep["models"])
    assert fp32["kl_mean"] < 1e-3 and fp32["top1"] == 1.0  # against its own compact reference
    assert 0.005 < int4["kl_mean"] <= 0.12 and 0.80 <= int4["top1"] < 1.0  # int4 really differs, within gate
    assert 1.0 < int4["ppl_ratio"] <= 1.10 and int4["ppl_ratio_se"] > 0
    assert len(ET.parse(tmp_path / "r.xml").getroot().findall("./testsuite/testcase")) == 2 * len(gates)
    assert (tmp_path / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
