"""qwen-edge's runtime next to onnxruntime-genai's own generator, on the same artifact folder.

    python scripts/bench_runtime.py /tmp/bench/fp32 --prompt-tokens 512 --new-tokens 128 --runs 5 --threads 2

Each runtime loads in its own worker process (so peak RSS is its own); both stay loaded and take turns,
one run each, `--warmup` untimed rounds first: on a shared machine both see the same conditions. Greedy,
the same prompt token ids (`qwen-edge bench`'s prompt), end tokens ignored, medians over the runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Ours:
    def __init__(self, a: argparse.Namespace):
        from qwen_edge.runtimes.bench import bench_prompt
        from qwen_edge.runtimes.model import Model
        self.model = Model.load(a.folder, threads=a.threads)
        self.ids = bench_prompt(self.model.tokenizer, a.prompt_tokens)
        self.n = a.new_tokens

    def run(self) -> dict:
        t = self.model.complete(self.ids, max_new_tokens=self.n, temperature=0.0, ignore_eos=True).timings
        steps = t.new_tokens - 1
        return {"ttft_s": t.ttft_s, "prefill_tps": t.prefill_tps, "decode_tps": t.decode_tps,
                "new_tokens": t.new_tokens, "step_ms": t.decode_s / steps * 1e3, "run_ms": t.run_s / steps * 1e3,
                "sample_ms": t.sample_s / steps * 1e3, "detok_ms": t.detok_s / steps * 1e3}


class Genai:
    """onnxruntime-genai: append_tokens (prefill), then generate_next_token per token."""

    def __init__(self, a: argparse.Namespace):
        import numpy as np
        import onnxruntime_genai as og
        from tokenizers import Tokenizer

        from qwen_edge.runtimes.bench import bench_prompt
        self.og = og
        config = og.Config(a.folder)
        if a.threads:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": a.threads}}}}))
        self.model = og.Model(config)
        tok = Tokenizer.from_file(str(Path(a.folder) / "tokenizer.json"))
        self.ids = np.array(bench_prompt(tok, a.prompt_tokens), dtype=np.int32)
        self.p, self.n = a.prompt_tokens, a.new_tokens

    def run(self) -> dict:
        og = self.og
        params = og.GeneratorParams(self.model)
        total = self.p + self.n
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        gen = og.Generator(self.model, params)
        t0 = time.perf_counter()
        gen.append_tokens(self.ids)
        t1 = time.perf_counter()
        gen.generate_next_token()
        gen.get_next_tokens()
        t_first = time.perf_counter()
        n = 1
        while n < self.n and not gen.is_done():
            gen.generate_next_token()
            gen.get_next_tokens()
            n += 1
        t_last = time.perf_counter()
        return {"ttft_s": t_first - t0, "prefill_tps": self.p / (t1 - t0), "decode_tps": (n - 1) / (t_last - t_first),
                "new_tokens": n}


def worker(a: argparse.Namespace) -> None:
    """Load, say "ready", then one run per "run" line on stdin; "quit" prints peak RSS and exits."""
    from qwen_edge.runtimes.bench import peak_rss_bytes
    t = time.perf_counter()
    w = (Ours if a.worker == "qwen-edge" else Genai)(a)
    print(json.dumps({"load_s": time.perf_counter() - t}), flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            print(json.dumps(w.run()), flush=True)
        else:
            break
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}), flush=True)


def start(a: argparse.Namespace, name: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, a.folder, "--worker", name, "--prompt-tokens", str(a.prompt_tokens),
           "--new-tokens", str(a.new_tokens), "--threads", str(a.threads)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def ask(p: subprocess.Popen, line: str) -> dict:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return json.loads(p.stdout.readline())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--worker", choices=["qwen-edge", "onnxruntime-genai"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return

    names = ["qwen-edge", "onnxruntime-genai"]
    procs, info = {}, {}
    for name in names:  # one at a time, so the loads do not overlap
        procs[name] = start(a, name)
        assert procs[name].stdout is not None
        info[name] = json.loads(procs[name].stdout.readline())
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(a.warmup + a.runs):
        for name in names if i % 2 == 0 else names[::-1]:
            r = ask(procs[name], "run")
            print(f"run {i + 1}/{a.warmup + a.runs} {name}: prefill {r['prefill_tps']:.1f} tok/s, "
                  f"decode {r['decode_tps']:.2f} tok/s", file=sys.stderr, flush=True)
            if i >= a.warmup:
                runs[name].append(r)
    for name in names:
        info[name].update(ask(procs[name], "quit"))
        procs[name].wait()

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    from qwen_edge.artifact import read_manifest
    from qwen_edge.runtimes.bench import _cpu_name
    import onnxruntime
    import onnxruntime_genai
    m = read_manifest(a.folder)
    size = sum(p.stat().st_size for p in Path(a.folder).iterdir() if p.is_file())
    print(f"\n{a.folder} ({m['dtype']}{', ' + str(m['quantization']) if m.get('quantization') else ''}): "
          f"{a.prompt_tokens} prompt tokens + {a.new_tokens} new, greedy, {a.threads} threads, median of {a.runs} "
          f"runs; {_cpu_name()}, {os.cpu_count()} cores; onnxruntime {onnxruntime.__version__}, "
          f"onnxruntime-genai {onnxruntime_genai.__version__}\n")
    print("| runtime | TTFT (ms) | prefill (tok/s) | decode (tok/s) | peak RSS (MiB) | size on disk (MiB) | load (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        print(f"| {name} | {med(name, 'ttft_s') * 1e3:.0f} | {med(name, 'prefill_tps'):.1f} | "
              f"{med(name, 'decode_tps'):.2f} | {info[name]['peak_rss_bytes'] / 2**20:.0f} | {size / 2**20:.0f} | "
              f"{info[name]['load_s']:.1f} |")
    step, run_, smp, det = (med("qwen-edge", k) for k in ("step_ms", "run_ms", "sample_ms", "detok_ms"))
    print(f"\nqwen-edge decode step (median): {step:.2f} ms = onnxruntime {run_:.2f} + sampling {smp:.3f} + "
          f"detokenize {det:.3f} + other {max(0.0, step - run_ - smp - det):.3f} ms "
          f"(overhead {100 * (step - run_) / step:.2f} % of the step)")
    if a.json:
        a.json.write_text(json.dumps({"info": info, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
