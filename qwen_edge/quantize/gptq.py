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


def damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H with dead inputs (never non-zero in calibration) set to 1 on the diagonal and `damp` times the mean
    diagonal added: the matrix GPTQ and the asymmetric target both invert."""
    H = H.clone()
    d = H.diagonal()
    d[d == 0] = 1
    d.add_(damp * d.mean())
    return H


def inverse_factor(Hd: torch.Tensor) -> torch.Tensor:
    """U, upper triangular, with U^T U = Hd^-1: the factor whose rows GPTQ's column updates read.

    One Cholesky of Hd in reversed order and one triangular inverse: if J Hd J = L L^T (J reverses the
    order) then Hd^-1 = (J L^-1 J)^T (J L^-1 J) with J L^-1 J upper. The usual route (factor Hd, invert it,
    factor the inverse) does twice the work: at 7B's down_proj (18944 inputs) that was a minute a layer.
    """
    from scipy.linalg.lapack import strtri  # LAPACK's triangular inverse; torch exposes none
    try:
        L = torch.linalg.cholesky(Hd.flip(0, 1))
    except torch.linalg.LinAlgError:
        raise QwenEdgeError("GPTQ: the Hessian is not positive definite even with damping; raise --damp") from None
    # L is row-major lower; the same memory read column-major is L^T (upper), inverted in place
    inv, info = strtri(L.numpy().T, lower=0, overwrite_c=1)
    if info != 0:
        raise QwenEdgeError("GPTQ: the Hessian is singular even with damping; raise --damp")
    return torch.from_numpy(inv.T).flip(0, 1)  # (L^T)^-1 read row-major is L^-1


def gptq_quantize(w: torch.Tensor, H: torch.Tensor, bits: int, block_size: int, sym: bool,
                  damp: float = 0.01, act_order: bool = False, lazy_block: int = 128, mse: bool = False,
                  hinv: torch.Tensor | None = None) -> QWeight:
    """`hinv`: inverse_factor(damped(H, damp)) when the caller already has it (ignored with act_order,
    whose Hessian is permuted)."""
    w = w.to(torch.float32).clone()
    n, k = w.shape
    dead = torch.diag(H) == 0
    w[:, dead] = 0
    hdiag = torch.diag(H).clone()
    hdiag[dead] = 1
    maxq = (1 << bits) - 1
    nb = -(-k // block_size)
    lazy_block = max(lazy_block, block_size) // block_size * block_size  # groups never straddle blocks

    static = act_order
    if static:  # per-group grid from the (unmodified) weights
        scale_all, zero_all = rtn_params(w, bits, block_size, sym)
        if mse:
            for g in range(nb):
                sl = slice(g * block_size, (g + 1) * block_size)
                s, z = grid_mse(w[:, sl], bits, sym, hdiag[sl])
                scale_all[:, g], zero_all[:, g] = s[:, 0], z[:, 0]
        perm = torch.argsort(hdiag, descending=True)
        # (without act_order the order is the identity: no copies of a Hessian that is 1.4 GB at 7B)
        w, hdiag = w[:, perm], hdiag[perm]
        Hinv = inverse_factor(damped(H[perm][:, perm], damp))
    else:
        scale_all = torch.zeros(n, nb)
        zero_all = torch.zeros(n, nb)
        perm = torch.arange(k)
        Hinv = hinv if hinv is not None else inverse_factor(damped(H, damp))
    group_of = perm // block_size  # original group of each processed column

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
    before = torch.empty(n)
    after = torch.empty(n)
    wh = w @ H
    chunk = max(8, min(chunk, (1 << 26) // (nb * nb)))  # the [rows, groups, groups] systems stay ~256 MB
    for r0 in range(0, n, chunk):
        rs = slice(r0, min(n, r0 + chunk))
        cr = c[rs]
        A0 = torch.empty(cr.shape[0], nb, nb)
        for b in range(nb):  # A[r, a, b] = sum_ij c[r, (a, i)] H[(a, i), (b, j)] c[r, (b, j)]
            # A is symmetric: only a >= b is computed (half the products; 7B's down_proj has 592 groups)
            t = cr[:, b * g:(b + 1) * g] @ H[b * g:(b + 1) * g, b * g:]
            t.mul_(cr[:, b * g:])
            col = t.reshape(-1, nb - b, g).sum(-1)
            A0[:, b:, b] = col
            A0[:, b, b:] = col
        rhs0 = (cr * wh[rs]).reshape(-1, nb, g).sum(-1)
        diag = A0.diagonal(dim1=1, dim2=2)
        empty = diag <= 0  # a group whose codes all sit on the zero point: nothing to fit, keep its scale
        A = A0 + torch.diag_embed(empty.float())
        rhs = torch.where(empty, torch.zeros_like(rhs0), rhs0)
        A = A + (1e-6 * diag.abs().mean(-1).clamp(min=1e-30))[:, None, None] * torch.eye(nb)
        # A is a Gram matrix (symmetric, positive semi-definite): Cholesky, which reports a failed row
        # instead of raising (a batched LU solve raises on one near-singular member)
        L, info = torch.linalg.cholesky_ex(A)
        sol = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1)
        ok = (info == 0)[:, None] & torch.isfinite(sol) & (sol > 0) & ~empty
        o = old[rs]
        nw = torch.where(ok, sol, o).to(torch.float16).to(torch.float32)
        new[rs] = nw = torch.where(nw > 0, nw, o)
        # each row's error (w - s.c) H (w - s.c) from the system itself: wHw - 2 s.rhs + s A s, no more
        # products with H (two [rows, k] x [k, k] products were most of the refit's time at 7B)
        whw = (w[rs] * wh[rs]).sum(-1)
        for s_, e in ((o, before), (nw, after)):
            e[rs] = whw - 2 * (s_ * rhs0).sum(-1) + torch.einsum("ra,rab,rb->r", s_, A0, s_)
    keep_new = after < before
    scales = torch.where(keep_new[:, None], new, old)
    out = QWeight(q=qw.q, scales=scales.numpy().copy(), zeros=qw.zeros, bits=qw.bits, block_size=qw.block_size)
    return out, before.sum().item(), torch.where(keep_new, after, before).sum().item()


def _dequant(qw: QWeight) -> torch.Tensor:
    return torch.from_numpy(qw.dequantize())


def _row_errors(w: torch.Tensor, wq: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    d = w - wq
    return ((d @ H) * d).sum(-1)
