"""Structured output over HTTP: `qwen-edge serve` next to llama-cpp-python's server, with and without a schema.

    python scripts/bench_constrained.py --ours ~/.cache/qwen-edge/bench/quant/speed-410MiB \
        --gguf ~/.cache/qwen-edge/bench/quant/llama/IQ4_NL-imatrix.gguf [--rounds 3]

Both servers on this machine (2 threads each, started once, warm), the official `openai` client, extraction
prompts, greedy, streamed: decode tokens/s per request free and with response_format json_schema (llama.cpp
turns the schema, sent as its {"type": "json_object", "schema": ...}, into a GBNF grammar), whether the constrained replies parse and validate, and the servers
alternating round by round; medians. Prints a markdown table.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import llamacpp_env  # noqa: E402
from bench_serve import free_port, wait_ready  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "city": {"type": "string"}, "skills": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
    "role": {"enum": ["engineer", "manager", "designer", "other"]}},
    "required": ["name", "age", "city", "skills", "role"], "additionalProperties": False}
PROMPTS = ["Extract the person as JSON: Maria Lopez, 34, lives in Madrid and works as a software engineer; she knows "
           "Python, Rust and SQL.",
           "Extract the person as JSON: Tom Becker (52) is a project manager in Hamburg who speaks German and English "
           "and is good at budgeting.",
           "Extract the person as JSON: Aiko Tanaka is a 27-year-old designer from Osaka skilled in Figma and "
           "typography."]


def one(client, prompt: str, schema: bool, llama: bool = False) -> dict:
    # llama-cpp-python's server takes the schema as {"type": "json_object", "schema": ...} (no json_schema type)
    rf = {"type": "json_object", "schema": SCHEMA} if llama else \
        {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    kw = {"response_format": rf} if schema else {}
    t0 = time.perf_counter()
    first = last = None
    parts = []
    n = 0
    for ch in client.chat.completions.create(model="m", messages=[{"role": "user", "content": prompt}], max_tokens=160,
                                             temperature=0, stream=True, stream_options={"include_usage": True}, **kw):
        now = time.perf_counter()
        if ch.choices and ch.choices[0].delta.content:
            first = first or now
            last = now
            parts.append(ch.choices[0].delta.content)
        if getattr(ch, "usage", None) is not None:
            n = ch.usage.completion_tokens
    text = "".join(parts)
    # tokens generated: the server's usage, or one streamed chunk per token (llama_cpp.server sends no usage)
    return {"text": text, "first": (first or t0) - t0, "span": (last - first) if last and first else 0.0,
            "tokens": n or len(parts)}


def main() -> None:
    import argparse

    import jsonschema
    from openai import OpenAI
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    info = llamacpp_env.ensure()
    p1, p2 = free_port(), free_port()
    ours = subprocess.Popen([sys.executable, "-m", "qwen_edge.cli", "serve", a.ours, "--port", str(p1), "--threads", "2",
                             "--ctx", "4096", "--model-name", "m"], stderr=subprocess.DEVNULL)
    llama = subprocess.Popen([info["python"], "-m", "llama_cpp.server", "--model", a.gguf, "--model_alias", "m",
                              "--port", str(p2), "--n_threads", "2", "--n_threads_batch", "2", "--n_ctx", "4096"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=llamacpp_env.env_for(info))
    servers = {"qwen-edge": f"http://127.0.0.1:{p1}", "llama_cpp.server": f"http://127.0.0.1:{p2}"}
    res: dict = {(s, c): {"tps": [], "valid": 0, "n": 0} for s in servers for c in (False, True)}
    try:
        for url in servers.values():
            wait_ready(url)
        clients = {s: OpenAI(base_url=u + "/v1", api_key="none", max_retries=0, timeout=600) for s, u in servers.items()}
        for s, c in clients.items():
            one(c, PROMPTS[0], False)
        for _ in range(a.rounds):
            for prompt in PROMPTS:
                for s, c in clients.items():
                    for constrained in (False, True):
                        r = one(c, prompt, constrained, s == "llama_cpp.server")
                        n = r["tokens"]
                        cell = res[(s, constrained)]
                        if r["span"] > 0 and n > 1:
                            cell["tps"].append((n - 1) / r["span"])
                        cell["n"] += 1
                        try:
                            jsonschema.validate(json.loads(r["text"]), SCHEMA)
                            cell["valid"] += 1
                        except Exception:
                            pass
                        if constrained and _ == 0:
                            print(s, r["text"].replace("\n", " ")[:200], file=sys.stderr)
    finally:
        for p in (ours, llama):
            p.terminate()
            p.wait(timeout=30)
    print("| server | response_format | decode tok/s (median) | replies that parse and validate |")
    print("|---|---|---|---|")
    for (s, c), cell in res.items():
        print(f"| {s} | {'json_schema' if c else 'none'} | {statistics.median(cell['tps']):.1f} | "
              f"{cell['valid']} of {cell['n']} |")


if __name__ == "__main__":
    main()
