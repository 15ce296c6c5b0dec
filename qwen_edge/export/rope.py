"""RoPE cos/sin tables for GroupQueryAttention's fused rotary (default and YaRN scaling).

Computed in float64 and rounded once, so the tables match transformers' float32 ones to the last bit
or close to it; the YaRN attention factor is folded into the tables as transformers does.
"""

from __future__ import annotations

import math

import numpy as np

from ..spec import ModelSpec


def inv_freq_and_scale(spec: ModelSpec) -> tuple[np.ndarray, float]:
    r, dim = spec.rope, spec.head_dim
    # Same float32 arithmetic as transformers, so positions far into the context agree.
    pos_freqs = np.float32(r.theta) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
    if r.type == "default":
        return (1.0 / pos_freqs).astype(np.float32), 1.0
    factor = r.factor
    scale = r.attention_factor if r.attention_factor is not None else (
        1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(r.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(r.theta))

    low, high = correction_dim(r.beta_fast), correction_dim(r.beta_slow)
    if r.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    extrapolation = 1 - ramp  # 1 where a dimension keeps its original frequency
    inv_extra = 1.0 / pos_freqs
    inv_inter = 1.0 / (np.float32(factor) * pos_freqs)
    inv = inv_inter * (1 - extrapolation) + inv_extra * extrapolation
    return inv.astype(np.float32), float(scale)


def cos_sin_cache(spec: ModelSpec, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Tables of shape [max_length, head_dim / 2], as GroupQueryAttention's cos_cache/sin_cache want."""
    inv, scale = inv_freq_and_scale(spec)
    freqs = np.arange(max_length, dtype=np.float32)[:, None] * inv[None, :]
    return (np.cos(freqs) * np.float32(scale)).astype(np.float32), (np.sin(freqs) * np.float32(scale)).astype(np.float32)
