"""Checkpoints with the exact configs and tensor shapes of Qwen2.5-1.5B / 3B / 7B-Instruct whose weight bytes
are never written: each safetensors file is its header and a hole (a sparse file). Enough for everything
that reads only headers (the memory estimate, the refusal before a job starts); reading a weight gives zeros."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from qwen_edge.shapes import CONFIGS, tensor_shapes
from tiny_models import tiny_tokenizer

def hollow_checkpoint(dest: Path, size: str) -> Path:
    c = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "max_position_embeddings": 32768,
         "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "use_sliding_window": False, "sliding_window": 131072,
         "max_window_layers": 28, "torch_dtype": "bfloat16", "bos_token_id": 0, "eos_token_id": 2,
         "hidden_act": "silu", **CONFIGS[size]}
    shapes = tensor_shapes(c)
    header, off = {}, 0
    for name, shape in shapes:
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    dest.mkdir(parents=True, exist_ok=True)
    hb = json.dumps(header).encode()
    with open(dest / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        f.truncate(8 + len(hb) + off)  # the hole: no weight bytes on disk
    (dest / "config.json").write_text(json.dumps(c))
    tiny_tokenizer(dest, 400)
    return dest
