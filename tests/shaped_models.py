"""Checkpoints with the exact configs and tensor shapes of Qwen2.5-1.5B / 3B / 7B-Instruct whose weight bytes
are never written: each safetensors file is its header and a hole (a sparse file). Enough for everything
that reads only headers (the memory estimate, the refusal before a job starts); reading a weight gives zeros."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from tiny_models import tiny_tokenizer

CONFIGS = {  # the hub's config.json values that shape the model
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False),
}


def tensor_shapes(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Every tensor of a Qwen2 checkpoint with config `c`, in the hub's names (lm_head only when untied)."""
    h, i = c["hidden_size"], c["intermediate_size"]
    kv = c["num_key_value_heads"] * h // c["num_attention_heads"]
    shapes = [("model.embed_tokens.weight", (c["vocab_size"], h))]
    for n in range(c["num_hidden_layers"]):
        p = f"model.layers.{n}"
        shapes += [(f"{p}.input_layernorm.weight", (h,)), (f"{p}.post_attention_layernorm.weight", (h,)),
                   (f"{p}.self_attn.q_proj.weight", (h, h)), (f"{p}.self_attn.q_proj.bias", (h,)),
                   (f"{p}.self_attn.k_proj.weight", (kv, h)), (f"{p}.self_attn.k_proj.bias", (kv,)),
                   (f"{p}.self_attn.v_proj.weight", (kv, h)), (f"{p}.self_attn.v_proj.bias", (kv,)),
                   (f"{p}.self_attn.o_proj.weight", (h, h)), (f"{p}.mlp.gate_proj.weight", (i, h)),
                   (f"{p}.mlp.up_proj.weight", (i, h)), (f"{p}.mlp.down_proj.weight", (h, i))]
    shapes.append(("model.norm.weight", (h,)))
    if not c["tie_word_embeddings"]:
        shapes.append(("lm_head.weight", (c["vocab_size"], h)))
    return shapes


def hollow_checkpoint(dest: Path, size: str) -> Path:
    c = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "max_position_embeddings": 32768,
         "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "use_sliding_window": False, "sliding_window": 131072,
         "max_window_layers": 28, "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 2,
         "hidden_act": "silu", **CONFIGS[size]}
    shapes = tensor_shapes(c)
    header, off = {}, 0
    for name, shape in shapes:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    dest.mkdir(parents=True, exist_ok=True)
    hb = json.dumps(header).encode()
    with open(dest / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        f.truncate(8 + len(hb) + off)  # the hole: no weight bytes on disk
    (dest / "config.json").write_text(json.dumps(c))
    tiny_tokenizer(dest, 400)
    return dest
