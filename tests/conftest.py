import json
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def example_gguf() -> Path:
    """The real Qwen2.5-Coder-0.5B-Instruct GGUF (downloaded once, sha256-checked, cached)."""
    from qwen_edge.assets import example_gguf as fetch
    return fetch()


@pytest.fixture(scope="session")
def real_fp32(example_gguf, tmp_path_factory) -> Path:
    """The real model exported to fp32 once per test session."""
    from qwen_edge.export.writer import export
    out = tmp_path_factory.mktemp("real") / "fp32"
    export(str(example_gguf), out, max_length=4096, progress=False)
    return out


RECIPES = Path(__file__).resolve().parent.parent / "recipes"
# The recommended 410 MiB file: its recipe replayed with GPTQ (32 x 512 calibration tokens: full-rank Hessians)
REAL_INT4 = dict(method="gptq", recipe=RECIPES / "qwen2.5-coder-0.5b-instruct-410mib.json", samples=32, seq_len=512)


@pytest.fixture(scope="session")
def real_int4(example_gguf, tmp_path_factory) -> Path:
    """The real model at the recommended 410 MiB recipe, quantized once per test session, in a child process
    whose own peak RSS is kept beside it (REAL_INT4_PEAK: test_quant_real checks the memory estimate)."""
    import sys
    out = tmp_path_factory.mktemp("real") / "int4-410"
    args = [sys.executable, "-m", "qwen_edge.cli", "quantize", str(example_gguf), "-o", str(out), "--max-length",
            "4096", "--no-progress"]
    for k, v in REAL_INT4.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    from peak_rss import run_measured
    code, peak = run_measured(args, out.parent / "quantize.log")
    assert code == 0, (out.parent / "quantize.log").read_text()[-2000:]
    (out.parent / REAL_INT4_PEAK).write_text(str(peak))
    return out


REAL_INT4_PEAK = "quantize_peak_rss_bytes"


@pytest.fixture(scope="session")
def real_hf(example_gguf):
    """transformers' fp32 model dequantized from the same GGUF: the reference."""
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(str(example_gguf.parent), gguf_file=example_gguf.name,
                                                dtype=torch.float32).eval()


def manifest(folder: Path) -> dict:
    return json.loads((folder / "qwen_edge.json").read_text())


@pytest.fixture(scope="session")
def tiny_2k(tmp_path_factory):
    """A tiny random Qwen2 model exported with a 2,048-token context, loaded (constrained decoding, logprobs)."""
    from qwen_edge.export.writer import export
    from qwen_edge.runtimes.model import Model
    from tiny_models import make_tiny
    root = tmp_path_factory.mktemp("tiny2k")
    _, folder = make_tiny(root / "hf", max_position_embeddings=2048)
    export(str(folder), root / "onnx", max_length=2048, progress=False)
    return Model.load(root / "onnx", threads=2)
