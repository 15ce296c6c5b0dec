"""Block-quantized weights and the byte layouts that store them.

One in-memory form, `QWeight`, for a linear weight W [N out, K in] quantized in blocks of `block_size`
consecutive input channels: unpacked integer codes q [N, K] (0 .. 2^bits - 1), scales [N, n_blocks] and
zero points [N, n_blocks] (codes; None = symmetric, the implied zero point 2^(bits-1)).
W ~= (q - zero) * scale, block by block.

Layouts (each with pack and unpack, round-tripped in tests/test_quant_pack.py):
- onnxruntime MatMulNBits: B uint8 [N, n_blocks, block_size * bits / 8], K padded to whole blocks; 4-bit
  codes two per byte, the even element in the low nibble; scales [N * n_blocks]; zero points uint8,
  4-bit ones packed two per byte per row ([N * ceil(n_blocks / 2)]), 8-bit ones one per byte.
- onnxruntime GatherBlockQuantized (uint8 data, quantize_axis = last): data [N, K * bits / 8] with the
  same nibble order, scales [N, n_blocks], zero points [N, ceil(n_blocks * bits / 8)].
- GPTQ (auto-gptq / GPTQModel "gptq" checkpoint format): qweight int32 [K * bits / 32, N] packed along K,
  qzeros int32 [n_groups, N * bits / 32] holding zero - 1, scales fp16 [n_groups, N], g_idx int32 [K].
- AWQ GEMM (AutoAWQ): qweight int32 [K, N * bits / 32] packed along N in the order 0 2 4 6 1 3 5 7,
  qzeros the same way [n_groups, N / 8], scales fp16 [n_groups, N]; 4-bit only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import QwenEdgeError

BITS = (4, 8)
AWQ_ORDER = np.array([0, 2, 4, 6, 1, 3, 5, 7])


@dataclass
class QWeight:
    q: np.ndarray  # uint8 [N, K] codes
    scales: np.ndarray  # float32 [N, n_blocks]
    zeros: np.ndarray | None  # uint8 [N, n_blocks] codes, None = symmetric (2^(bits-1))
    bits: int
    block_size: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.q.shape

    @property
    def n_blocks(self) -> int:
        return -(-self.q.shape[1] // self.block_size)

    def zero_codes(self) -> np.ndarray:
        if self.zeros is not None:
            return self.zeros
        return np.full(self.scales.shape, 1 << (self.bits - 1), dtype=np.uint8)

    def dequantize(self) -> np.ndarray:
        """fp32 [N, K]: (q - zero) * scale per block."""
        n, k = self.q.shape
        s = np.repeat(self.scales, self.block_size, axis=1)[:, :k]
        z = np.repeat(self.zero_codes().astype(np.float32), self.block_size, axis=1)[:, :k]
        return ((self.q.astype(np.float32) - z) * s).astype(np.float32)


def rtn(w: np.ndarray, bits: int, block_size: int, sym: bool = False) -> QWeight:
    """Round-to-nearest block quantization of w [N, K] (numpy; quantize/rtn.py documents the grid).

    Asymmetric: per block [min(w, 0), max(w, 0)] onto 0 .. 2^bits - 1 with an integer zero point;
    symmetric: max|w| / (2^(bits-1) - 1) around 2^(bits-1). Scales are rounded to float16 precision.
    """
    check_bits(bits)
    check_block_size(block_size)
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    nb = -(-k // block_size)
    wp = w if nb * block_size == k else np.concatenate([w, np.repeat(w[:, -1:], nb * block_size - k, 1)], 1)
    wb = wp.reshape(n, nb, block_size)
    maxq = (1 << bits) - 1
    if sym:
        half = 1 << (bits - 1)
        scale = np.abs(wb).max(-1) / np.float32(half - 1)
    else:
        lo, hi = np.minimum(wb.min(-1), 0), np.maximum(wb.max(-1), 0)
        scale = (hi - lo) / np.float32(maxq)
    scale = np.where(scale > 0, scale, np.float32(1e-8)).astype(np.float16).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(6e-8)).astype(np.float32)  # fp16's smallest subnormal
    zero = (np.full(scale.shape, half, np.float32) if sym
            else np.clip(np.round(-lo / scale), 0, maxq).astype(np.float32))
    codes = np.clip(np.round(w / np.repeat(scale, block_size, 1)[:, :k]) + np.repeat(zero, block_size, 1)[:, :k],
                    0, maxq)
    return QWeight(q=codes.astype(np.uint8), scales=scale, zeros=None if sym else zero.astype(np.uint8), bits=bits,
                   block_size=block_size)


def check_bits(bits: int) -> None:
    if bits not in BITS:
        raise QwenEdgeError(f"unsupported bits {bits}: choose 4 or 8")


def check_block_size(block_size: int) -> None:
    if block_size < 16 or block_size & (block_size - 1):
        raise QwenEdgeError(f"unsupported group size {block_size}: use a power of two from 16 up (32, 64, 128)")


# --- nibbles ------------------------------------------------------------------------------------------
def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """uint8 codes [..., M] (0..15) -> [..., ceil(M/2)], even element in the low nibble."""
    codes = np.asarray(codes, dtype=np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros(codes.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, m: int) -> np.ndarray:
    out = np.empty(packed.shape[:-1] + (packed.shape[-1] * 2,), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :m]


def _pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    return pack_nibbles(codes) if bits == 4 else np.ascontiguousarray(codes, dtype=np.uint8)


def _unpack_codes(packed: np.ndarray, bits: int, m: int) -> np.ndarray:
    return unpack_nibbles(packed, m) if bits == 4 else packed[..., :m].copy()


# --- MatMulNBits --------------------------------------------------------------------------------------
@dataclass
class NBits:
    B: np.ndarray  # uint8 [N, n_blocks, blob]
    scales: np.ndarray  # float32 [N * n_blocks]
    zero_points: np.ndarray | None  # uint8, see module doc
    K: int
    N: int
    bits: int
    block_size: int


def to_matmulnbits(w: QWeight) -> NBits:
    n, k = w.q.shape
    nb, bs = w.n_blocks, w.block_size
    q = np.zeros((n, nb * bs), np.uint8)
    q[:, :k] = w.q
    if w.zeros is not None:  # pad with the zero point so padded columns dequantize to 0
        q[:, k:] = w.zeros[:, -1:]
    elif k < nb * bs:
        q[:, k:] = 1 << (w.bits - 1)
    B = _pack_codes(q.reshape(n, nb, bs), w.bits)
    zp = None
    if w.zeros is not None:
        zp = (pack_nibbles(w.zeros) if w.bits == 4 else w.zeros.astype(np.uint8)).reshape(-1)
    return NBits(B=np.ascontiguousarray(B), scales=np.ascontiguousarray(w.scales, np.float32).reshape(-1),
                 zero_points=zp, K=k, N=n, bits=w.bits, block_size=bs)


def from_matmulnbits(p: NBits) -> QWeight:
    n, nb = p.N, p.B.shape[1]
    q = _unpack_codes(p.B, p.bits, p.block_size).reshape(n, nb * p.block_size)[:, :p.K]
    zeros = None
    if p.zero_points is not None:
        zeros = (unpack_nibbles(p.zero_points.reshape(n, -1), nb) if p.bits == 4
                 else p.zero_points.reshape(n, nb).copy())
    return QWeight(q=np.ascontiguousarray(q), scales=p.scales.reshape(n, nb).astype(np.float32), zeros=zeros,
                   bits=p.bits, block_size=p.block_size)


# --- GatherBlockQuantized -----------------------------------------------------------------------------
@dataclass
class GatherQ:
    data: np.ndarray  # uint8 [N, K * bits / 8]
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray | None  # uint8 [N, ceil(n_blocks * bits / 8)]
    bits: int
    block_size: int


def to_gather(w: QWeight) -> GatherQ:
    zp = None
    if w.zeros is not None:
        zp = _pack_codes(w.zeros, w.bits)
    return GatherQ(data=_pack_codes(w.q, w.bits), scales=np.ascontiguousarray(w.scales, np.float32),
                   zero_points=zp, bits=w.bits, block_size=w.block_size)


def from_gather(g: GatherQ, k: int) -> QWeight:
    nb = g.scales.shape[1]
    zeros = None if g.zero_points is None else _unpack_codes(g.zero_points, g.bits, nb)
    return QWeight(q=_unpack_codes(g.data, g.bits, k), scales=g.scales.astype(np.float32), zeros=zeros,
                   bits=g.bits, block_size=g.block_size)


# --- GPTQ checkpoint layout ---------------------------------------------------------------------------
def _pack_int32(codes: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Pack uint codes along `axis` into int32 words, the first element in the lowest bits."""
    per = 32 // bits
    c = np.moveaxis(np.asarray(codes, dtype=np.uint32), axis, 0)
    if c.shape[0] % per:
        raise QwenEdgeError(f"cannot pack {c.shape[0]} values into 32-bit words of {per}")
    c = c.reshape(c.shape[0] // per, per, *c.shape[1:])
    word = np.zeros((c.shape[0],) + c.shape[2:], np.uint32)
    for i in range(per):
        word |= c[:, i] << np.uint32(bits * i)
    return np.moveaxis(word.view(np.int32), 0, axis)


def _unpack_int32(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    per, mask = 32 // bits, np.uint32((1 << bits) - 1)
    w = np.moveaxis(np.asarray(words).view(np.uint32), axis, 0)
    out = np.stack([(w >> np.uint32(bits * i)) & mask for i in range(per)], axis=1)
    out = out.reshape((w.shape[0] * per,) + w.shape[1:]).astype(np.uint8)
    return np.moveaxis(out, 0, axis)


@dataclass
class GPTQTensors:
    qweight: np.ndarray  # int32 [K * bits / 32, N]
    qzeros: np.ndarray  # int32 [n_groups, N * bits / 32]
    scales: np.ndarray  # float16 [n_groups, N]
    g_idx: np.ndarray  # int32 [K]


def to_gptq(w: QWeight, zero_offset: int = 1) -> GPTQTensors:
    """Our weight in the GPTQ layout (contiguous groups: g_idx = k // group_size).

    The format stores zero points minus one (the original auto-gptq convention, "gptq" checkpoint format).
    Scales are float16 in the format: callers that need a bit-exact round trip quantize with fp16 scales.
    """
    n, k = w.q.shape
    if k % w.block_size:
        raise QwenEdgeError(f"GPTQ checkpoints need in_features ({k}) divisible by the group size {w.block_size}")
    z = w.zero_codes().astype(np.int64) - zero_offset
    if (z < 0).any():
        raise QwenEdgeError("a zero point of 0 cannot be stored in the 'gptq' format (it stores zero - 1); "
                            "use checkpoint_format gptq_v2")
    return GPTQTensors(qweight=_pack_int32(w.q.T, w.bits, 0), qzeros=_pack_int32(z.T.astype(np.uint32), w.bits, 1),
                       scales=w.scales.T.astype(np.float16), g_idx=(np.arange(k) // w.block_size).astype(np.int32))


def from_gptq(t: GPTQTensors, bits: int, sym_zero_offset: int = 1) -> tuple[QWeight, np.ndarray]:
    """GPTQ tensors -> (QWeight with blocks in g_idx order, permutation).

    With contiguous g_idx the permutation is the identity. With act-order (g_idx not sorted), input
    channels are reordered so each group is contiguous: W[:, perm] is what the returned QWeight holds, and
    the layer's input must be gathered with the same `perm`.
    """
    q = _unpack_int32(t.qweight, bits, 0).T  # [N, K]
    n, k = q.shape
    g_idx = np.asarray(t.g_idx, dtype=np.int64)
    n_groups = t.scales.shape[0]
    zeros = (_unpack_int32(t.qzeros, bits, 1)[:, :n].astype(np.int64) + sym_zero_offset) & ((1 << bits) - 1)
    perm = np.argsort(g_idx, kind="stable")
    counts = np.bincount(g_idx, minlength=n_groups)
    gs = int(counts[0])
    if (counts[:-1] != gs).any() or counts[-1] > gs or len(counts) != n_groups:
        raise QwenEdgeError("GPTQ g_idx assigns unequal group sizes; cannot convert to block quantization")
    return QWeight(q=np.ascontiguousarray(q[:, perm]), scales=t.scales.T.astype(np.float32),
                   zeros=np.ascontiguousarray(zeros.T.astype(np.uint8)), bits=bits, block_size=gs), perm


# --- AWQ GEMM layout ----------------------------------------------------------------------------------
@dataclass
class AWQTensors:
    qweight: np.ndarray  # int32 [K, N / 8]
    qzeros: np.ndarray  # int32 [n_groups, N / 8]
    scales: np.ndarray  # float16 [n_groups, N]


def _awq_pack(codes: np.ndarray) -> np.ndarray:
    """[R, N] 4-bit codes -> int32 [R, N / 8] with AutoAWQ's interleaved order."""
    r, n = codes.shape
    if n % 8:
        raise QwenEdgeError(f"AWQ packing needs out_features ({n}) divisible by 8")
    c = codes.reshape(r, n // 8, 8)[:, :, AWQ_ORDER]
    return _pack_int32(c.reshape(r, n), 4, 1)


def _awq_unpack(words: np.ndarray) -> np.ndarray:
    c = _unpack_int32(words, 4, 1)
    r, n = c.shape
    inv = np.argsort(AWQ_ORDER)
    return c.reshape(r, n // 8, 8)[:, :, inv].reshape(r, n)


def to_awq(w: QWeight) -> AWQTensors:
    if w.bits != 4:
        raise QwenEdgeError("the AWQ GEMM format stores 4-bit weights only")
    return AWQTensors(qweight=_awq_pack(w.q.T), qzeros=_awq_pack(w.zero_codes().T),
                      scales=w.scales.T.astype(np.float16))


def from_awq(t: AWQTensors, group_size: int) -> QWeight:
    q = _awq_unpack(t.qweight).T
    return QWeight(q=np.ascontiguousarray(q), scales=t.scales.T.astype(np.float32),
                   zeros=np.ascontiguousarray(_awq_unpack(t.qzeros).T), bits=4, block_size=group_size)
