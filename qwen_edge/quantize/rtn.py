"""Round-to-nearest block quantization: the baseline, and the grid GPTQ and AWQ quantize onto.

Asymmetric: per block, the range [min(w, 0), max(w, 0)] maps onto codes 0 .. 2^bits - 1 with an integer
zero point. Symmetric: scale = max|w| / (2^(bits-1) - 1) around the fixed zero 2^(bits-1).
Scales are rounded to float16 precision, so a GPTQ/AWQ checkpoint (fp16 scales) stores them exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from ..pack import QWeight, rtn


def grid(w: torch.Tensor, bits: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero (float codes) per row of w [..., M] (one block per row): shapes [..., 1]."""
    maxq = (1 << bits) - 1
    if sym:
        amax = w.abs().amax(dim=-1, keepdim=True)
        half = 1 << (bits - 1)
        scale = amax / (half - 1)
        zero = torch.full_like(scale, float(half))
    else:
        lo = w.amin(dim=-1, keepdim=True).clamp(max=0)
        hi = w.amax(dim=-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / maxq
        zero = None
    scale = torch.where(scale > 0, scale, torch.ones_like(scale) * 1e-8)
    scale = scale.to(torch.float16).to(torch.float32)  # representable in the checkpoint formats
    scale = torch.where(scale > 0, scale, torch.full_like(scale, 6e-8))  # fp16 smallest subnormal
    if zero is None:
        zero = torch.clamp(torch.round(-lo / scale), 0, maxq)
    return scale, zero


def grid_mse(w: torch.Tensor, bits: int, sym: bool, weight: torch.Tensor | None = None, n_grid: int = 20,
             max_shrink: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Like `grid`, but the range of each row shrinks by up to `max_shrink` where that lowers the
    (optionally per-column weighted) squared rounding error; w [R, M] -> scale, zero [R, 1]."""
    best_s, best_z = grid(w, bits, sym)
    best = _werr(w, best_s, best_z, bits, weight)
    for j in range(1, n_grid + 1):
        r = 1 - max_shrink * j / n_grid
        lo = w.amin(-1, keepdim=True).clamp(max=0) * r
        hi = w.amax(-1, keepdim=True).clamp(min=0) * r
        s, z = grid(torch.cat([lo, hi], -1), bits, sym)
        e = _werr(w, s, z, bits, weight)
        better = e < best
        best = torch.where(better, e, best)
        best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def _werr(w, s, z, bits, weight):
    d = (fake_quant(w, s, z, bits) - w).pow(2)
    return (d if weight is None else d * weight).sum(-1, keepdim=True)


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1)


def fake_quant(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    return (quantize_codes(w, scale, zero, bits) - zero) * scale


def _blocks(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, int]:
    n, k = w.shape
    nb = -(-k // block_size)
    if nb * block_size != k:  # pad the last block by repeating its last column (no effect on min/max)
        w = torch.cat([w, w[:, -1:].expand(n, nb * block_size - k)], dim=1)
    return w.reshape(n, nb, block_size), nb


def rtn_params(w: torch.Tensor, bits: int, block_size: int, sym: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero [N, n_blocks] for w [N, K]."""
    wb, _ = _blocks(w, block_size)
    s, z = grid(wb, bits, sym)
    return s[..., 0], z[..., 0]


def codes_from_params(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                      block_size: int) -> torch.Tensor:
    k = w.shape[1]
    s = scale.repeat_interleave(block_size, dim=1)[:, :k]
    z = zero.repeat_interleave(block_size, dim=1)[:, :k]
    return quantize_codes(w, s, z, bits)


def to_qweight(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, block_size: int,
               sym: bool) -> QWeight:
    return QWeight(q=q.to(torch.uint8).numpy(), scales=scale.to(torch.float32).numpy().copy(),
                   zeros=None if sym else zero.to(torch.uint8).numpy(), bits=bits, block_size=block_size)


def rtn_quantize(w: np.ndarray | torch.Tensor, bits: int, block_size: int, sym: bool = False) -> QWeight:
    """The same grid as `rtn_params` / `codes_from_params`, in numpy (qwen_edge.pack.rtn)."""
    return rtn(np.asarray(w, dtype=np.float32), bits, block_size, sym)
