"""AWQ (Lin et al., 2023) on the CPU: activation-aware per-input-channel scales and weight clipping.

Scale search: for the linears that read one input x (channels c), s_c = mean|x_c|^a, normalised, for a grid
of a in [0, 1); W * s is quantized and x / s fed to it, and the a with the least error in the output of
the block around them wins (the attention block for q/k/v, the MLP for gate/up, down_proj for itself). The
1/s is folded into the operation that produced x (an RMSNorm weight, or the up_proj rows before
down_proj), so the graph is unchanged apart from the weights. Clipping search: per output row and group,
the range shrinks by 0..50% in 20 steps, keeping the one with the least output error on sample tokens.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..pack import QWeight
from .rtn import codes_from_params, fake_quant, grid, rtn_params, to_qweight


def _blocks(w: torch.Tensor, bs: int) -> torch.Tensor:
    n, k = w.shape
    pad = (-k) % bs
    if pad:
        w = torch.cat([w, w[:, -1:].expand(n, pad)], dim=1)
    return w.reshape(n, -1, bs)


def fake_quant_weight(w: torch.Tensor, bits: int, bs: int, sym: bool) -> torch.Tensor:
    n, k = w.shape
    wb = _blocks(w, bs)
    s, z = grid(wb, bits, sym)
    return fake_quant(wb, s, z, bits).reshape(n, -1)[:, :k]


def balance(x: torch.Tensor) -> torch.Tensor:
    """Token rows scaled to unit RMS, so every token weighs the same in a linear's output error.

    Qwen's attention-sink tokens (position 0, some delimiters) carry hidden states ~100x the others from
    the third layer on; unbalanced, their 10^4x squared errors decide every search.
    """
    x = x.reshape(-1, x.shape[-1]).to(torch.float32)
    return x / x.pow(2).mean(-1, keepdim=True).sqrt().clamp(min=1e-6)


def token_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Mean over tokens of the squared error relative to the token's reference: y, ref [..., d]."""
    return ((y - ref).pow(2).sum(-1) / ref.pow(2).sum(-1).clamp(min=1e-12)).mean().item()


@torch.no_grad()
def search_scale(x: torch.Tensor, ws: list[torch.Tensor], bits: int, bs: int, sym: bool, n_grid: int = 20,
                 loss: Callable[[torch.Tensor], float] | None = None) -> torch.Tensor:
    """Best per-channel scale s [K] for linears ws (each [N_i, K]) reading x [T, K].

    `loss(w_eff)` scores a candidate by what it does downstream (w_eff: the concatenated weights as the
    quantized, scaled layer computes them); by default the linears' own output error on x. a = 0 (s = 1,
    plain round-to-nearest) is one of the candidates, so the search never does worse than RTN on the loss.
    """
    x = balance(x)
    x_mean = x.abs().mean(0).clamp(min=1e-5)
    w = torch.cat(ws)
    if loss is None:
        ref = x @ w.T
        loss = lambda q: (x @ q.T - ref).pow(2).mean().item()  # x is balanced: each token weighs the same
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for j in range(n_grid):
        s = x_mean.pow(j / n_grid)
        s = s / (s.max() * s.min()).sqrt()
        err = loss(fake_quant_weight(w * s, bits, bs, sym) / s)
        if err < best:
            best, best_s = err, s
    return best_s


@torch.no_grad()
def search_clip(x: torch.Tensor, w: torch.Tensor, bits: int, bs: int, sym: bool, n_grid: int = 20,
                max_shrink: float = 0.5, rows_per_step: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, group) clipped grid: scale, zero [N, n_blocks] that minimise the group's output error."""
    n, k = w.shape
    xb = _blocks(balance(x), bs)  # [T, G, bs]  (padding columns repeat a real one; their weights repeat too)
    wb = _blocks(w, bs)  # [N, G, bs]
    pad = (-k) % bs
    if pad:  # padded copies must not count twice
        xb[:, -1, bs - pad:] = 0
    scale_out = torch.empty(n, wb.shape[1])
    zero_out = torch.empty(n, wb.shape[1])
    for r0 in range(0, n, rows_per_step):
        wr = wb[r0:r0 + rows_per_step]  # [R, G, bs]
        ref = torch.einsum("tgb,rgb->trg", xb, wr)
        best = torch.full(wr.shape[:2], float("inf"))
        bs_s, bs_z = torch.empty(wr.shape[:2]), torch.empty(wr.shape[:2])
        hi0, lo0 = wr.amax(-1, keepdim=True), wr.amin(-1, keepdim=True)
        for j in range(n_grid):
            r = 1 - max_shrink * j / n_grid
            if sym:
                m = torch.maximum(hi0.abs(), lo0.abs()) * r
                s, z = grid(torch.cat([m, -m], -1), bits, sym)
            else:
                s, z = grid(torch.cat([hi0 * r, lo0 * r], -1), bits, sym)
            q = fake_quant(wr, s, z, bits)
            err = (torch.einsum("tgb,rgb->trg", xb, q) - ref).pow(2).mean(0)  # [R, G]
            better = err < best
            best = torch.where(better, err, best)
            bs_s = torch.where(better, s[..., 0], bs_s)
            bs_z = torch.where(better, z[..., 0], bs_z)
        scale_out[r0:r0 + rows_per_step], zero_out[r0:r0 + rows_per_step] = bs_s, bs_z
    return scale_out, zero_out


def awq_quantize(w: torch.Tensor, x: torch.Tensor | None, bits: int, bs: int, sym: bool,
                 clip: bool = True) -> QWeight:
    """Quantize an (already scaled) weight; with x, the clipping search picks each group's range."""
    if clip and x is not None:
        s, z = search_clip(x, w, bits, bs, sym)
    else:
        s, z = rtn_params(w, bits, bs, sym)
    return to_qweight(codes_from_params(w, s, z, bits, bs), s, z, bits, bs, sym)
