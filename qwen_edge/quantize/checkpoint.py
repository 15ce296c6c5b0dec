"""GPTQ / AWQ Hugging Face checkpoints: import (export straight to MatMulNBits, no re-quantizing) and
export of our own result in the GPTQ layout (`--save-checkpoint`).

Import reads `quantization_config` from config.json:
- gptq (auto-gptq / GPTQModel): bits 4 or 8, checkpoint_format "gptq" (zeros stored minus one) or
  "gptq_v2", with or without act-order. An act-order g_idx puts input channels into groups out of order:
  the channels are sorted by group (so each MatMulNBits block is one group) and the layer's input is
  gathered with the same permutation (one small Gather per projection). Projections that share an input
  (q/k/v, gate/up) and a permutation, as auto-gptq's act-order gives them (same Hessian), stay one packed
  MatMulNBits; otherwise each gets its own, and the outputs are concatenated.
- awq (AutoAWQ, version "gemm"): 4-bit.
Embeddings and the LM head are float in these checkpoints; they are quantized like `qwen-edge quantize`
does by default (int8 RTN, block 128).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QwenEdgeError
from ..spec import ModelSpec
from .pack import (AWQTensors, GPTQTensors, NBits, QWeight, from_awq, from_gptq, from_matmulnbits, to_gptq,
                   to_matmulnbits)

# exporter name suffix -> the HF projections packed into it
PARTS = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "self_attn.o_proj": ("self_attn.o_proj",),
         "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "mlp.down_proj": ("mlp.down_proj",)}


def _split_name(name: str) -> tuple[str, str]:
    """model.layers.3.self_attn.qkv_proj -> (model.layers.3, self_attn.qkv_proj)."""
    head, _, tail = name.partition(".self_attn.") if ".self_attn." in name else name.partition(".mlp.")
    return head, ("self_attn." if ".self_attn." in name else "mlp.") + tail


def _concat_rows(parts: list[QWeight]) -> QWeight:
    first = parts[0]
    if any(p.block_size != first.block_size or p.bits != first.bits for p in parts):
        raise QwenEdgeError("checkpoint projections that share an input use different group sizes")
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
                raise QwenEdgeError(f"GPTQ checkpoint with {self.bits}-bit weights is not supported: "
                                    "onnxruntime's MatMulNBits takes 4 or 8 bits")
            fmt = str(qcfg.get("checkpoint_format", "gptq")).lower()
            if fmt not in ("gptq", "gptq_v2"):
                raise QwenEdgeError(f"unsupported GPTQ checkpoint_format '{fmt}': gptq or gptq_v2")
            self.zero_offset = 1 if fmt == "gptq" else 0
        elif self.method == "awq":
            if self.bits != 4:
                raise QwenEdgeError(f"AWQ checkpoint with {self.bits}-bit weights is not supported: only 4-bit")
            version = str(qcfg.get("version", "gemm")).lower()
            if version != "gemm":
                raise QwenEdgeError(f"unsupported AWQ version '{version}': only the GEMM layout is supported")
            if qcfg.get("zero_point") is False:
                raise QwenEdgeError("AWQ checkpoints without zero points are not supported")
        else:
            raise QwenEdgeError(f"unsupported quant_method '{self.method}' in quantization_config: gptq or awq")
        if self.group_size <= 0:
            raise QwenEdgeError("per-channel (group_size -1) checkpoints are not supported: need a group size")

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

    def linear(self, accuracy_level: int):
        """The exporter's linear hook: MatMulNBits on the packed codes (behind a Gather for act-order)."""
        from .ops import matmul_nbits

        def linear(g, x: str, name: str, _w: np.ndarray, b: np.ndarray | None) -> str:
            layer, kind = _split_name(name)
            parts = [self.qweight(f"{layer}.{p}") for p in PARTS[kind]]
            perms = [p for _, p in parts]
            if all(_same(perms[0], p) for p in perms[1:]):
                groups = [(name, [w for w, _ in parts], perms[0])]
            else:
                groups = [(f"{name}.{i}", [w], p) for i, (w, p) in enumerate(parts)]
            outs = []
            for nm, ws, perm in groups:
                xin = x if perm is None else g.op("Gather", [x, g.weight(f"{nm}.g_perm", perm.astype(np.int64))],
                                                  f"{nm}/ActOrderGather", axis=-1)
                outs.append(matmul_nbits(g, xin, nm, to_matmulnbits(_concat_rows(ws)), accuracy_level))
            y = outs[0] if len(outs) == 1 else g.op("Concat", outs, f"{name}/Concat", axis=-1)
            if b is not None:
                y = g.op("Add", [y, g.weight(f"{name}.bias", b.astype(np.float32, copy=False))], f"{name}/Add")
            return y
        return linear

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


# --- export of our result -----------------------------------------------------------------------------
def hf_config(spec: ModelSpec, qcfg: dict) -> dict:
    r = spec.rope
    cfg = {"architectures": ["Qwen2ForCausalLM" if spec.model_type == "qwen2" else "Qwen3ForCausalLM"],
           "model_type": spec.model_type, "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size,
           "intermediate_size": spec.intermediate_size, "num_hidden_layers": spec.num_layers,
           "num_attention_heads": spec.num_heads, "num_key_value_heads": spec.num_kv_heads,
           "head_dim": spec.head_dim, "rms_norm_eps": spec.rms_norm_eps,
           "max_position_embeddings": spec.max_position_embeddings, "rope_theta": r.theta,
           "tie_word_embeddings": spec.tie_word_embeddings, "hidden_act": "silu", "torch_dtype": "float16",
           "use_sliding_window": False, "quantization_config": qcfg}
    if r.type == "yarn":
        cfg["rope_scaling"] = {"type": "yarn", "factor": r.factor,
                               "original_max_position_embeddings": r.original_max_position_embeddings}
    if spec.model_type == "qwen3":
        cfg["attention_bias"] = spec.qkv_bias
    return cfg


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}
    header, offset = {}, 0
    for name, a in tensors.items():
        header[name] = {"dtype": codes[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * ((-len(head)) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).tobytes())


def save_gptq_checkpoint(src, linears: dict[str, NBits], out: Path, info: dict, force: bool = False) -> None:
    """Write a GPTQ-format HF folder (checkpoint_format "gptq") holding exactly our int codes and scales."""
    from ..export.writer import staged_folder
    from ..sources import dumps
    spec = src.spec
    # "gptq" stores zero - 1 (what auto-gptq and transformers read); a zero point of 0 needs "gptq_v2"
    v1 = all(lin.zero_points is None or _min_zero(lin) >= 1 for lin in linears.values())
    offset = 1 if v1 else 0
    qcfg = {"quant_method": "gptq", "bits": info["bits"], "group_size": info["group_size"],
            "sym": info["sym"], "desc_act": False, "static_groups": bool(info.get("act_order")),
            "checkpoint_format": "gptq" if v1 else "gptq_v2", "true_sequential": False,
            "damp_percent": info.get("damp", 0.01), "meta": {"quantizer": ["qwen-edge"],
                                                             "method": info["method"]}}
    with staged_folder(out, force) as tmp:
        t: dict[str, np.ndarray] = {}
        t["model.embed_tokens.weight"] = src.weights.get("model.embed_tokens.weight").astype(np.float16)
        for i in range(spec.num_layers):
            p = f"model.layers.{i}"
            for n in ("input_layernorm", "post_attention_layernorm"):
                t[f"{p}.{n}.weight"] = src.weights.get(f"{p}.{n}.weight").astype(np.float16)
            if spec.qk_norm:
                for n in ("q_norm", "k_norm"):
                    t[f"{p}.self_attn.{n}.weight"] = src.weights.get(f"{p}.self_attn.{n}.weight").astype(np.float16)
            for kind, parts in PARTS.items():
                w = from_matmulnbits(linears[f"{p}.{kind}"])
                start = 0
                for part in parts:
                    rows = src.weights.get(f"{p}.{part}.weight").shape[0] if len(parts) > 1 else w.q.shape[0]
                    sub = QWeight(q=w.q[start:start + rows], scales=w.scales[start:start + rows],
                                  zeros=None if w.zeros is None else w.zeros[start:start + rows],
                                  bits=w.bits, block_size=w.block_size)
                    start += rows
                    g = to_gptq(sub, offset)
                    for k in ("qweight", "qzeros", "scales", "g_idx"):
                        t[f"{p}.{part}.{k}"] = getattr(g, k)
                    if f"{p}.{part}.bias" in src.weights:
                        t[f"{p}.{part}.bias"] = src.weights.get(f"{p}.{part}.bias").astype(np.float16)
        t["model.norm.weight"] = src.weights.get("model.norm.weight").astype(np.float16)
        if not spec.tie_word_embeddings:
            t["lm_head.weight"] = src.weights.get("lm_head.weight").astype(np.float16)
        write_safetensors(tmp / "model.safetensors", t)
        (tmp / "config.json").write_text(dumps(hf_config(spec, qcfg)))
        (tmp / "quantize_config.json").write_text(dumps(qcfg))
        (tmp / "generation_config.json").write_text(dumps(src.generation_config))
        src.write_tokenizer(tmp)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def _min_zero(p: NBits) -> int:
    return int(from_matmulnbits(p).zeros.min())


def import_hooks(src) -> tuple[Any, Any, Any, dict]:
    """(source with the float view, linear hook, tokens hook, manifest info) for a GPTQ/AWQ folder."""
    import dataclasses

    from .ops import ACCURACY_LEVEL, QuantTokens
    from .rtn import rtn_quantize
    ckpt = QuantizedCheckpoint(src.weights, src.quantization, src.spec)
    info = ckpt.info()
    info.update(accuracy_level=ACCURACY_LEVEL, embedding={"bits": 8, "group_size": 128},
                lm_head={"bits": 8, "group_size": 128})
    tokens = QuantTokens(lambda w, b, g: rtn_quantize(w, b, g, sym=False), 8, 8, 128)
    return dataclasses.replace(src, weights=ckpt.weights()), ckpt.linear(ACCURACY_LEVEL), tokens, info
