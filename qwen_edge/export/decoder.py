"""Builds the decoder graph for a Qwen dense model, one layer and one tensor at a time.

Per layer: RMSNorm (fused with the residual add: SkipSimplifiedLayerNormalization) -> one packed QKV
MatMul (+bias) -> [Qwen3: per-head q/k RMSNorm] -> com.microsoft GroupQueryAttention with fused rotary
and a KV cache that may share one preallocated buffer for past and present -> o_proj -> fused norm ->
packed gate/up MatMul -> SiLU * up -> down_proj.

Graph contract (docs/artifact.md): inputs input_ids [B,S] int64, attention_mask [B,T] int64,
past_key_values.N.key/value [B,kv,P,D]; outputs logits [B,L,V] float32 and present.N.key/value.
``logits_to_keep`` is an overridable initializer (default 0 = every position): a runtime feeds 1 to
compute only the last position's logits, perplexity leaves it at 0.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np
from onnx import TensorProto

from ..spec import ModelSpec, packed_sources
from .graph import Graph
from .rope import cos_sin_cache

ONNX_DTYPE = {np.float32: TensorProto.FLOAT, np.float16: TensorProto.FLOAT16}


class Weights(Protocol):
    def get(self, name: str) -> np.ndarray: ...
    def __contains__(self, name: str) -> bool: ...


# A linear layer writer: (graph, x, name, weight [out, in] fp32, bias or None) -> output name.
# Quantization swaps this for one that emits MatMulNBits.
LinearFn = Callable[[Graph, str, str, np.ndarray, "np.ndarray | None"], str]


def float_linear(dtype: type) -> LinearFn:
    def linear(g: Graph, x: str, name: str, w: np.ndarray, b: np.ndarray | None) -> str:
        y = g.op("MatMul", [x, g.weight(f"{name}.weight_t", w.T.astype(dtype, copy=False))], f"{name}/MatMul")
        if b is not None:
            y = g.op("Add", [y, g.weight(f"{name}.bias", b.astype(dtype, copy=False))], f"{name}/Add")
        return y
    return linear


class FloatTokens:
    """The default `tokens` hook: a float embedding Gather and a Gemm LM head (a tied head reads the
    embedding initializer itself, stored once). qwen_edge.export.nbits.QuantTokens is the quantized one."""

    def __init__(self, dtype: type):
        self.dtype, self._embed = dtype, None

    def embed(self, g: Graph, ids: str, w: np.ndarray) -> str:
        self._embed = g.weight("model.embed_tokens.weight", w.astype(self.dtype, copy=False))
        return g.op("Gather", [self._embed, ids], "embed/Gather")

    def head(self, g: Graph, x: str, w: "np.ndarray | None", embed_w: Callable[[], np.ndarray]) -> str:
        head = self._embed if w is None else g.weight("lm_head.weight", w.astype(self.dtype, copy=False))
        return g.op("Gemm", [x, head], "lm_head/Gemm", transB=1)


def build_decoder(g: Graph, spec: ModelSpec, weights: Weights, *, dtype: type = np.float32,
                  max_length: int, linear: LinearFn | None = None, tokens: "FloatTokens | None" = None,
                  progress: Callable[[int], None] = lambda i: None) -> None:
    linear = linear or float_linear(dtype)
    tokens = tokens or FloatTokens(dtype)
    s, T = spec, ONNX_DTYPE[dtype]
    kv_shape = ["batch_size", s.num_kv_heads, "past_sequence_length", s.head_dim]
    present_shape = ["batch_size", s.num_kv_heads, "total_sequence_length", s.head_dim]

    input_ids = g.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    mask = g.input("attention_mask", TensorProto.INT64, ["batch_size", "total_sequence_length"])
    g.output("logits", TensorProto.FLOAT, ["batch_size", "logits_length", s.vocab_size])

    # GroupQueryAttention takes per-batch valid lengths (minus one) and the total length as int32.
    seqlens = g.op("ReduceSum", [mask, g.const([1], "one_axis", np.int64)], "seqlens/ReduceSum", keepdims=0)
    seqlens = g.op("Sub", [seqlens, g.const(1, "one_i64", np.int64)], "seqlens/Sub")
    seqlens_k = g.op("Cast", [seqlens], "seqlens/Cast", to=TensorProto.INT32)
    total = g.op("Gather", [g.op("Shape", [mask], "total/Shape"), g.const(1, "idx1", np.int64)], "total/Gather")
    total_len = g.op("Cast", [total], "total/Cast", to=TensorProto.INT32)

    cos, sin = cos_sin_cache(spec, max_length)
    cos_cache, sin_cache = g.weight("cos_cache", cos.astype(dtype, copy=False)), g.weight("sin_cache", sin.astype(dtype, copy=False))

    hidden = tokens.embed(g, input_ids, weights.get("model.embed_tokens.weight"))
    eps = float(s.rms_norm_eps)

    def skip_norm(x: str, residual: str, w_name: str, name: str) -> tuple[str, str]:
        out = g.op("SkipSimplifiedLayerNormalization", [x, residual, g.weight(w_name, weights.get(w_name).astype(dtype, copy=False))],
                   name, n_out=4, domain="com.microsoft", epsilon=eps)
        g.nodes[-1].output[1] = g.nodes[-1].output[2] = ""  # mean / inv_std_var are not needed
        return out[0], out[3]

    def head_norm(x: str, heads: int, w_name: str, name: str) -> str:
        x4 = g.op("Reshape", [x, g.const([0, 0, heads, s.head_dim], "heads_shape", np.int64)], f"{name}/Reshape")
        n = g.op("SimplifiedLayerNormalization", [x4, g.weight(w_name, weights.get(w_name).astype(dtype, copy=False))],
                 f"{name}/Norm", axis=-1, epsilon=eps, stash_type=1)
        return g.op("Reshape", [n, g.const([0, 0, heads * s.head_dim], "flat_shape", np.int64)], f"{name}/Flatten")

    def attention(i: int, normed: str) -> str:
        """One packed QKV matmul, then GQA with fused rotary and an in-place KV cache, then o_proj."""
        a = f"model.layers.{i}.self_attn"
        qkv_w = np.concatenate([weights.get(n) for n in packed_sources(i, "self_attn.qkv_proj")], axis=0)
        qkv_b = (np.concatenate([weights.get(n) for n in packed_sources(i, "self_attn.qkv_proj", "bias")])
                 if s.qkv_bias else None)
        qkv = linear(g, normed, f"{a}.qkv_proj", qkv_w, qkv_b)
        del qkv_w, qkv_b
        q_dim, kv_dim = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        if s.qk_norm:
            q, k, v = g.op("Split", [qkv, g.const([q_dim, kv_dim, kv_dim], "qkv_split", np.int64)],
                           f"{a}/Split", n_out=3, axis=-1)
            q = head_norm(q, s.num_heads, f"{a}.q_norm.weight", f"{a}/q_norm")
            k = head_norm(k, s.num_kv_heads, f"{a}.k_norm.weight", f"{a}/k_norm")
            qkv_in = [q, k, v]
        else:
            qkv_in = [qkv, "", ""]  # packed QKV input
        past_k = g.input(f"past_key_values.{i}.key", T, kv_shape)
        past_v = g.input(f"past_key_values.{i}.value", T, kv_shape)
        g.op("GroupQueryAttention",
             qkv_in + [past_k, past_v, seqlens_k, total_len, cos_cache, sin_cache],
             f"{a}/GroupQueryAttention", domain="com.microsoft",
             outputs=[f"{a}/attn_out", f"present.{i}.key", f"present.{i}.value"],
             num_heads=s.num_heads, kv_num_heads=s.num_kv_heads, do_rotary=1, rotary_interleaved=0,
             local_window_size=-1, scale=float(s.head_dim ** -0.5))
        g.output(f"present.{i}.key", T, present_shape)
        g.output(f"present.{i}.value", T, present_shape)
        o_bias = weights.get(f"{a}.o_proj.bias") if f"{a}.o_proj.bias" in weights else None  # Qwen3 attention_bias
        return linear(g, f"{a}/attn_out", f"{a}.o_proj", weights.get(f"{a}.o_proj.weight"), o_bias)

    def mlp(i: int, normed: str) -> str:
        """SwiGLU: one packed gate_up matmul, split, silu(gate) * up, down_proj."""
        m = f"model.layers.{i}.mlp"
        gate_up_w = np.concatenate([weights.get(n) for n in packed_sources(i, "mlp.gate_up_proj")], axis=0)
        gate_up = linear(g, normed, f"{m}.gate_up_proj", gate_up_w, None)
        del gate_up_w
        gate, up = g.op("Split", [gate_up, g.const([s.intermediate_size] * 2, "gate_up_split", np.int64)],
                        f"{m}/Split", n_out=2, axis=-1)
        act = g.op("Mul", [gate, g.op("Sigmoid", [gate], f"{m}/Sigmoid")], f"{m}/SiLU")
        return linear(g, g.op("Mul", [act, up], f"{m}/Mul"), f"{m}.down_proj", weights.get(f"{m}.down_proj.weight"),
                      None)

    # One decoder layer: norm, attention, add + norm, MLP; each residual add is fused into the next norm.
    residual = hidden
    pending = None  # output of the previous block, still to be added to the residual
    for i in range(s.num_layers):
        p = f"model.layers.{i}"
        if pending is None:
            w = f"{p}.input_layernorm.weight"
            normed = g.op("SimplifiedLayerNormalization", [hidden, g.weight(w, weights.get(w).astype(dtype, copy=False))],
                          f"{p}/input_norm", axis=-1, epsilon=eps, stash_type=1)
        else:
            normed, residual = skip_norm(pending, residual, f"{p}.input_layernorm.weight", f"{p}/input_norm")
        o = attention(i, normed)
        normed, residual = skip_norm(o, residual, f"{p}.post_attention_layernorm.weight", f"{p}/post_attention_norm")
        pending = mlp(i, normed)
        progress(i)

    normed, _ = skip_norm(pending, residual, "model.norm.weight", "model/final_norm")

    # Only the last `logits_to_keep` positions reach the LM head (0 keeps all): Slice from -keep.
    keep = g.weight("logits_to_keep", np.array(0, dtype=np.int64))
    start = g.op("Neg", [g.op("Reshape", [keep, g.const([1], "shape1", np.int64)], "keep/Reshape")], "keep/Neg")
    normed = g.op("Slice", [normed, start, g.const([np.iinfo(np.int64).max], "int_max", np.int64),
                            g.const([1], "axis1", np.int64)], "keep/Slice")

    # The LM head reads a [vocab, hidden] matrix; a tied model points it at the embedding, stored once.
    flat = g.op("Reshape", [normed, g.const([-1, s.hidden_size], "flat_hidden", np.int64)], "lm_head/Flatten")
    logits2d = tokens.head(g, flat, None if s.tie_word_embeddings else weights.get("lm_head.weight"),
                           lambda: weights.get("model.embed_tokens.weight"))
    if dtype != np.float32:
        logits2d = g.op("Cast", [logits2d], "lm_head/Cast", to=TensorProto.FLOAT)
    batch_seq = g.op("Slice", [g.op("Shape", [normed], "lm_head/Shape"), g.const([0], "zero1", np.int64),
                               g.const([2], "two1", np.int64)], "lm_head/BatchSeq")
    out_shape = g.op("Concat", [batch_seq, g.const([s.vocab_size], "vocab1", np.int64)], "lm_head/Concat", axis=0)
    g.op("Reshape", [logits2d, out_shape], "lm_head/Reshape", outputs=["logits"])
