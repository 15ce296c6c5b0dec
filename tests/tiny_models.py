"""Tiny random Qwen models for tests, built with transformers and saved as safetensors folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(dest: Path, vocab_size: int, extra_specials: tuple[str, ...] = ()) -> None:
    """A byte-level BPE tokenizer with exactly `vocab_size` entries (specials included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *extra_specials]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = ["The quick brown fox jumps over the lazy dog. " * 20, "def main():\n    return 42\n" * 20,
            "Rust is a language empowering everyone to build reliable software."]
    tok.train_from_iterator(text, trainer)
    tok.save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
         "bos_token": None, "tokenizer_class": "Qwen2Tokenizer"}))


def make_tiny(dest: Path, model_type: str = "qwen2", *, seed: int = 0, config_format: str = "4.x",
              **overrides: Any):
    """Build, save and return (torch model, folder). `config_format` rewrites config.json's RoPE keys."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    torch.manual_seed(seed)
    cfg: dict[str, Any] = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                               rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=2, bos_token_id=0,
                               pad_token_id=0)
    specials = tuple(overrides.pop("specials", ()))  # more special tokens (Qwen's <tool_call>, say)
    rope_theta = overrides.pop("rope_theta", 10000.0)
    rope_scaling = overrides.pop("rope_scaling", None)
    cfg.update(overrides)
    if model_type == "qwen3":
        cfg.setdefault("head_dim", 32)
    params = {"rope_type": "default", "rope_theta": rope_theta, **(rope_scaling or {})}
    if rope_scaling:
        params["rope_type"] = rope_scaling.get("rope_type", rope_scaling.get("type"))
        params.pop("type", None)
    config = AutoConfig.for_model(model_type, rope_parameters=params, **cfg)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # random biases and norms, so every weight in the graph is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dest))
    c = json.loads((dest / "config.json").read_text())
    if config_format == "4.x":  # the layout real hub checkpoints use
        p = c.pop("rope_parameters")
        c["rope_theta"] = p.pop("rope_theta")
        if p.get("rope_type", "default") != "default":
            c["rope_scaling"] = {"type": p.pop("rope_type"), **p}
        c.pop("layer_types", None)
    (dest / "config.json").write_text(json.dumps(c, indent=2))
    tiny_tokenizer(dest, cfg["vocab_size"], specials)
    return model, dest


def ort_session(folder: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(folder / "model.onnx"), so)


def ort_step(sess: ort.InferenceSession, ids: list[int], kv: list[ort.OrtValue], total: int, n_layers: int,
             keep: int = 0) -> np.ndarray:
    """One forward pass with past and present bound to the same preallocated buffers."""
    b = sess.io_binding()
    b.bind_cpu_input("input_ids", np.array([ids], dtype=np.int64))
    b.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
    b.bind_ortvalue_input("logits_to_keep", ort.OrtValue.ortvalue_from_numpy(np.array(keep, dtype=np.int64)))
    b.bind_output("logits")
    for i in range(n_layers):
        for j, n in enumerate(("key", "value")):
            b.bind_ortvalue_input(f"past_key_values.{i}.{n}", kv[2 * i + j])
            b.bind_ortvalue_output(f"present.{i}.{n}", kv[2 * i + j])
    sess.run_with_iobinding(b)
    return b.copy_outputs_to_cpu()[0][0]


def new_cache(spec: dict, max_length: int, dtype=np.float32) -> list[ort.OrtValue]:
    shape = (1, spec["num_kv_heads"], max_length, spec["head_dim"])
    return [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype=dtype)) for _ in range(2 * spec["num_layers"])]
