"""The shapes of the Qwen2.5 dense family's larger members (1.5B, 3B, 7B), from the hub's config.json files.

Speed and memory depend on shapes and formats, not on the weights' values: the benchmarks write synthetic
checkpoints with these shapes (scripts/bench_export_7b.py: time, memory and speed, never quality) and the
tests build header-only ones (tests/shaped_models.py: the memory refusal)."""

from __future__ import annotations

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
