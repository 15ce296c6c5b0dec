"""The real Qwen2.5-Coder-0.5B-Instruct GGUF: export, compare with transformers and onnxruntime-genai."""

import numpy as np
import torch
from tokenizers import Tokenizer

from conftest import manifest
from tiny_models import new_cache, ort_session, ort_step

PROMPT = ("Anarchism is a political philosophy and movement that is skeptical of all justifications for "
          "authority and seeks to abolish the institutions it claims maintain unnecessary coercion and "
          "hierarchy, typically including the state and capitalism. The history of")


def greedy_ours(folder, ids, n):
    spec = manifest(folder)["model"]
    sess, kv = ort_session(folder), new_cache(spec, 512)
    ids = list(ids)
    logits = ort_step(sess, ids, kv, len(ids), spec["num_layers"], keep=1)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits[-1])))
        logits = ort_step(sess, [out[-1]], kv, len(ids) + len(out), spec["num_layers"], keep=1)
    return out


def test_every_position_top1_matches_transformers(real_fp32, real_hf, capsys):
    tok = Tokenizer.from_file(str(real_fp32 / "tokenizer.json"))
    ids = tok.encode(PROMPT).ids
    assert len(ids) > 40
    spec = manifest(real_fp32)["model"]
    ours = ort_step(ort_session(real_fp32), ids, new_cache(spec, 512), len(ids), spec["num_layers"])
    with torch.no_grad():
        ref = real_hf(torch.tensor([ids])).logits[0].numpy()
    diff = float(np.abs(ours - ref).max())
    with capsys.disabled():
        print(f"\n[real model] {len(ids)} positions, max |logit diff| vs transformers = {diff:.2e}")
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    assert diff < 1e-2  # fp32 vs fp32 with different kernels: far below any meaningful gap


def test_32_greedy_tokens_match_transformers(real_fp32, real_hf):
    tok = Tokenizer.from_file(str(real_fp32 / "tokenizer.json"))
    ids = tok.encode(PROMPT).ids
    with torch.no_grad():
        ref = real_hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False, min_new_tokens=32)
    assert greedy_ours(real_fp32, ids, 32) == ref[0, len(ids):].tolist()


def test_onnxruntime_genai_runs_the_folder_with_the_same_greedy_tokens(real_fp32):
    import onnxruntime_genai as og
    tok = Tokenizer.from_file(str(real_fp32 / "tokenizer.json"))
    ids = tok.encode(PROMPT).ids
    model = og.Model(str(real_fp32))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids) + 32, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(ids, dtype=np.int32))
    theirs = []
    while not gen.is_done() and len(theirs) < 32:
        gen.generate_next_token()
        theirs.append(int(gen.get_next_tokens()[0]))
    assert theirs == greedy_ours(real_fp32, ids, len(theirs))
    assert len(theirs) == 32


def test_manifest_records_source_spec_and_file_digests(real_fp32, example_gguf):
    from qwen_edge.artifact import verify
    m = manifest(real_fp32)
    assert m["source"]["kind"] == "gguf" and m["source"]["sha256"] == \
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert m["model"]["num_layers"] == 24 and m["model"]["num_kv_heads"] == 2 and not m["model"]["tie_word_embeddings"]
    assert m["model"]["rope"]["theta"] == 1e6
    assert m["quantization"] is None and m["dtype"] == "fp32"
    assert {"model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json", "genai_config.json",
            "generation_config.json"} <= set(m["files"])
    assert verify(real_fp32) == []
    tc = (real_fp32 / "tokenizer_config.json").read_text()
    assert "<|im_start|>" in tc  # the chat template travels with the model
