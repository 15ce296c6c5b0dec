"""Benchmark `qwen-edge export` on the real Qwen2.5-Coder-0.5B-Instruct GGUF: wall time and peak RSS.

Each run is a fresh process measured with getrusage on the child (ru_maxrss), so the figure is the
exporter's own peak, tokenizer conversion included. Prints a table; --json for machines.

    python scripts/bench_export.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(gguf: Path, out: Path, dtype: str) -> tuple[float, float]:
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "qwen_edge.cli", "export", str(gguf), "-o", str(out), "--dtype", dtype,
                    "--max-length", "32768"], check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    # RUSAGE_CHILDREN keeps the max over all children so far: run each dtype in its own helper process.
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, rss / 1024 if rss != before else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dtype", choices=["fp32", "fp16"], action="append")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from qwen_edge.assets import example_gguf
    gguf = example_gguf()
    if a.child:  # measure one dtype in a clean process so ru_maxrss is this dtype's alone
        tmp = Path(tempfile.mkdtemp())
        runs = [one_run(gguf, tmp / "out", a.child) for _ in range(a.runs)]
        size = sum(p.stat().st_size for p in (tmp / "out").iterdir()) / 1e6
        shutil.rmtree(tmp)
        print(json.dumps({"dtype": a.child, "walls": [r[0] for r in runs], "peak_rss_mb": max(r[1] for r in runs
              if r[1] == r[1]), "size_mb": size}))
        return
    rows = []
    for dtype in a.dtype or ["fp32", "fp16"]:
        r = subprocess.run([sys.executable, __file__, "--child", dtype, "--runs", str(a.runs)], check=True,
                           capture_output=True, text=True)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        d["median_s"] = statistics.median(d["walls"])
        rows.append(d)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
            "runs": a.runs, "model": gguf.name}
    if a.json:
        print(json.dumps({"meta": meta, "results": rows}, indent=2))
        return
    print(f"export of {gguf.name} ({meta['machine']}), median of {a.runs} runs")
    print(f"{'dtype':6} {'median s':>9} {'runs s':>22} {'peak RSS MB':>12} {'size MB':>8}")
    for d in rows:
        runs = ", ".join(f"{w:.1f}" for w in d["walls"])
        print(f"{d['dtype']:6} {d['median_s']:9.1f} {runs:>22} {d['peak_rss_mb']:12.0f} {d['size_mb']:8.0f}")


if __name__ == "__main__":
    main()
