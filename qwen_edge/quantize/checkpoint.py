"""Our result as a GPTQ-format Hugging Face checkpoint (`--save-checkpoint`): exactly our int codes and scales,
in the layout auto-gptq / GPTQModel / transformers read. (Reading such checkpoints is sources/checkpoint.py.)
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterable

import numpy as np

from ..pack import NBits, QWeight, from_matmulnbits, to_gptq
from ..spec import PACKED as PARTS
from ..spec import ModelSpec


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


def is_our_checkpoint(folder: Path) -> bool:
    """A checkpoint folder this tool wrote (what --force may replace): its config names qwen-edge."""
    try:
        cfg = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        return "qwen-edge" in cfg["quantization_config"]["meta"]["quantizer"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def save_gptq_checkpoint(src, linears: dict[str, NBits], out: Path, info: dict, force: bool = False,
                         sources: Iterable[Path] = ()) -> None:
    """Write a GPTQ-format HF folder (checkpoint_format "gptq") holding exactly our int codes and scales."""
    from ..outputs import Staged
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
    with Staged(out, force=force, is_ours=is_our_checkpoint, sources=sources, what="checkpoint output") as tmp:
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


def _min_zero(p: NBits) -> int:
    return int(from_matmulnbits(p).zeros.min())
