"""`qwen-edge serve` next to llama-cpp-python's OpenAI server, same prompts, same client, one run.

    python scripts/bench_serve.py --ours out/int4 --gguf Q4_K_M.gguf [--rounds 3]

Both servers run on this machine (2 threads each, started once, both warm). The official `openai` client
streams greedy chat completions (128 new tokens at most): time to first token and decode tokens/s for one
client, then total completion tokens per second with 1, 2 and 4 concurrent clients (each sends the same
list of prompts). The two servers are measured alternately, round by round; medians over rounds.
llama.cpp's server comes from scripts/llamacpp_env.py (the pinned llama-cpp-python sdist, our build).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_env  # noqa: E402

PROMPTS = ["Write a Python function that checks whether a number is prime, with a docstring.",
           "Explain what a hash map is and when to use one.",
           "Write a bash script that counts the lines of every .py file in a folder.",
           "What is the difference between a process and a thread?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 300) -> None:
    import urllib.request
    t = time.time()
    while time.time() - t < timeout:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{url} did not come up")


def one(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first = last = None
    n = chunks = 0
    for ch in client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                             max_tokens=max_tokens, temperature=0, stream=True,
                                             stream_options={"include_usage": True}):
        now = time.perf_counter()
        if ch.choices and ch.choices[0].delta.content:
            first = first or now
            last = now
            chunks += 1
        if ch.usage is not None:
            n = ch.usage.completion_tokens
    n = n or chunks  # llama_cpp.server sends no usage when streaming: one chunk per token there
    return {"ttft": (first or t0) - t0, "tokens": n, "decode_tps": (n - 1) / (last - first) if last and last > first else 0}


def concurrent(url: str, model: str, clients: int, max_tokens: int) -> float:
    from openai import OpenAI
    total, lock = [0], threading.Lock()

    def work(i: int) -> None:
        c = OpenAI(base_url=url + "/v1", api_key="none", timeout=600, max_retries=0)
        for p in PROMPTS[i % len(PROMPTS):] + PROMPTS[: i % len(PROMPTS)]:
            r = one(c, model, p, max_tokens)
            with lock:
                total[0] += r["tokens"]
    t = time.perf_counter()
    ts = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    for x in ts:
        x.start()
    for x in ts:
        x.join()
    return total[0] / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True, help="artifact folder (int4)")
    ap.add_argument("--gguf", required=True, help="llama.cpp file for llama_cpp.server (Q4_K_M)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--parallel", type=int, default=2, help="qwen-edge serve --parallel")
    a = ap.parse_args()
    from openai import OpenAI
    info = llamacpp_env.ensure()
    p_ours, p_llama = free_port(), free_port()
    ours = subprocess.Popen([sys.executable, "-m", "qwen_edge.cli", "serve", a.ours, "--port", str(p_ours),
                             "--threads", "2", "--parallel", str(a.parallel), "--ctx", "4096", "--model-name", "m"],
                            stderr=subprocess.DEVNULL)
    llama = subprocess.Popen([info["python"], "-m", "llama_cpp.server", "--model", a.gguf, "--model_alias", "m",
                              "--port", str(p_llama), "--n_threads", "2", "--n_threads_batch", "2", "--n_ctx", "4096"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=llamacpp_env.env_for(info))
    servers = {"qwen-edge": f"http://127.0.0.1:{p_ours}", "llama_cpp.server": f"http://127.0.0.1:{p_llama}"}
    try:
        for url in servers.values():
            wait_ready(url)
        res: dict[str, dict[str, list[float]]] = {k: {} for k in servers}
        for name, url in servers.items():  # warm-up: one request each
            one(OpenAI(base_url=url + "/v1", api_key="none", max_retries=0), "m", PROMPTS[0], 16)
        for r in range(a.rounds):
            for name, url in servers.items():
                c = OpenAI(base_url=url + "/v1", api_key="none", timeout=600, max_retries=0)
                singles = [one(c, "m", p, a.max_tokens) for p in PROMPTS]
                d = res[name]
                d.setdefault("ttft_ms", []).append(statistics.median(x["ttft"] for x in singles) * 1e3)
                d.setdefault("decode_tps", []).append(statistics.median(x["decode_tps"] for x in singles))
                for k in (1, 2, 4):
                    d.setdefault(f"total_tps_{k}", []).append(concurrent(url, "m", k, a.max_tokens))
                print(f"round {r + 1} {name}: " + json.dumps({k: round(v[-1], 1) for k, v in d.items()}),
                      file=sys.stderr, flush=True)
        out = {n: {k: round(statistics.median(v), 1) for k, v in d.items()} for n, d in res.items()}
        print(json.dumps(out, indent=2))
        print("\n| server | TTFT ms | decode tok/s (1 client) | total tok/s, 1 client | 2 clients | 4 clients |")
        print("|---|---|---|---|---|---|")
        for n, d in out.items():
            print(f"| {n} | {d['ttft_ms']:.0f} | {d['decode_tps']:.1f} | {d['total_tps_1']:.1f} | "
                  f"{d['total_tps_2']:.1f} | {d['total_tps_4']:.1f} |")
    finally:
        for p in (ours, llama):
            p.terminate()
            p.wait(timeout=30)


if __name__ == "__main__":
    main()
