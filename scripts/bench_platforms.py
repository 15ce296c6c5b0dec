"""The same artifact in Python, Node and headless Chromium, side by side in one run: prefill and decode
tokens/s (medians), time to first token and peak memory, on the same prompt ids (greedy, end tokens ignored).

    python scripts/bench_platforms.py out/int4 [--prompt-tokens 512 --new-tokens 128 --runs 3]
        [--wllama FILE.gguf ...]     # also llama.cpp in the same browser (npm @wllama/wllama), same run

Python: `qwen-edge bench` (onnxruntime, 2 threads, in-place cache, prefill chunks of 256 keeping only the
last logits). Node: the JavaScript package on onnxruntime-node (2 threads, in-place cache). Chromium: the
web example's worker on onnxruntime-web wasm (2 threads under cross-origin isolation, growing cache); its
memory is the browser's processes together. JavaScript cannot feed logits_to_keep, so its prefill computes
every position's logits in chunks of 64. `--wllama` adds llama.cpp's wasm build in the same headless Chromium
(scripts/bench_wllama.mjs; the same prompt as text, llama.cpp's own timings) for each GGUF given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--wllama", action="append", default=[], metavar="GGUF",
                    help="also run this GGUF with llama.cpp's wasm build in Chromium (repeatable)")
    ap.add_argument("--skip", default="", help="comma-separated: python,node,chromium (for the peer rows alone)")
    a = ap.parse_args()
    from tokenizers import Tokenizer

    from qwen_edge.runtimes.bench import bench_prompt
    tok = Tokenizer.from_file(str(Path(a.folder) / "tokenizer.json"))
    ids = bench_prompt(tok, a.prompt_tokens)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
    rows: dict[str, dict] = {}
    skip = set(filter(None, a.skip.split(",")))
    for gguf in a.wllama:  # first: the peer's browser, while the machine is as fresh as for ours
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as t:
            t.write(tok.decode(ids))
        w = json.loads(subprocess.run(["node", str(ROOT / "scripts" / "bench_wllama.mjs"), gguf, t.name,
                                       str(a.new_tokens), str(a.runs)], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1])
        rows[f"Chromium (wllama {Path(gguf).name}, llama.cpp wasm, 2 threads; {w['prompt_n']}-token prompt)"] = w
    if "python" not in skip:
        rows["Python (onnxruntime)"] = python_row(a)
    which = [x for x in ("node", "chromium") if x not in skip]
    if which:
        js = json.loads(subprocess.run(["node", str(ROOT / "scripts" / "bench_js.mjs"), a.folder, f.name,
                                        str(a.new_tokens), str(a.runs), ",".join(which)], capture_output=True,
                                       text=True, check=True).stdout.strip().splitlines()[-1])
        if js["node"]:
            rows["Node (onnxruntime-node)"] = js["node"]
        if js["chromium"]:
            rows["Chromium (onnxruntime-web wasm, 2 threads)"] = js["chromium"]
    print(json.dumps(rows, indent=2))
    print(f"\n| runtime | prefill tok/s | decode tok/s | TTFT ms ({a.prompt_tokens} tokens) | peak memory MiB |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['prefill_tps']:.0f} | {r['decode_tps']:.1f} | {r['ttft_ms']:.0f} | {r['peak_rss_mib']:.0f} |")


def python_row(a) -> dict:
    py = json.loads(subprocess.run([sys.executable, "-m", "qwen_edge.cli", "bench", a.folder, "--prompt-tokens",
                                    str(a.prompt_tokens), "--new-tokens", str(a.new_tokens), "--runs", str(a.runs),
                                    "--threads", "2", "--json", "--no-verify"], capture_output=True, text=True,
                                   check=True).stdout)
    return {"prefill_tps": py["prefill_tps"], "decode_tps": py["decode_tps"], "ttft_ms": py["ttft_s"] * 1000,
            "peak_rss_mib": py["peak_rss_bytes"] / 2**20}


if __name__ == "__main__":
    main()
