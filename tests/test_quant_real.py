"""The real Qwen2.5-Coder-0.5B-Instruct: int8 and int4 RTN / GPTQ / AWQ exports against the fp32 export on
held-out enwiki text. Calibration is smaller than the benchmark's (16 x 256 tokens) to keep CI time down;
docs/quantize.md has the full figures. Gates are what this code measurably achieves with margin, and they
fail if quality regresses (the issue's stricter targets are not met yet: docs/benchmarks.md)."""

import pytest

from conftest import REAL_INT4, manifest

pytestmark = pytest.mark.real

VARIANTS = {
    "rtn8": dict(method="rtn", bits=8, group_size=128),  # default accuracy_level for int8: 0
    "rtn8acc4": dict(method="rtn", bits=8, group_size=128, accuracy_level=4),
    "rtn4": dict(method="rtn", bits=4, group_size=128),
    "awq4": dict(method="awq", bits=4, group_size=128, samples=16, seq_len=256),
}


@pytest.fixture(scope="module")
def results(example_gguf, real_fp32, real_int4, tmp_path_factory):
    """Quantize every variant (gptq4 is the session's shared int4 model), score all on the same windows."""
    from qwen_edge.quantize.api import quantize
    from qwen_edge.quantize.quality import compare, eval_windows
    root = tmp_path_factory.mktemp("realq")
    for name, kw in VARIANTS.items():
        quantize(str(example_gguf), root / name, max_length=1024, progress=False, **kw)
    (root / "gptq4").symlink_to(real_int4)
    names = [*VARIANTS, "gptq4"]
    rows = compare(real_fp32, [root / n for n in names], eval_windows(real_fp32, 4, 512))
    return root, dict(zip(names, rows))


def test_int8_perplexity_gate(results):
    _, r = results
    # int8 weights with fp32 activations (the int8 default): the issue's +0.2% target
    assert r["rtn8"]["ppl_increase"] < 0.002 and r["rtn8"]["kl_mean"] < 0.002 and r["rtn8"]["top1"] > 0.97
    assert manifest(results[0] / "rtn8")["quantization"]["accuracy_level"] == 0
    # accuracy_level 4 (int8 activations in the CPU kernel) costs more (measured +0.1..0.5% on 2k tokens)
    assert r["rtn8acc4"]["ppl_increase"] < 0.01 and r["rtn8acc4"]["kl_mean"] < 0.005 and r["rtn8acc4"]["top1"] > 0.95


def test_gptq_int4_beats_rtn_int4_and_awq_stays_near_it(results):
    root, r = results
    print({k: {m: round(v, 4) for m, v in x.items()} for k, x in r.items()})
    # GPTQ: clearly lower KL than RTN at the same bits and group (measured ~0.67x), and a loose absolute gate
    # (a broken quantizer lands far above). Perplexity on 2k tokens is too noisy to rank GPTQ against RTN.
    assert r["gptq4"]["kl_mean"] < 0.8 * r["rtn4"]["kl_mean"]
    assert r["gptq4"]["ppl_increase"] < 0.12 and r["gptq4"]["top1"] > 0.8
    # AWQ does not beat RTN on this model (measured KL 1.0x RTN's, perplexity worse; docs/benchmarks.md has
    # the ablations): a regression gate only.
    assert r["awq4"]["kl_mean"] < 1.15 * r["rtn4"]["kl_mean"] and r["awq4"]["ppl_increase"] < 0.3
    for m in ("gptq4", "awq4"):
        q = manifest(root / m)["quantization"]
        assert q["calibration"] == "enwiki" and q["samples"] == 16 and q["seq_len"] == 256, m


def test_int4_folder_is_smaller_than_int8(results):
    root, _ = results
    size = {n: sum(p.stat().st_size for p in (root / n).iterdir()) for n in (*VARIANTS, "gptq4")}
    assert size["gptq4"] < 0.8 * size["rtn8"]
    from qwen_edge.artifact import verify
    assert verify(root / "gptq4") == []
