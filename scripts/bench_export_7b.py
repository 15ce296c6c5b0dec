"""Export memory at 7B scale: a synthetic checkpoint shaped exactly like Qwen2.5-7B-Instruct.

The hub is out of reach here, so this writes a bf16 safetensors folder with Qwen2.5-7B's config and tensor
shapes (filler values; the values do not change memory or time), then exports it with `qwen-edge export
--dtype fp16` in a child process and reports wall time and the child's peak RSS. Needs ~31 GB of free disk.

    python scripts/bench_export_7b.py --work /tmp/bench7b [--keep]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CONFIG = {  # Qwen2.5-7B-Instruct's config.json (transformers 4.x layout, as on the hub)
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "tie_word_embeddings": False,
    "use_sliding_window": False, "sliding_window": 131072, "max_window_layers": 28, "torch_dtype": "bfloat16",
    "bos_token_id": 0, "eos_token_id": 2, "hidden_act": "silu",
}  # (bos/eos are the stand-in tokenizer's: the real ones are 151643/151645, outside its 400 tokens)


def tensors(c: dict) -> list[tuple[str, tuple[int, ...]]]:
    from qwen_edge.shapes import tensor_shapes  # one list of Qwen2 tensor shapes, shared with the tests
    return tensor_shapes(c)


def config_for(size: str) -> dict:
    """Qwen2.5-{1.5B,3B,7B}-Instruct's config (qwen_edge/shapes.CONFIGS holds what differs)."""
    if size == "7b":
        return dict(CONFIG)
    from qwen_edge.shapes import CONFIGS
    return {**CONFIG, **CONFIGS[size], "max_window_layers": CONFIGS[size]["num_hidden_layers"]}


def write_shards(folder: Path, shard_bytes: int = 4 << 30, size: str = "7b") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = config_for(size)
    block = (np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32) * 0.02).view(np.uint32) >> 16
    block = block.astype(np.uint16).tobytes()  # 2 MB of bf16 filler, tiled
    shards, cur, size = [], [], 0
    for name, shape in tensors(config):
        n = int(np.prod(shape)) * 2
        if cur and size + n > shard_bytes:
            shards.append(cur)
            cur, size = [], 0
        cur.append((name, shape, n))
        size += n
    shards.append(cur)
    for k, shard in enumerate(shards):
        header, off = {}, 0
        for name, shape, n in shard:
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [off, off + n]}
            off += n
        hb = json.dumps(header).encode()
        with open(folder / f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(hb)) + hb)
            for _, _, n in shard:
                for start in range(0, n, len(block)):
                    f.write(block[: min(len(block), n - start)])
    (folder / "config.json").write_text(json.dumps(config))
    tok = Path(sys.argv[0]).resolve().parent.parent / "tests"
    sys.path.insert(0, str(tok))
    from tiny_models import tiny_tokenizer  # a stand-in tokenizer: the export only copies it
    tiny_tokenizer(folder, 400)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bench7b")
    ap.add_argument("--dtype", default="fp16")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    src, out = work / "Qwen2.5-7B-shaped", work / "out"
    if not (src / "config.json").is_file():
        t = time.perf_counter()
        write_shards(src)
        print(f"wrote synthetic checkpoint in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qwen_edge.cli", "export", str(src), "-o", str(out), "--dtype", a.dtype],
                   check=True)
    wall = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    size = sum(p.stat().st_size for p in out.iterdir()) / 1e9
    src_size = sum(p.stat().st_size for p in src.glob("*.safetensors")) / 1e9
    print(json.dumps({"checkpoint_gb": round(src_size, 2), "output_gb": round(size, 2), "dtype": a.dtype,
                      "export_s": round(wall, 1), "peak_rss_mb": round(rss)}))
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
