"""Quantization at 7B scale on this machine: RTN and GPTQ of a synthetic checkpoint shaped exactly like
Qwen2.5-7B-Instruct (scripts/bench_export_7b.py writes it: bf16 safetensors, 15.2 GB, filler values; the
values change neither memory nor time). Each run in its own process; wall time and that process's peak RSS.

    python scripts/bench_quant_7b.py --work /tmp/bench7b [--samples 8 --seq-len 256] [--keep]
    python scripts/bench_quant_7b.py --methods rtn --run      # then run the int4 file: bench, Node, serve
    python scripts/bench_quant_7b.py --size 1.5b --methods target --windows 16   # --bpw 5: sensitivity + RTN

`target` is `quantize --method rtn --bpw 5 --target-speed 0 --sensitivity-samples N`: the layer-by-layer
sensitivity pass and the allocation at that size (`--size 1.5b | 3b | 7b`; the same shapes, synthetic
values: the plan means nothing, its time and memory are real).

`--run` loads the RTN artifact the way a user would and records load time, prefill / decode tok/s and
peak RSS: `qwen-edge bench` (Python), the JavaScript package in Node, and `qwen-edge serve` answering one
request (the browser is left out: onnxruntime-web's wasm heap stops at 4 GiB).

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


def run_artifact(folder: Path, prompt: int = 128, new: int = 32) -> dict:
    """Python bench, Node bench and one served request on the artifact, each in its own process."""
    import tempfile
    import urllib.request
    out: dict = {}
    py = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "bench", str(folder), "--prompt-tokens", str(prompt),
                         "--new-tokens", str(new), "--runs", "2", "--threads", "2", "--json", "--no-verify"],
                        capture_output=True, text=True, check=True)
    b = json.loads(py.stdout)
    out["python"] = {k: b[k] for k in ("load_s", "prefill_tps", "decode_tps", "ttft_s") if k in b}
    out["python"]["peak_rss_mib"] = round(b["peak_rss_bytes"] / 2**20)
    from tokenizers import Tokenizer

    from qwen_edge.runtimes.bench import bench_prompt
    ids = bench_prompt(Tokenizer.from_file(str(folder / "tokenizer.json")), prompt)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(ids, f)
    t = time.perf_counter()
    js = subprocess.run(["node", str(Path(__file__).resolve().parent / "bench_js.mjs"), str(folder), f.name, str(new),
                         "2", "node"], capture_output=True, text=True, check=True)
    out["node"] = {**json.loads(js.stdout.strip().splitlines()[-1])["node"], "wall_s": round(time.perf_counter() - t, 1)}
    t = time.perf_counter()
    srv = subprocess.Popen([sys.executable, "-m", "qwen_edge.cli", "serve", str(folder), "--port", "0", "--no-verify"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in srv.stdout:  # the listening line carries the address
            if "http://" in line:
                url = line[line.index("http://"):].split()[0].rstrip("/.,").removesuffix("/v1")
                break
        ready = time.perf_counter() - t
        body = json.dumps({"model": folder.name, "prompt": "hello", "max_tokens": new, "temperature": 0}).encode()
        t1 = time.perf_counter()
        req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        rep = json.loads(urllib.request.urlopen(req, timeout=600).read())
        with open(f"/proc/{srv.pid}/status") as st:
            hwm = next(int(x.split()[1]) for x in st if x.startswith("VmHWM"))
        out["serve"] = {"ready_s": round(ready, 1), "request_s": round(time.perf_counter() - t1, 2),
                        "completion_tokens": rep["usage"]["completion_tokens"], "peak_rss_mib": round(hwm / 1024)}
    finally:
        srv.terminate()
        srv.wait(60)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/bench7b")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--methods", default="rtn,gptq")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--run", action="store_true", help="also run the RTN file (bench, Node, serve)")
    ap.add_argument("--size", default="7b", choices=["1.5b", "3b", "7b"])
    ap.add_argument("--windows", type=int, default=16, help="sensitivity windows of 512 tokens (target)")
    a = ap.parse_args()
    work = Path(a.work)
    src = work / f"Qwen2.5-{a.size.upper()}-shaped"
    if not (src / "config.json").is_file():
        t = time.perf_counter()
        write_shards(src, size=a.size)
        print(f"wrote the synthetic checkpoint in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    rows = {}
    for method in a.methods.split(","):
        out = work / f"int4-{method}"
        cmd = [sys.executable, "-m", "qwen_edge.cli", "quantize", str(src), "-o", str(out), "--max-length", "4096",
               "--force", "--no-progress"]
        if method == "target":
            cmd += ["--method", "rtn", "--bpw", "5", "--target-speed", "0", "--sensitivity-samples", str(a.windows)]
        else:
            cmd += ["--method", method, "--bits", "4", "--group-size", "32"]
        if method not in ("rtn", "target"):
            cmd += ["--samples", str(a.samples), "--seq-len", str(a.seq_len)]
        rows[method] = measured(cmd)
        rows[method]["output_gib"] = round(sum(p.stat().st_size for p in out.iterdir()) / 2**30, 2)
        print(method, json.dumps(rows[method]), file=sys.stderr, flush=True)
        if a.run and method == "rtn":
            rows["run"] = run_artifact(out)
            print("run", json.dumps(rows["run"]), file=sys.stderr, flush=True)
        if not a.keep:
            shutil.rmtree(out)
    print(json.dumps({"size": a.size, "checkpoint_gb": round(sum(p.stat().st_size for p in src.glob("*.safetensors")) / 1e9, 2),
                      "calibration": f"{a.samples} x {a.seq_len}", **rows}, indent=2))
    if not a.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
