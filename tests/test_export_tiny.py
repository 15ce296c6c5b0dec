"""Exported graphs match transformers on tiny random Qwen2/Qwen3 models: prefill and cached decode."""

import numpy as np
import pytest
import torch

from conftest import manifest
from qwen_edge.export.writer import export
from tiny_models import make_tiny, new_cache, ort_session, ort_step

CASES = {
    "qwen2-untied-gqa2": dict(model_type="qwen2"),
    "qwen2-tied-gqa1": dict(model_type="qwen2", tie_word_embeddings=True, num_key_value_heads=4),
    "qwen2-gqa7": dict(model_type="qwen2", hidden_size=112, num_attention_heads=7, num_key_value_heads=1),
    "qwen2-theta1e6-5.x": dict(model_type="qwen2", rope_theta=1e6, config_format="5.x"),
    "qwen2-yarn-4.x": dict(model_type="qwen2", rope_theta=1e6, max_position_embeddings=256,
                           rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}),
    "qwen2-yarn-5.x": dict(model_type="qwen2", config_format="5.x",
                           rope_scaling={"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32,
                                         "beta_fast": 16.0}),
    "qwen3-qknorm": dict(model_type="qwen3", num_attention_heads=4, num_key_value_heads=2, head_dim=32),
    "qwen3-tied-bias-5.x": dict(model_type="qwen3", tie_word_embeddings=True, attention_bias=True,
                                config_format="5.x", rope_theta=5e5),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_prefill_and_decode_match_transformers(case, tmp_path):
    kw = dict(CASES[case])
    model, folder = make_tiny(tmp_path / "hf", **kw)
    out = tmp_path / "onnx"
    export(str(folder), out, max_length=128, progress=False)
    spec = manifest(out)["model"]
    sess = ort_session(out)
    kv = new_cache(spec, 128)
    rng = np.random.default_rng(0)
    ids = [int(t) for t in rng.integers(3, spec["vocab_size"], size=40)]  # past YaRN's original 32 positions

    logits = ort_step(sess, ids, kv, len(ids), spec["num_layers"])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert logits.shape == ref.shape
    np.testing.assert_allclose(logits, ref, atol=1e-4, rtol=0)

    for step in range(10):
        nxt = int(np.argmax(logits[-1]))
        ids.append(nxt)
        logits = ort_step(sess, [nxt], kv, len(ids), spec["num_layers"], keep=1)
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1].numpy()
        assert logits.shape == (1, spec["vocab_size"])
        np.testing.assert_allclose(logits[0], ref, atol=1e-4, rtol=0, err_msg=f"decode step {step}")


def test_tied_embedding_is_stored_once(tmp_path):
    import onnx
    _, folder = make_tiny(tmp_path / "hf", tie_word_embeddings=True)
    export(str(folder), tmp_path / "onnx", progress=False)
    m = onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False)
    names = [i.name for i in m.graph.initializer]
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] == "model.embed_tokens.weight"


def test_uses_fused_cpu_operators(tmp_path):
    import onnx
    _, folder = make_tiny(tmp_path / "hf")
    export(str(folder), tmp_path / "onnx", progress=False)
    ops = [n.op_type for n in onnx.load(str(tmp_path / "onnx" / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("GroupQueryAttention") == 2
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * 2  # (post-attn, next input / final) per layer
    assert "Softmax" not in ops and "Transpose" not in ops


def test_fp16_export_is_close_to_fp32(tmp_path):
    _, folder = make_tiny(tmp_path / "hf")
    export(str(folder), tmp_path / "fp32", progress=False, max_length=64)
    export(str(folder), tmp_path / "fp16", dtype="fp16", progress=False, max_length=64)
    spec = manifest(tmp_path / "fp32")["model"]
    ids = list(range(5, 25))
    a = ort_step(ort_session(tmp_path / "fp32"), ids, new_cache(spec, 64), len(ids), 2)
    b = ort_step(ort_session(tmp_path / "fp16"), ids, new_cache(spec, 64, np.float16), len(ids), 2)
    assert manifest(tmp_path / "fp16")["dtype"] == "fp16"
    assert np.abs(a - b).max() < 2e-2 * max(1.0, np.abs(a).max())
    assert (tmp_path / "fp16" / "model.onnx.data").stat().st_size < 0.6 * (tmp_path / "fp32" / "model.onnx.data").stat().st_size
