"""Graph writers for quantized weights: MatMulNBits linears, a GatherBlockQuantized embedding and a
MatMulNBits LM head, plugged into the exporter's `linear` and `tokens` hooks.

accuracy_level 4 lets onnxruntime's CPU kernel quantize activations to int8 and use integer dot products
(the fast path); the weights themselves are exactly the stored codes.

A tied embedding is stored once when the embedding and the head use the same bits and block size: the
head's MatMulNBits B [V, n_blocks, blob] is also GatherBlockQuantized's data (3-D, quantize_axis 2, one
block per row of the last axis). Only the small per-block scales / zero points are reshaped for the gather.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from ..pack import NBits, QWeight, pack_nibbles, to_matmulnbits
from .graph import Graph

ACCURACY_LEVEL = 4


def matmul_nbits(g: Graph, x: str, name: str, p: NBits, accuracy_level: int = ACCURACY_LEVEL) -> str:
    inputs = [x, g.weight(f"{name}.qweight", p.B), g.weight(f"{name}.scales", p.scales.reshape(p.N, -1))]
    if p.zero_points is not None:
        inputs.append(g.weight(f"{name}.qzeros", p.zero_points))
    return g.op("MatMulNBits", inputs, f"{name}/MatMulNBits", domain="com.microsoft", K=p.K, N=p.N, bits=p.bits,
                block_size=p.block_size, accuracy_level=accuracy_level)


def nbits_linear(lookup: Callable[[str, np.ndarray], NBits], accuracy_level: int = ACCURACY_LEVEL):
    """A LinearFn emitting MatMulNBits; `lookup(name, fp32 weight)` gives the packed weight."""
    def linear(g: Graph, x: str, name: str, w: np.ndarray, b: np.ndarray | None) -> str:
        y = matmul_nbits(g, x, name, lookup(name, w), accuracy_level)
        if b is not None:
            y = g.op("Add", [y, g.weight(f"{name}.bias", b.astype(np.float32, copy=False))], f"{name}/Add")
        return y
    return linear


class TableFormat(NamedTuple):
    bits: int
    group_size: int


class QuantTokens:
    """The exporter's `tokens` hook: quantized embedding and/or LM head, each in its own format (anything
    with .bits and .group_size; None = float32). An embedding format with a `.residual` (recipe.HeadResidual)
    gathers the head's codes and adds a gathered residual; `head_weight` then gives the untied head."""

    def __init__(self, quantize: Callable[[np.ndarray, int, int], QWeight], embed: Any, head: Any,
                 accuracy_level: int = ACCURACY_LEVEL, head_weight: Callable[[], np.ndarray] | None = None):
        self.quantize, self.embed_fmt, self.head_fmt = quantize, embed, head
        self.accuracy_level = accuracy_level
        self.head_weight = head_weight
        self._embed: tuple[str, NBits] | None = None  # tied sharing: the stored embedding
        self._head: NBits | None = None  # head + residual: the head's codes, stored by embed()
        self._float_embed: str | None = None
        self.shared = False

    def embed(self, g: Graph, ids: str, w: np.ndarray) -> str:
        f = self.embed_fmt
        if f is None:
            self._float_embed = g.weight("model.embed_tokens.weight", w.astype(np.float32, copy=False))
            return g.op("Gather", [self._float_embed, ids], "embed/Gather")
        if getattr(f, "residual", None) is not None:
            if self.head_fmt is None or self.head_weight is None:
                raise ValueError("an embedding stored as the head plus a residual needs a quantized, untied head")
            head_q, res_q = split_residual(w, self.head_weight(), f, self.head_fmt, self.quantize)
            self._head = to_matmulnbits(head_q)
            base = self._gather(g, ids, "lm_head", self._head, "embed")
            extra = self._gather(g, ids, "model.embed_tokens.residual", to_matmulnbits(res_q), "embed_residual")
            return g.op("Add", [base, extra], "embed/AddResidual")
        p = to_matmulnbits(self.quantize(w, f.bits, f.group_size))
        self._embed = ("model.embed_tokens", p)
        return self._gather(g, ids, "model.embed_tokens", p, "embed")

    def _gather(self, g: Graph, ids: str, name: str, p: NBits, tag: str) -> str:
        """GatherBlockQuantized rows of the codes stored under `name` (stored here), as [.., hidden]."""
        data = g.weight(f"{name}.qweight", p.B)  # [V, n_blocks, blob]
        nb = p.B.shape[1]
        scales = g.weight(f"{name}.scales", p.scales.reshape(p.N, nb))
        shape3 = g.const([p.N, nb, 1], f"{tag}_scale_shape", np.int64)
        inputs = [data, ids, g.op("Reshape", [scales, shape3], f"{tag}/ScalesReshape")]
        if p.zero_points is not None:
            zq = p.zero_points if p.bits == 8 else _unpack_row_nibbles(p.zero_points, p.N, nb)
            zp = pack_nibbles(zq.reshape(p.N, nb, 1)) if p.bits == 4 else zq.reshape(p.N, nb, 1)
            inputs.append(g.weight(f"{name}.gather_zeros", zp))
        out = g.op("GatherBlockQuantized", inputs, f"{tag}/GatherBlockQuantized", domain="com.microsoft",
                   gather_axis=0, quantize_axis=2, block_size=p.block_size, bits=p.bits)
        hidden = g.op("Reshape", [out, g.const([0, 0, nb * p.block_size], f"{tag}_flat", np.int64)], f"{tag}/Flatten")
        if nb * p.block_size != p.K:
            hidden = g.op("Slice", [hidden, g.const([0], "zero1", np.int64), g.const([p.K], "hidden1", np.int64),
                                    g.const([2], "axis2", np.int64)], f"{tag}/Slice")
        return hidden

    def head(self, g: Graph, x: str, w: np.ndarray | None, embed_w: Callable[[], np.ndarray]) -> str:
        """LM head over flat hidden states x [rows, hidden]; w is None for a tied model."""
        f = self.head_fmt
        if f is None:
            if w is None and self._float_embed is not None:
                head = self._float_embed
            else:
                head = g.weight("lm_head.weight", (embed_w() if w is None else w).astype(np.float32, copy=False))
            return g.op("Gemm", [x, head], "lm_head/Gemm", transB=1)
        shared = None
        if self._head is not None:  # the embedding gathered these codes: the same stored tensors
            shared = ("lm_head", self._head)
        elif w is None and self._embed is not None and (f.bits, f.group_size) == (self.embed_fmt.bits, self.embed_fmt.group_size):
            shared = self._embed  # tied and same layout: reuse the stored codes and scales
        if shared is not None:
            name, p = shared
            self.shared = True
            inputs = [x, f"{name}.qweight", f"{name}.scales"]
            if p.zero_points is not None:
                inputs.append(g.weight(f"{name}.qzeros", p.zero_points))
            return g.op("MatMulNBits", inputs, "lm_head/MatMulNBits", domain="com.microsoft", K=p.K, N=p.N,
                        bits=p.bits, block_size=p.block_size, accuracy_level=self.accuracy_level)
        src = embed_w() if w is None else w
        p = to_matmulnbits(self.quantize(src, f.bits, f.group_size))
        return matmul_nbits(g, x, "lm_head", p, self.accuracy_level)


def split_residual(table: np.ndarray, head: np.ndarray, fmt: Any, head_fmt: Any,
                   quantize: Callable[[np.ndarray, int, int], QWeight]) -> tuple[QWeight, QWeight]:
    """(the head quantized, the embedding minus the dequantized head quantized): a head-plus-residual
    embedding. The residual is computed in the dequantized head's buffer: two fp32 tables at most, as
    footprint.writing counts."""
    head_q = quantize(np.asarray(head, np.float32), head_fmt.bits, head_fmt.group_size)
    res = head_q.dequantize()
    np.subtract(np.asarray(table, np.float32), res, out=res)
    return head_q, quantize(res, fmt.residual.bits, fmt.residual.group_size)


def residual_rows(table_rows: np.ndarray, head_rows: np.ndarray, fmt: Any, head_fmt: Any,
                  quantize: Callable[[np.ndarray, int, int], QWeight]) -> np.ndarray:
    """Embedding rows as a head-plus-residual graph computes them (each row is quantized on its own, so a
    subset of rows gives the same values as the whole table)."""
    head_q, res_q = split_residual(table_rows, head_rows, fmt, head_fmt, quantize)
    return head_q.dequantize() + res_q.dequantize()


def _unpack_row_nibbles(packed: np.ndarray, n: int, nb: int) -> np.ndarray:
    from ..pack import unpack_nibbles
    return unpack_nibbles(packed.reshape(n, -1), nb)


# --- imported GPTQ/AWQ checkpoints (read by sources/checkpoint.py) --------------------------------------
def checkpoint_linear(ckpt, accuracy_level: int = ACCURACY_LEVEL):
    """A LinearFn on a checkpoint's packed codes: MatMulNBits, behind an input Gather for act-order.

    Projections that share an input (q/k/v, gate/up) and a permutation, as auto-gptq's act-order gives them
    (same Hessian), stay one packed MatMulNBits; otherwise each gets its own and the outputs are concatenated.
    """
    from ..sources.checkpoint import concat_rows, split_name
    from ..spec import PACKED as PARTS

    def linear(g: Graph, x: str, name: str, _w: np.ndarray, b: np.ndarray | None) -> str:
        layer, kind = split_name(name)
        parts = [ckpt.qweight(f"{layer}.{p}") for p in PARTS[kind]]
        perms = [p for _, p in parts]
        if all(_same(perms[0], p) for p in perms[1:]):
            groups = [(name, [w for w, _ in parts], perms[0])]
        else:
            groups = [(f"{name}.{i}", [w], p) for i, (w, p) in enumerate(parts)]
        outs = []
        for nm, ws, perm in groups:
            xin = x if perm is None else g.op("Gather", [x, g.weight(f"{nm}.g_perm", perm.astype(np.int64))],
                                              f"{nm}/ActOrderGather", axis=-1)
            outs.append(matmul_nbits(g, xin, nm, to_matmulnbits(concat_rows(ws)), accuracy_level))
        y = outs[0] if len(outs) == 1 else g.op("Concat", outs, f"{name}/Concat", axis=-1)
        if b is not None:
            y = g.op("Add", [y, g.weight(f"{name}.bias", b.astype(np.float32, copy=False))], f"{name}/Add")
        return y
    return linear


def import_hooks(src) -> tuple[Callable, QuantTokens, dict]:
    """(linear hook, tokens hook, manifest info) for a GPTQ/AWQ source: its codes as they are, and the float
    embedding and head at int8 (RTN, block 128), as `qwen-edge quantize` stores them by default."""
    from ..pack import rtn
    ckpt = src.weights.ckpt
    info = ckpt.info()
    info.update(accuracy_level=ACCURACY_LEVEL, embedding={"bits": 8, "group_size": 128},
                lm_head={"bits": 8, "group_size": 128})
    tokens = QuantTokens(lambda w, b, g: rtn(w, b, g, sym=False), TableFormat(8, 128), TableFormat(8, 128))
    return checkpoint_linear(ckpt), tokens, info


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
