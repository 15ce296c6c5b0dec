"""Quantization benchmark on the real Qwen2.5-Coder-0.5B-Instruct: every variant against the fp32 export
on held-out enwiki text (perplexity, KL mean/p99, top-1 agreement), with size, quantization time and peak
RSS. Each variant is quantized in its own process so its peak RSS is its own.

    python scripts/bench_quant.py --out /tmp/qbench --samples 128 --seq-len 512 --windows 16
    python scripts/bench_quant.py --variants rtn8,gptq4g128 ...     # a subset

Prints one JSON line per variant and a Markdown table for docs/quantize.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {
    "rtn8": dict(method="rtn", bits=8, group_size=128),
    "rtn8acc4": dict(method="rtn", bits=8, group_size=128, accuracy_level=4),
    "rtn4g128": dict(method="rtn", bits=4, group_size=128),
    "rtn4g32": dict(method="rtn", bits=4, group_size=32),
    "gptq4g128": dict(method="gptq", bits=4, group_size=128),
    "gptq4g32": dict(method="gptq", bits=4, group_size=32),
    "gptq4g128ao": dict(method="gptq", bits=4, group_size=128, act_order=True),
    "gptq4g32ao": dict(method="gptq", bits=4, group_size=32, act_order=True),
    "gptq4g32e4": dict(method="gptq", bits=4, group_size=32, embed_bits=4),  # int4 embedding: under 469 MiB
    "awq4g128": dict(method="awq", bits=4, group_size=128),
    "awq4g32": dict(method="awq", bits=4, group_size=32),
    "gptq8g128": dict(method="gptq", bits=8, group_size=128),
    "gptq4g128mix": dict(method="gptq", bits=4, group_size=128, int8_layers="0,1"),
}


def one(args: argparse.Namespace) -> None:
    """Child process: quantize one variant, print its timing and peak RSS as JSON."""
    from qwen_edge.assets import example_gguf
    from qwen_edge.quantize.api import quantize
    from qwen_edge.runtimes.bench import peak_rss_bytes  # VmHWM: ru_maxrss would include the parent's peak
    kw = dict(VARIANTS[args.one])
    if kw["method"] != "rtn":
        kw.update(samples=args.samples, seq_len=args.seq_len)
    if args.embed_bits:
        kw["embed_bits"] = args.embed_bits
    t = time.perf_counter()
    quantize(str(example_gguf()), Path(args.out) / args.one, max_length=4096, force=True, progress=False, **kw)
    print(json.dumps({"seconds": time.perf_counter() - t,
                      "peak_rss_mb": peak_rss_bytes() / 2**20}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/qbench")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--windows", type=int, default=16, help="held-out enwiki windows of 512 tokens")
    ap.add_argument("--embed-bits", default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)
    from qwen_edge.assets import example_gguf
    from qwen_edge.export.writer import export
    from qwen_edge.quantize.quality import compare, eval_windows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "fp32").exists():
        export(str(example_gguf()), out / "fp32", max_length=4096, progress=False)
    names = args.variants.split(",")
    runs = {}
    for n in names:
        cmd = [sys.executable, __file__, "--one", n, "--out", str(out), "--samples", str(args.samples),
               "--seq-len", str(args.seq_len)] + (["--embed-bits", args.embed_bits] if args.embed_bits else [])
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"{n} failed:\n{r.stderr[-3000:]}")
        runs[n] = json.loads(r.stdout.strip().splitlines()[-1])
        print(n, runs[n], file=sys.stderr, flush=True)
    windows = eval_windows(out / "fp32", args.windows, 512)
    rows = compare(out / "fp32", [out / n for n in names], windows)
    print("| variant | method | bits | group | ppl | Δppl % | KL mean | KL p99 | top-1 % | size MiB | quantize s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in zip(names, rows):
        v = VARIANTS[n]
        # MiB, as llama.cpp and the issue report file sizes (its Q4_K_M "469 MB" is 491,400,064 bytes)
        size = sum(p.stat().st_size for p in (out / n).iterdir() if p.is_file()) / 2**20
        rec = {"variant": n, **v, **r, "size_mib": size, **runs[n]}
        print(json.dumps(rec), file=sys.stderr)
        print(f"| {n} | {v['method']} | {v['bits']} | {v['group_size']} | {r['ppl']:.3f} | "
              f"{100 * r['ppl_increase']:+.2f} | {r['kl_mean']:.4f} | {r['kl_p99']:.3f} | {100 * r['top1']:.1f} | "
              f"{size:.0f} | {runs[n]['seconds']:.0f} | {runs[n]['peak_rss_mb']:.0f} |")
    print(f"\nfp32 ppl {rows[0]['ref_ppl']:.3f} on {rows[0]['tokens']} held-out enwiki tokens "
          f"({args.windows} windows of 512); calibration {args.samples} x {args.seq_len}")


if __name__ == "__main__":
    main()
