"""`qwen-edge eval` end to end on tiny random models: perplexity against transformers, self-reference,
saved references, a damaged model failing its gates (exit 1, JUnit failure), baselines and the plot."""

import json
import math
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from qwen_edge.eval.run import EvalConfig, evaluate
from qwen_edge.export.writer import export
from tiny_models import make_tiny

TEXT = "\n\n".join(
    f"Paragraph {i}. The quick brown fox number {i * 7 % 13} jumps over {i % 5} lazy dogs near the river. "
    f"def main():\n    return {i * 3}\nRust is a language empowering everyone to build reliable software, "
    f"said speaker {i % 4} on day {i % 9}." for i in range(60))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "qwen_edge.cli", "eval", *map(str, args)], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(torch model, exported folder, text file, hf folder)."""
    root = tmp_path_factory.mktemp("evaltiny")
    model, hf = make_tiny(root / "hf", max_position_embeddings=512)
    # a random model predicts nearly uniformly; a sharper head gives peaked distributions, as real models have
    from safetensors.numpy import load_file, save_file
    w = load_file(str(hf / "model.safetensors"))
    w["lm_head.weight"] = w["lm_head.weight"] * 15
    save_file(w, str(hf / "model.safetensors"), metadata={"format": "pt"})
    with torch.no_grad():
        model.lm_head.weight.mul_(15)
    export(str(hf), root / "good", max_length=256, progress=False)
    text = root / "text.txt"
    text.write_text(TEXT)
    return model, root / "good", text, hf


@pytest.fixture(scope="module")
def damaged(tiny, tmp_path_factory):
    """The same model with noise added to every weight, exported like the good one."""
    from safetensors.numpy import load_file, save_file
    _, _, _, hf = tiny
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(hf, root / "hf")
    w = load_file(str(root / "hf" / "model.safetensors"))
    rng = np.random.default_rng(1)
    w = {k: (v + rng.normal(size=v.shape).astype(v.dtype) * 0.3 * (v.std() + 1e-3)) for k, v in w.items()}
    save_file(w, str(root / "hf" / "model.safetensors"), metadata={"format": "pt"})
    export(str(root / "hf"), root / "bad", max_length=256, progress=False)
    return root / "bad"


def transformers_nlls(model, ids: list[int], ctx: int, stride: int) -> np.ndarray:
    """Strided perplexity the Hugging Face way (labels masked with -100), per token."""
    out, prev_end = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + ctx, len(ids))
        trg = end - prev_end
        x = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].double(), dim=-1)
        labels = x[0].clone()
        labels[:-trg] = -100
        for t in range(1, end - begin):
            if labels[t] != -100:
                out.append(-float(logp[t - 1, labels[t]]))
        prev_end = end
        if end == len(ids):
            break
    return np.array(out)


@pytest.mark.parametrize("ctx,stride", [(64, 64), (64, 24), (100, 100)])
def test_perplexity_equals_transformers(tiny, ctx, stride, tmp_path):
    from tokenizers import Tokenizer
    model, good, text, _ = tiny
    r = cli(good, "--dataset", text, "--ctx", ctx, "--stride", stride, "--max-tokens", 500,
            "--report", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    ids = Tokenizer.from_file(str(good / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids[:500]
    nll = transformers_nlls(model, ids, ctx, stride)
    m = rep["models"][0]["metrics"]
    assert m["tokens"] == len(nll)
    assert m["ppl"] == pytest.approx(math.exp(nll.mean()), rel=1e-4)
    assert m["ppl_se"] == pytest.approx(math.exp(nll.mean()) * nll.std(ddof=1) / math.sqrt(len(nll)), rel=1e-3)
    assert f"ppl {m['ppl']:.4f}" in r.stdout and rep["method"]["ctx"] == ctx and rep["method"]["stride"] == stride


def test_model_against_itself(tiny, tmp_path):
    _, good, text, _ = tiny
    common = dict(dataset=str(text), ctx=64, max_tokens=400, progress=False)
    shutil.copytree(good, tmp_path / "copy")  # another folder, so it is scored for real, not reused
    rep = evaluate(EvalConfig(models=[str(tmp_path / "copy"), str(good)], reference=str(good),
                              gates=["kl_max<=0", "top1>=100%"], **common))
    m, reused = (r["metrics"] for r in rep["models"])
    assert m["kl_mean"] == 0 and m["kl_max"] == 0 and m["top1"] == 1.0 and m["ppl_ratio"] == 1.0
    assert m["ref_ppl"] == pytest.approx(m["ppl"]) and rep["passed"]
    assert reused == m
    # a saved reference gives the same figures as the folder it was saved from
    evaluate(EvalConfig(models=[str(good)], save_reference=str(tmp_path / "ref.bin"), **common))
    assert (tmp_path / "ref.bin").is_file() and not (tmp_path / "ref.bin.npz").exists()
    rep2 = evaluate(EvalConfig(models=[str(good)], reference=str(tmp_path / "ref.bin"), dataset=str(text),
                               progress=False))  # ctx, stride and max tokens come from the reference
    m2 = rep2["models"][0]["metrics"]
    assert m2["kl_max"] == 0 and m2["top1"] == 1.0 and m2["ppl"] == m["ppl"]
    assert rep2["method"]["ctx"] == 64 and m2["tokens"] == m["tokens"]


def test_damaged_model_fails_gates(tiny, damaged, tmp_path):
    _, good, text, _ = tiny
    r = cli(good, damaged, "--reference", good, "--dataset", text, "--ctx", 64, "--max-tokens", 400,
            "--gate", "kl_mean<=0.01", "--gate", "top1>=0.95", "--gate", "ppl_increase<=3%",
            "--junit", tmp_path / "j.xml", "--report", tmp_path / "r.json", "--markdown", tmp_path / "r.md")
    assert r.returncode == 1, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    by = {(g["model"], g["metric"]): g for g in rep["gates"]}
    assert all(by[("good", k)]["passed"] for k in ("kl_mean", "top1", "ppl_increase"))
    bad = by[("bad", "kl_mean")]
    assert not bad["passed"] and bad["value"] > 0.01 and bad["margin"] == pytest.approx(bad["value"] - 0.01)
    assert not rep["passed"] and "FAIL bad: kl_mean<=0.01" in r.stdout
    root = ET.parse(tmp_path / "j.xml").getroot()
    cases = root.findall("./testsuite/testcase")
    assert len(cases) == 6
    failed = [c for c in cases if c.find("failure") is not None]
    assert {c.get("classname") for c in failed} == {"qwen_edge.eval.bad"}
    assert "kl_mean<=0.01" in {c.get("name") for c in failed}
    assert "❌" in (tmp_path / "r.md").read_text()


def test_saved_reference_gates_damaged_model_without_the_reference_model(tiny, damaged, tmp_path):
    _, good, text, _ = tiny
    assert cli(good, "--save-reference", tmp_path / "ref.npz", "--dataset", text, "--ctx", 48,
               "--max-tokens", 300).returncode == 0
    ok = cli(good, "--reference", tmp_path / "ref.npz", "--dataset", text, "--gate", "kl_p99<=1e-6")
    assert ok.returncode == 0, ok.stderr + ok.stdout
    bad = cli(damaged, "--reference", tmp_path / "ref.npz", "--dataset", text, "--gate", "kl_p99<=1.0",
              "--junit", tmp_path / "j.xml")
    assert bad.returncode == 1, bad.stderr
    assert ET.parse(tmp_path / "j.xml").getroot().find("./testsuite/testcase/failure") is not None


def test_baseline(tiny, damaged, tmp_path):
    _, good, text, _ = tiny
    base = tmp_path / "base.json"
    args = ("--dataset", text, "--ctx", 64, "--max-tokens", 300, "--baseline", base)
    (tmp_path / "a").mkdir()
    shutil.copytree(good, tmp_path / "a" / "m")
    (tmp_path / "b").mkdir()
    shutil.copytree(damaged, tmp_path / "b" / "m")  # same label "m": the regression CI must catch
    assert cli(tmp_path / "a" / "m", *args, "--update-baseline").returncode == 0
    assert json.loads(base.read_text())["models"]["m"]["ppl"] > 1
    same = cli(tmp_path / "a" / "m", *args, "--gate", "ppl_vs_baseline<=0.1%")
    assert same.returncode == 0, same.stderr + same.stdout
    worse = cli(tmp_path / "b" / "m", *args, "--gate", "ppl_vs_baseline<=1%", "--update-baseline")
    assert worse.returncode == 1 and "not updated" in worse.stderr
    assert "FAIL m: ppl_vs_baseline<=1%" in worse.stdout


def test_plot_is_a_png(tiny, damaged, tmp_path):
    _, good, text, _ = tiny
    r = cli(good, damaged, "--dataset", text, "--ctx", 64, "--max-tokens", 200, "--plot", tmp_path / "p.png")
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert w > 100 and h > 100
