"""GPTQ / AWQ Hugging Face checkpoints as a source: their packed linears read as block-quantized weights.

`quantization_config` in config.json says which:
- gptq (auto-gptq / GPTQModel): bits 4 or 8, checkpoint_format "gptq" (zeros stored minus one) or
  "gptq_v2", with or without act-order. An act-order g_idx puts input channels into groups out of order:
  `qweight()` sorts the channels by group (so each block is one group) and returns the permutation the
  layer's input must be gathered with.
- awq (AutoAWQ, version "gemm"): 4-bit.
The exporter sees the float names through `weights()`; export/nbits.py turns the packed codes into
MatMulNBits without re-quantizing. Embeddings and the LM head are float in these checkpoints.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SourceError
from ..pack import AWQTensors, GPTQTensors, QWeight, from_awq, from_gptq
from ..spec import ModelSpec



def split_name(name: str) -> tuple[str, str]:
    """model.layers.3.self_attn.qkv_proj -> (model.layers.3, self_attn.qkv_proj)."""
    head, _, tail = name.partition(".self_attn.") if ".self_attn." in name else name.partition(".mlp.")
    return head, ("self_attn." if ".self_attn." in name else "mlp.") + tail


def concat_rows(parts: list[QWeight]) -> QWeight:
    first = parts[0]
    if any(p.block_size != first.block_size or p.bits != first.bits for p in parts):
        raise SourceError("checkpoint projections that share an input use different group sizes")
    zeros = None if all(p.zeros is None for p in parts) else np.concatenate([p.zero_codes() for p in parts])
    return QWeight(q=np.concatenate([p.q for p in parts]), scales=np.concatenate([p.scales for p in parts]),
                   zeros=zeros, bits=first.bits, block_size=first.block_size)


class QuantizedCheckpoint:
    """Reads a GPTQ/AWQ folder's packed linears; `weights` hides their float names from the exporter."""

    def __init__(self, weights: Any, qcfg: dict, spec: ModelSpec):
        self.raw, self.spec = weights, spec
        self.method = str(qcfg.get("quant_method", "")).lower()
        self.bits = int(qcfg.get("bits", qcfg.get("w_bit", 0)) or 0)
        self.group_size = int(qcfg.get("group_size", qcfg.get("q_group_size", 0)) or 0)
        self.sym = bool(qcfg.get("sym", False))
        if self.method == "gptq":
            if self.bits not in (4, 8):
                raise SourceError(f"GPTQ checkpoint with {self.bits}-bit weights is not supported: "
                                    "onnxruntime's MatMulNBits takes 4 or 8 bits")
            fmt = str(qcfg.get("checkpoint_format", "gptq")).lower()
            if fmt not in ("gptq", "gptq_v2"):
                raise SourceError(f"unsupported GPTQ checkpoint_format '{fmt}': gptq or gptq_v2")
            self.zero_offset = 1 if fmt == "gptq" else 0
        elif self.method == "awq":
            if self.bits != 4:
                raise SourceError(f"AWQ checkpoint with {self.bits}-bit weights is not supported: only 4-bit")
            version = str(qcfg.get("version", "gemm")).lower()
            if version != "gemm":
                raise SourceError(f"unsupported AWQ version '{version}': only the GEMM layout is supported")
            if qcfg.get("zero_point") is False:
                raise SourceError("AWQ checkpoints without zero points are not supported")
        else:
            raise SourceError(f"unsupported quant_method '{self.method}' in quantization_config: gptq or awq")
        if self.group_size <= 0:
            raise SourceError("per-channel (group_size -1) checkpoints are not supported: need a group size")

    def info(self) -> dict:
        return {"method": self.method, "bits": self.bits, "group_size": self.group_size, "sym": self.sym,
                "format": "MatMulNBits", "imported": True}

    def qweight(self, prefix: str) -> tuple[QWeight, np.ndarray | None]:
        """The projection's codes with groups contiguous, and the input permutation (None: identity)."""
        r = self.raw
        if self.method == "gptq":
            t = GPTQTensors(qweight=r.raw(f"{prefix}.qweight"), qzeros=r.raw(f"{prefix}.qzeros"),
                            scales=r.raw(f"{prefix}.scales"),
                            g_idx=(r.raw(f"{prefix}.g_idx") if f"{prefix}.g_idx" in r else
                                   np.arange(r.shape(f"{prefix}.qweight")[0] * 32 // self.bits) // self.group_size))
            w, perm = from_gptq(t, self.bits, self.zero_offset)
            if np.array_equal(perm, np.arange(len(perm))):
                perm = None
        else:
            perm = None
            w = from_awq(AWQTensors(qweight=r.raw(f"{prefix}.qweight"), qzeros=r.raw(f"{prefix}.qzeros"),
                                    scales=r.raw(f"{prefix}.scales")), self.group_size)
        if self.sym and w.zeros is not None and (w.zeros == 1 << (self.bits - 1)).all():
            w.zeros = None  # the implied zero point: MatMulNBits needs no zero-point tensor
        return w, perm

    def weights(self) -> "_Hidden":
        return _Hidden(self)


class _Hidden:
    """Weights view for the exporter: a quantized projection's `.weight` is an empty [out, 0] placeholder
    (the exporter only concatenates it and hands it to the linear hook, which reads the packed tensors)."""

    def __init__(self, ckpt: QuantizedCheckpoint):
        self.ckpt = ckpt

    def _packed(self, name: str) -> str | None:
        if name.endswith(".weight") and name[:-len(".weight")] + ".qweight" in self.ckpt.raw:
            return name[:-len(".weight")]
        return None

    def get(self, name: str) -> np.ndarray:
        p = self._packed(name)
        if p is None:
            return self.ckpt.raw.get(name)
        shape = self.ckpt.raw.shape(f"{p}.scales")  # [groups, out] in both formats
        return np.zeros((shape[1], 0), np.float32)

    def __contains__(self, name: str) -> bool:
        return self._packed(name) is not None or name in self.ckpt.raw

    def names(self) -> list[str]:
        """Float names: a projection's packed tensors (qweight, qzeros, scales, g_idx) stand for its .weight."""
        out = []
        for n in self.ckpt.raw.names():
            stem, _, leaf = n.rpartition(".")
            if leaf == "qweight":
                out.append(f"{stem}.weight")
            elif leaf not in ("qzeros", "scales", "g_idx"):
                out.append(n)
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        """[out, in] of a packed projection (from its qweight), else the stored shape."""
        p = self._packed(name)
        if p is None:
            return self.ckpt.raw.shape(name)
        rows, cols = self.ckpt.raw.shape(f"{p}.qweight")
        per = 32 // self.ckpt.bits
        return (cols, rows * per) if self.ckpt.method == "gptq" else (cols * per, rows)
