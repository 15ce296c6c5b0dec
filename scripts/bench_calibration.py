"""Does the calibration generalize? KL against fp32 on prose AND code, for files calibrated on each text.

    python scripts/bench_calibration.py --model 0.5b --variants enwiki,mix
    python scripts/bench_calibration.py --model 1.5b --args "--bits 4 --group-size 32" --variants enwiki,mix

For one real model (qwen_edge.assets: 0.5b or 1.5b) and one quantize command (default: the shipped 410 MiB
recipe for the 0.5B, `--target-size` otherwise), each variant is a `--calibration` value; every file is
scored on the same held-out windows of both domains (enwiki articles 61-100; ten standard-library modules
never calibrated on) against the model's fp32 export. Each quantize runs in its own process, one at a time,
its log beside the file. Results: OUT/results.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAINS = ("enwiki", "python")
DEFAULT_ARGS = {"0.5b": f"--method gptq --recipe {ROOT / 'recipes/qwen2.5-coder-0.5b-instruct-410mib.json'}",
                "1.5b": "--method gptq --target-size 1023MiB"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="0.5b")
    ap.add_argument("--variants", default="enwiki,mix", help="--calibration values, comma-separated")
    ap.add_argument("--args", default=None, help="the quantize options shared by every variant")
    ap.add_argument("--windows", type=int, default=16, help="held-out windows of 512 tokens per domain")
    ap.add_argument("--out", default=None, help="work folder (default ~/.cache/qwen-edge/bench/calibration-MODEL)")
    a = ap.parse_args()
    from qwen_edge.assets import model_gguf
    from qwen_edge.cache import cache_dir
    from qwen_edge.eval.run import EvalConfig, evaluate
    from qwen_edge.export.writer import export
    out = Path(a.out) if a.out else cache_dir() / "bench" / f"calibration-{a.model}"
    out.mkdir(parents=True, exist_ok=True)
    gguf = model_gguf(a.model)
    fp32 = out / "fp32"
    if not fp32.exists():
        export(str(gguf), fp32, max_length=4096, progress=False)
    refs = {}
    for d in DOMAINS:
        refs[d] = out / f"ref-{d}-{a.windows}.npz"
        if not refs[d].exists():
            evaluate(EvalConfig(models=[str(fp32)], dataset=d, ctx=512, max_tokens=512 * a.windows, top_k=64,
                                save_reference=str(refs[d]), progress=False, threads=2))
    qargs = a.args or DEFAULT_ARGS[a.model]
    done = out / "results.json"
    rows = json.loads(done.read_text()) if done.exists() else {}
    for v in [x for x in a.variants.split(",") if x]:
        key = f"{qargs} --calibration {v}"
        if key in rows:
            continue
        name = f"q{len(rows)}"
        cmd = [sys.executable, "-m", "qwen_edge.cli", "quantize", str(gguf), "-o", str(out / name), "--max-length",
               "4096", "--force", "--no-progress", *shlex.split(qargs), "--calibration", v]
        t = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode:
                raise SystemExit(f"quantize failed: see {out / name}.log")
        secs = time.perf_counter() - t
        metrics = {}
        for d in DOMAINS:
            r = evaluate(EvalConfig(models=[str(out / name)], reference=str(refs[d]), progress=False, verify=False,
                                    threads=2))
            metrics[d] = r["models"][0]["metrics"]
        size = sum(p.stat().st_size for p in (out / name).iterdir() if p.is_file())
        rows[key] = {"folder": name, "calibration": v, "args": qargs, "seconds": round(secs), "bytes": size,
                     "metrics": metrics}
        done.write_text(json.dumps(rows, indent=2))
        print(key, {d: round(metrics[d]["kl_mean"], 5) for d in DOMAINS}, file=sys.stderr, flush=True)
    print(f"| model | quantize options | --calibration | MiB | s | prose KL | prose top-1 % | prose Δppl % | "
          f"code KL | code top-1 % | code Δppl % |\n|" + "---|" * 11)
    for r in rows.values():
        m = r["metrics"]
        print(f"| {a.model} | `{r['args'].replace(str(ROOT) + '/', '')}` | {r['calibration']} | "
              f"{r['bytes'] / 2**20:.1f} | {r['seconds']} | " +
              " | ".join(f"{m[d]['kl_mean']:.4f} | {100 * m[d]['top1']:.1f} | {100 * m[d]['ppl_increase']:+.2f}"
                         for d in DOMAINS) + " |")


if __name__ == "__main__":
    main()
