"""Quantization at 7B scale on this machine: RTN and GPTQ of a synthetic checkpoint shaped exactly like
Qwen2.5-7B-Instruct (scripts/bench_export_7b.py writes it: bf16 safetensors, 15.2 GB, filler values; the
values change neither memory nor time). Each run in its own process; wall time and that process's peak RSS.

    python scripts/bench_quant_7b.py --work /tmp/bench7b [--samples 8 --seq-len 256] [--keep]

Needs ~40 GB of free disk (checkpoint + two int4 outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_export_7b import write_shards  # noqa: E402


def measured(cmd: list[str]) -> dict:
    t = time.perf_counter()
    p = subprocess.Popen(cmd)
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return {"seconds": round(time.perf_counter() - t, 1), "peak_rss_mib": round(ru.ru_maxrss / 1024)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bench7b")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--methods", default="rtn,gptq")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()
    work = Path(a.work)
    src = work / "Qwen2.5-7B-shaped"
    if not (src / "config.json").is_file():
        t = time.perf_counter()
        write_shards(src)
        print(f"wrote the synthetic checkpoint in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rows = {}
    for method in a.methods.split(","):
        out = work / f"int4-{method}"
        cmd = [sys.executable, "-m", "qwen_edge.cli", "quantize", str(src), "-o", str(out), "--method", method,
               "--bits", "4", "--group-size", "32", "--max-length", "4096", "--force", "--no-progress"]
        if method != "rtn":
            cmd += ["--samples", str(a.samples), "--seq-len", str(a.seq_len)]
        rows[method] = measured(cmd)
        rows[method]["output_gib"] = round(sum(p.stat().st_size for p in out.iterdir()) / 2**30, 2)
        print(method, json.dumps(rows[method]), file=sys.stderr, flush=True)
        if not a.keep:
            shutil.rmtree(out)
    print(json.dumps({"checkpoint_gb": round(sum(p.stat().st_size for p in src.glob("*.safetensors")) / 1e9, 2),
                      "calibration": f"{a.samples} x {a.seq_len}", **rows}, indent=2))
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
