"""One Qwen2/Qwen3 decoder layer in fp32 torch, built from a Source's weights (checked against
transformers in tests/test_quant_algos.py). Used by the layer-by-layer calibration: one layer's weights
in memory at a time, and hooks that see the input of each linear (as the exporter packs them: qkv_proj,
o_proj, gate_up_proj, down_proj).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..export.rope import cos_sin_cache
from ..spec import LINEARS, ModelSpec, packed_sources  # noqa: F401  (LINEARS: the quantizers import it from here)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(spec: ModelSpec, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = cos_sin_cache(spec, length)
    return torch.from_numpy(cos), torch.from_numpy(sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class DecoderLayer:
    """Weights as the exporter packs them: w[name] [out, in], b[name] or absent; norms by HF name tail."""

    def __init__(self, spec: ModelSpec, weights, i: int):
        self.spec, self.i = spec, i
        p = f"model.layers.{i}"
        get = lambda n: torch.from_numpy(np.ascontiguousarray(weights.get(n), dtype=np.float32))
        a = f"{p}.self_attn"
        self.w = {k: torch.cat([get(n) for n in packed_sources(i, k)]) for k in LINEARS}
        self.b: dict[str, torch.Tensor] = {}
        if spec.qkv_bias:
            self.b["self_attn.qkv_proj"] = torch.cat([get(n) for n in packed_sources(i, "self_attn.qkv_proj", "bias")])
        if f"{a}.o_proj.bias" in weights:
            self.b["self_attn.o_proj"] = get(f"{a}.o_proj.bias")
        self.norm = {"input_layernorm": get(f"{p}.input_layernorm.weight"),
                     "post_attention_layernorm": get(f"{p}.post_attention_layernorm.weight")}
        if spec.qk_norm:
            self.norm["self_attn.q_norm"] = get(f"{a}.q_norm.weight")
            self.norm["self_attn.k_norm"] = get(f"{a}.k_norm.weight")

    def hf_name(self, key: str) -> str:
        return f"model.layers.{self.i}.{key}.weight"

    def _lin(self, name: str, x: torch.Tensor, hook, w: torch.Tensor | None = None) -> torch.Tensor:
        if hook is not None:
            hook(name, x)
        y = x @ (self.w[name] if w is None else w).T
        b = self.b.get(name)
        return y if b is None else y + b

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                hook: Callable[[str, torch.Tensor], None] | None = None) -> torch.Tensor:
        """h [B, S, hidden] -> [B, S, hidden]; positions 0..S-1, causal."""
        eps = self.spec.rms_norm_eps
        h = h + self.attention(rms_norm(h, self.norm["input_layernorm"], eps), cos, sin, hook)
        return h + self.mlp(rms_norm(h, self.norm["post_attention_layernorm"], eps), hook)

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, hook=None,
                  qkv_w: torch.Tensor | None = None) -> torch.Tensor:
        """The attention block on normed input x [B, S, hidden], o_proj included; `qkv_w` replaces the
        q/k/v weight (AWQ scores candidate quantizations by this block's output)."""
        return self._lin("self_attn.o_proj", self.attention_core(x, cos, sin, hook, qkv_w), hook)

    def attention_core(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, hook=None,
                       qkv_w: torch.Tensor | None = None) -> torch.Tensor:
        """The attention block up to o_proj's input [B, S, heads * head_dim]."""
        s, eps = self.spec, self.spec.rms_norm_eps
        bsz, n, _ = x.shape
        qkv = self._lin("self_attn.qkv_proj", x, hook, qkv_w)
        qd, kd = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        q, k, v = qkv.split([qd, kd, kd], dim=-1)
        q = q.view(bsz, n, s.num_heads, s.head_dim)
        k = k.view(bsz, n, s.num_kv_heads, s.head_dim)
        v = v.view(bsz, n, s.num_kv_heads, s.head_dim)
        if s.qk_norm:
            q = rms_norm(q, self.norm["self_attn.q_norm"], eps)
            k = rms_norm(k, self.norm["self_attn.k_norm"], eps)
        c, si = cos[:n][None, :, None, :], sin[:n][None, :, None, :]
        q, k = _rotate(q, c, si).transpose(1, 2), _rotate(k, c, si).transpose(1, 2)
        v = v.transpose(1, 2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=s.head_dim ** -0.5,
                                             enable_gqa=s.num_heads != s.num_kv_heads)
        return att.transpose(1, 2).reshape(bsz, n, qd)

    def mlp(self, x: torch.Tensor, hook=None, gate_up_w: torch.Tensor | None = None) -> torch.Tensor:
        """The MLP on normed input x [..., hidden]; `gate_up_w` replaces the gate/up weight."""
        return self._lin("mlp.down_proj", self.mlp_act(x, hook, gate_up_w), hook)

    def mlp_act(self, x: torch.Tensor, hook=None, gate_up_w: torch.Tensor | None = None) -> torch.Tensor:
        """down_proj's input: SiLU(gate) * up [..., intermediate]."""
        gate, up = self._lin("mlp.gate_up_proj", x, hook, gate_up_w).chunk(2, dim=-1)
        return F.silu(gate) * up
