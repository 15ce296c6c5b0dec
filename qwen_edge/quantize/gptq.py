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

import numpy as np
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
    if static:  # (without act_order the order is the identity: no copies of a Hessian that is 1.4 GB at 7B)
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

    if static:
        codes = codes[:, torch.argsort(perm)]
    return to_qweight(codes, scale_all, zero_all, bits, block_size, sym)


@torch.no_grad()
def refit_scales(w: torch.Tensor, qw: QWeight, H: torch.Tensor, chunk: int = 2048) -> tuple[QWeight, float, float]:
    """Refit every group's scale with the codes fixed, to minimise the layer-output error.

    The error of a row r is (w_r - s_r . c_r)^T H (w_r - s_r . c_r), with c the codes minus the zero point
    and s one scale per group: a least-squares problem in the row's group scales, solved jointly (the
    [groups x groups] normal equations, all rows batched). Under GPTQ the codes already absorb the error
    feedback; the refit then finds the scales that best fit them, importance-weighted by the full input
    Hessian (llama.cpp's imatrix search weighs by its diagonal; NNCF's scale estimation iterates the same
    fit). A row keeps its old scales unless the new ones are positive and lower its error, so the total
    error never rises. Scales are rounded to float16 precision, as everywhere. Returns (weight, error
    before, error after), both sum over rows of the H-weighted squared error.
    """
    w = w.to(torch.float32)
    n, k = w.shape
    g = qw.block_size
    nb = qw.n_blocks
    if nb * g != k:  # a partial last block: leave it (only the tables have such shapes here)
        e = _row_errors(w, _dequant(qw), H).sum().item()
        return qw, e, e
    c = torch.from_numpy(qw.q.astype(np.float32)) - torch.from_numpy(
        np.repeat(qw.zero_codes().astype(np.float32), g, axis=1))
    old = torch.from_numpy(qw.scales.astype(np.float32))
    new = old.clone()
    wh = w @ H
    chunk = max(8, min(chunk, (1 << 26) // (nb * nb)))  # the [rows, groups, groups] systems stay ~256 MB
    for r0 in range(0, n, chunk):
        rs = slice(r0, min(n, r0 + chunk))
        cr = c[rs]
        A = torch.empty(cr.shape[0], nb, nb)
        for b in range(nb):  # A[r, a, b] = sum_ij c[r, (a, i)] H[(a, i), (b, j)] c[r, (b, j)]
            t = cr[:, b * g:(b + 1) * g] @ H[b * g:(b + 1) * g, :]
            A[:, :, b] = (cr * t).reshape(-1, nb, g).sum(-1)
        rhs = (cr * wh[rs]).reshape(-1, nb, g).sum(-1)
        diag = A.diagonal(dim1=1, dim2=2)
        empty = diag <= 0  # a group whose codes all sit on the zero point: nothing to fit, keep its scale
        A = A + torch.diag_embed(empty.float())
        rhs = torch.where(empty, torch.zeros_like(rhs), rhs)
        A = A + (1e-6 * diag.abs().mean(-1).clamp(min=1e-30))[:, None, None] * torch.eye(nb)
        # A is a Gram matrix (symmetric, positive semi-definite): Cholesky, which reports a failed row
        # instead of raising (a batched LU solve raises on one near-singular member)
        L, info = torch.linalg.cholesky_ex(A)
        sol = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
        ok = (info == 0)[:, None] & torch.isfinite(sol) & (sol > 0) & ~empty
        new[rs] = torch.where(ok, sol, old[rs])
    new = new.to(torch.float16).to(torch.float32)
    new = torch.where(new > 0, new, old)
    before = _row_errors(w, c * old.repeat_interleave(g, 1), H)
    after = _row_errors(w, c * new.repeat_interleave(g, 1), H)
    keep_new = after < before
    scales = torch.where(keep_new[:, None], new, old)
    out = QWeight(q=qw.q, scales=scales.numpy().copy(), zeros=qw.zeros, bits=qw.bits, block_size=qw.block_size)
    return out, before.sum().item(), torch.where(keep_new, after, before).sum().item()


def _dequant(qw: QWeight) -> torch.Tensor:
    return torch.from_numpy(qw.dequantize())


def _row_errors(w: torch.Tensor, wq: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    d = w - wq
    return ((d @ H) * d).sum(-1)
