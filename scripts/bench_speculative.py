"""Speculative decoding on the real 0.5B: decode tokens/s without and with a draft or prompt lookup, same run.

    python scripts/bench_speculative.py [--quant ~/.cache/qwen-edge/bench/quant] [--runs 3] [--new-tokens 200]

Rows (each greedy, chat template, 2 threads, median of --runs; the output is checked equal to the plain run's):
fp32 and int8 targets drafted by the recommended int4; --lookup 8 on code-editing prompts (the answer repeats
most of the input) and on free prose, for fp32 and the recommended int4. With --llama, llama.cpp's own
`llama-lookup` on its IQ4_NL + imatrix file runs on the same code-editing prompts for reference (its
printed decode speed), and llama-bench-style plain decode via `llama-cli` is not needed: llama-lookup prints
both its accept rate and its speed. Prints one table (markdown) and writes --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import die  # noqa: E402

CODE = '''def summarize(orders, customers, since=None, currency="EUR"):
    totals = {}
    for order in orders:
        if since is not None and order["date"] < since:
            continue
        customer = customers.get(order["customer_id"])
        if customer is None:
            continue
        amount = order["amount"]
        if order["currency"] != currency:
            amount = amount * order["rate"]
        key = customer["country"]
        totals[key] = totals.get(key, 0) + amount
    ranked = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)
    return [{"country": c, "total": round(t, 2)} for c, t in ranked]
'''
CODE2 = '''class Inventory:
    def __init__(self):
        self.items = {}

    def add(self, name, count):
        if count <= 0:
            raise ValueError("count must be positive")
        self.items[name] = self.items.get(name, 0) + count

    def remove(self, name, count):
        have = self.items.get(name, 0)
        if count > have:
            raise ValueError("not enough " + name)
        self.items[name] = have - count
        if self.items[name] == 0:
            del self.items[name]

    def report(self):
        return ", ".join(f"{k}: {v}" for k, v in sorted(self.items.items()))
'''
PROMPTS = {
    "code": [f"Add type hints to this function. Reply with the whole function only.\n\n```python\n{CODE}```",
             f"Rename the method `report` to `summary` and add a docstring to every method. Reply with the whole "
             f"class only.\n\n```python\n{CODE2}```"],
    "prose": ["Write a short essay about the history of the bicycle.",
              "Explain to a new employee how a small bakery plans its day, from the early morning to closing."],
}


def measure(folder: Path, kind: str, runs: int, new_tokens: int, **load) -> dict:
    from qwen_edge.runtimes.model import Model
    m = Model.load(folder, threads=2, max_length=2048, **load)
    rows = []
    for prompt in PROMPTS[kind]:
        msgs = [{"role": "user", "content": prompt}]
        m.complete(msgs, max_new_tokens=16, temperature=0)  # warm-up
        tps, tokens, spec = [], None, None
        for _ in range(runs):
            r = m.complete(msgs, max_new_tokens=new_tokens, temperature=0)
            tps.append(r.timings.decode_tps)
            tokens, spec = r.tokens, r.timings.speculative
        rows.append({"tps": statistics.median(tps), "tokens": tokens, "new": len(tokens), "spec": spec})
    m.close()
    return {"tps": statistics.median(r["tps"] for r in rows), "prompts": rows}


def llama_lookup(gguf: Path, bin_dir: Path, runs: int, new_tokens: int, tokenizer_folder: Path) -> dict | None:
    exe = bin_dir / "llama-lookup"
    if not exe.exists():
        return None
    from qwen_edge.runtimes.model import Model
    m = Model.load(tokenizer_folder, threads=2, max_length=2048)
    out = []
    for prompt in PROMPTS["code"]:
        text = m.render([{"role": "user", "content": prompt}])
        speeds = []
        for _ in range(runs):
            p = subprocess.run([str(exe), "-m", str(gguf), "-t", "2", "-n", str(new_tokens), "--temp", "0",
                                "--spec-draft-n-max", "8", "-p", text, "-c", "2048"],
                               capture_output=True, text=True, timeout=600,
                               env={**__import__("os").environ, "LD_LIBRARY_PATH": str(bin_dir)})
            log = p.stdout + p.stderr
            # llama-lookup prints "decoded N tokens in S seconds, speed: X t/s" and "accept = P%"
            import re
            sp = re.search(r"decoded\s+(\d+)\s+tokens in\s+([\d.]+)\s+seconds, speed:\s+([\d.]+)", log)
            acc = re.search(r"accept\s*=\s*([\d.]+)%", log)
            if not sp:
                print(log[-2000:], file=sys.stderr)
                return None
            speeds.append(float(sp.group(3)))
        out.append({"tps": statistics.median(speeds), "accept": float(acc.group(1)) / 100 if acc else None})
    return {"tps": statistics.median(o["tps"] for o in out), "prompts": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quant", type=Path, default=Path.home() / ".cache/qwen-edge/bench/quant")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--llama", type=Path, default=Path.home() / ".cache/qwen-edge/bench/llama-cpp-python-0.3.36/build/bin")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--extra-draft", type=Path, action="append", default=[],
                    help="also draft fp32 with this artifact (repeatable; e.g. a faster uniform int4 file)")
    ap.add_argument("--only", default=None, help="run only the rows whose target name starts with this (e.g. fp32)")
    ap.add_argument("--skip", default=None, help="leave out the rows whose name contains this (e.g. lookup)")
    a = ap.parse_args()
    for d in a.extra_draft:
        if not (d / "qwen_edge.json").is_file():
            die(f"error: --extra-draft {d} is not a qwen-edge model folder")
    q = a.quant
    fp32, int8, int4 = q / "fp32", q / "recommended-int8", q / "speed-410MiB"
    def extra(kind: str) -> list:  # beside the int4 draft's row of the same prompts (this machine drifts)
        return [(f"fp32 + draft {d.name}", kind, fp32, {"draft": d}) for d in a.extra_draft]
    plan = [
        ("fp32", "prose", fp32, {}), ("fp32 + draft int4", "prose", fp32, {"draft": int4}), *extra("prose"),
        ("fp32", "code", fp32, {}), ("fp32 + draft int4", "code", fp32, {"draft": int4}), *extra("code"),
        ("fp32 + lookup 8", "code", fp32, {"lookup": 8}), ("fp32 + lookup 8", "prose", fp32, {"lookup": 8}),
        ("int8", "prose", int8, {}), ("int8 + draft int4", "prose", int8, {"draft": int4}),
        ("int4 (410 MiB recipe)", "code", int4, {}), ("int4 + lookup 8", "code", int4, {"lookup": 8}),
        ("int4 (410 MiB recipe)", "prose", int4, {}), ("int4 + lookup 8", "prose", int4, {"lookup": 8}),
    ]
    if a.only:
        plan = [p for p in plan if p[0].startswith(a.only)]
    if a.skip:
        plan = [p for p in plan if a.skip not in p[0]]
    results = []
    plain: dict[tuple, dict] = {}
    for name, kind, folder, load in plan:
        t = time.time()
        r = measure(folder, kind, a.runs, a.new_tokens, **load)
        key = (str(folder), kind)
        if not load:
            plain[key] = r
            same = None
        else:
            base = plain[key]
            same = all(x["tokens"] == y["tokens"] for x, y in zip(r["prompts"], base["prompts"]))
        sp = [p["spec"] for p in r["prompts"] if p["spec"]]
        row = {"name": name, "prompts": kind, "tps": r["tps"], "same_tokens": same,
               "speedup": r["tps"] / plain[key]["tps"],
               "acceptance": statistics.median(s["acceptance_rate"] for s in sp) if sp else None,
               "tokens_per_pass": statistics.median(s["tokens_per_pass"] for s in sp) if sp else None,
               "new_tokens": [p["new"] for p in r["prompts"]]}
        results.append(row)
        print(json.dumps(row), f"({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    ll = None if a.only else llama_lookup(q / "llama" / "IQ4_NL-imatrix.gguf", a.llama, a.runs, a.new_tokens, int4)
    if ll:
        results.append({"name": "llama.cpp IQ4_NL + imatrix, llama-lookup --spec-draft-n-max 8", "prompts": "code",
                        "tps": ll["tps"], "acceptance": statistics.median(p["accept"] for p in ll["prompts"]
                                                                          if p["accept"] is not None) if any(
                            p["accept"] is not None for p in ll["prompts"]) else None,
                        "same_tokens": None, "speedup": None, "tokens_per_pass": None, "new_tokens": None})
    print("| target (+ proposer) | prompts | decode tok/s | vs plain | accepted | tokens / pass | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        f = (lambda v, fmt: "" if v is None else fmt.format(v))
        print(f"| {r['name']} | {r['prompts']} | {r['tps']:.1f} | {f(r['speedup'], '{:.2f}x')} | "
              f"{f(r['acceptance'], '{:.0%}')} | {f(r['tokens_per_pass'], '{:.2f}')} | "
              f"{'' if r['same_tokens'] is None else ('yes' if r['same_tokens'] else 'NO')} |")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
