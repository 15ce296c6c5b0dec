"""GPTQ (Frantar et al., 2022) on the CPU: quantize W column by column in the order of the inverse
Hessian's Cholesky factor, spreading each column's rounding error onto the columns not yet quantized.

H = 2/n * sum x x^T over calibration inputs of the layer; damping adds `damp` * mean(diag H) to the
diagonal. Columns are processed in lazy blocks (error compensation inside a block, one matrix product for
the rest). act_order quantizes columns by decreasing diag(H) with *static groups*: each group's scale and
zero are fixed from the weights before GPTQ starts, so groups stay contiguous in the original order
(g_idx = k // group_size) and the result packs straight into MatMulNBits / a GPTQ checkpoint.
`mse=True` lets each group's range shrink where that lowers the diag(H)-weighted rounding error; it is off
by default because it did not help on the synthetic test layers (measured; see docs/quantize.md).
"""

from __future__ import annotations

import torch

from ..errors import QwenEdgeError
from ..pack import QWeight
from .rtn import grid, grid_mse, rtn_params, to_qweight


class Hessian:
    """Running 2/n * X^T X of a linear layer's inputs."""

    def __init__(self, k: int):
        self.H = torch.zeros(k, k, dtype=torch.float32)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float32)
        m = x.shape[0]
        self.H.mul_(self.n / (self.n + m))
        self.n += m
        x = x * (2.0 / self.n) ** 0.5
        self.H.addmm_(x.T, x)


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, bits: int, block_size: int, sym: bool,
                  damp: float = 0.01, act_order: bool = False, lazy_block: int = 128, mse: bool = False) -> QWeight:
    w = w.to(torch.float32).clone()
    n, k = w.shape
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    w[:, dead] = 0
    maxq = (1 << bits) - 1
    nb = -(-k // block_size)
    lazy_block = max(lazy_block, block_size) // block_size * block_size  # groups never straddle blocks

    static = act_order
    if static:  # per-group grid from the (unmodified) weights
        scale_all, zero_all = rtn_params(w, bits, block_size, sym)
        if mse:
            hd = torch.diag(H)
            for g in range(nb):
                sl = slice(g * block_size, (g + 1) * block_size)
                s, z = grid_mse(w[:, sl], bits, sym, hd[sl])
                scale_all[:, g], zero_all[:, g] = s[:, 0], z[:, 0]
        perm = torch.argsort(torch.diag(H), descending=True)
    else:
        scale_all = torch.zeros(n, nb)
        zero_all = torch.zeros(n, nb)
        perm = torch.arange(k)
    w, H = w[:, perm], H[perm][:, perm]
    group_of = perm // block_size  # original group of each processed column

    hdiag = torch.diag(H).clone()
    H[range(k), range(k)] += damp * torch.mean(torch.diag(H))
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except torch.linalg.LinAlgError:
        raise QwenEdgeError("GPTQ: the Hessian is not positive definite even with damping; raise --damp") from None

    codes = torch.zeros(n, k)
    for i1 in range(0, k, lazy_block):
        i2 = min(i1 + lazy_block, k)
        W1 = w[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        Hi = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = int(group_of[col])
            if not static and col % block_size == 0:  # grid from the error-updated weights of this group
                blk = W1[:, i:i + block_size]
                # the range may shrink where that lowers the H-diagonal-weighted rounding error
                s, z = (grid_mse(blk, bits, sym, hdiag[col:col + blk.shape[1]]) if mse else grid(blk, bits, sym))
                scale_all[:, g], zero_all[:, g] = s[:, 0], z[:, 0]
            s, z = scale_all[:, g], zero_all[:, g]
            x = W1[:, i]
            c = torch.clamp(torch.round(x / s) + z, 0, maxq)
            codes[:, col] = c
            err = (x - (c - z) * s) / Hi[i, i]
            W1[:, i + 1:].addr_(err, Hi[i, i + 1:], alpha=-1)  # in place: no [N, block] temporaries
            E1[:, i] = err
        w[:, i2:].addmm_(E1, Hinv[i1:i2, i2:], alpha=-1)

    inv = torch.argsort(perm)
    return to_qweight(codes[:, inv], scale_all, zero_all, bits, block_size, sym)
