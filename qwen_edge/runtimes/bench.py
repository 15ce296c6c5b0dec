"""`qwen-edge bench`: time to first token, prefill and decode tokens/s (medians), peak RSS, size on disk.

Greedy, a fixed English prompt cut to exactly `prompt_tokens`, `new_tokens` decode steps (end tokens
ignored), a fresh cache each run. Also the split of a decode step: onnxruntime vs. our own overhead, and
the bytes a decode step reads (every weight once but the embedding, one row of it; the KV cache at the
benchmark's mean context) against this machine's memory bandwidth, measured: decode cannot beat
bandwidth / bytes per token, so the share of that ceiling says how much a faster kernel could still gain.
"""

from __future__ import annotations

import platform
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import QwenEdgeError

_TEXT = ("The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
         "movable metal type, oil-based inks and a screw press adapted from wine making. Within a few decades "
         "print shops had spread to more than two hundred cities across Europe, and the price of books fell so "
         "far that reading became common among merchants and craftsmen. Scholars could now compare identical "
         "copies of a text, which changed how knowledge was checked, corrected and shared. ")


def bench_prompt(tokenizer: Any, n: int) -> list[int]:
    """Exactly n token ids of ordinary English text (repeated as needed)."""
    one = tokenizer.encode(_TEXT, add_special_tokens=False).ids
    return (one * (n // len(one) + 1))[:n]


def peak_rss_bytes() -> int:
    """This process's peak RSS. On Linux VmHWM: ru_maxrss survives fork and exec, so a benchmark started
    by a large parent (a script that had loaded transformers, say) would report the parent's peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)  # Linux reports KiB


def memory_bandwidth(threads: int, mib: int = 128, reps: int = 7) -> float:
    """Bytes per second that `threads` threads copying large arrays move (read + written), the median of
    `reps` (the best of a few swung by 1.6x between runs on this shared machine)."""
    import threading

    import numpy as np
    n = mib << 20
    pairs = [(np.ones(n, np.uint8), np.empty(n, np.uint8)) for _ in range(max(1, threads))]
    for s, d in pairs:
        np.copyto(d, s)  # fault the destination pages in before timing
    rates = []
    for _ in range(reps):
        ts = [threading.Thread(target=np.copyto, args=(d, s)) for s, d in pairs]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        rates.append(2 * n * len(pairs) / (time.perf_counter() - t))
    return float(statistics.median(rates))


def read_per_token(model: Any, context: int) -> dict[str, int]:
    """Bytes a decode step reads: weights (graph_facts) and the KV cache at `context` positions."""
    from .. import graph_facts
    from .. import artifact as A
    facts = graph_facts.read(model.folder / A.MODEL, sizes=True)
    s = model.spec
    item = model.kv_cache_bytes // (2 * s["num_layers"] * s["num_kv_heads"] * s["head_dim"] * model.max_length)
    kv = 2 * s["num_layers"] * s["num_kv_heads"] * s["head_dim"] * context * item
    weights = facts.bytes_per_token()
    return {"weights": weights, "kv_cache": kv, "total": weights + kv}


def _int(name: str, v: Any, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise QwenEdgeError(f"{name} must be an integer >= {lo}, got {v!r}")
    return v


def bench(folder: str | Path, *, prompt_tokens: int = 512, new_tokens: int = 128, runs: int = 5, warmup: int = 1,
          threads: int = 0, provider: str = "cpu", arena: bool = True, spin: bool = True,
          prefill_chunk: int = 256, progress: Any = None, verify: bool = True, draft: Any = None,
          draft_tokens: int = 8, lookup: int | None = None) -> dict[str, Any]:
    from .model import Model
    _int("prompt_tokens", prompt_tokens, 1)
    _int("new_tokens", new_tokens, 2)
    _int("runs", runs, 1)
    _int("warmup", warmup, 0)
    t = time.perf_counter()
    model = Model.load(folder, threads=threads, provider=provider, arena=arena, spin=spin, verify=verify,
                       prefill_chunk=prefill_chunk, draft=draft, draft_tokens=draft_tokens, lookup=lookup)
    load_s = time.perf_counter() - t
    if prompt_tokens + new_tokens > model.max_length:
        raise QwenEdgeError(f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the model's "
                            f"context ({model.max_length})")
    ids = bench_prompt(model.tokenizer, prompt_tokens)
    rows = []
    for i in range(warmup + runs):
        r = model.complete(ids, max_new_tokens=new_tokens, temperature=0.0, ignore_eos=True).timings
        if i >= warmup:
            rows.append(r)
        if progress:
            progress(i + 1, warmup + runs)
    steps = new_tokens - 1

    def med(f: Any) -> float:
        return float(statistics.median(f(r) for r in rows))

    decode_run = med(lambda r: r.run_s / steps)
    sample = med(lambda r: r.sample_s / steps)
    detok = med(lambda r: r.detok_s / steps)
    per_token = med(lambda r: r.decode_s / steps)
    peak = peak_rss_bytes()  # before the bandwidth probe's own arrays
    read = read_per_token(model, prompt_tokens + new_tokens // 2)
    bw = memory_bandwidth(threads or _cores())
    decode_tps = med(lambda r: r.decode_tps)
    return {
        "folder": str(folder), "dtype": model.manifest.get("dtype"),
        "quantization": model.manifest.get("quantization"),
        "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "runs": runs, "warmup": warmup,
        "threads": threads, "provider": model.session_config.provider, "prefill_chunk": prefill_chunk,
        "load_s": load_s,
        "ttft_s": med(lambda r: r.ttft_s),
        "prefill_tps": med(lambda r: r.prefill_tps),
        "decode_tps": decode_tps,
        "bytes_per_token": read,
        "memory_bandwidth_bytes_s": bw,
        "bandwidth_limit_tps": bw / read["total"],
        "bandwidth_share": decode_tps / (bw / read["total"]),
        "decode_step_ms": {"total": per_token * 1e3, "onnxruntime": decode_run * 1e3, "sampling": sample * 1e3,
                           "detokenize": detok * 1e3,
                           "other": max(0.0, per_token - decode_run - sample - detok) * 1e3},
        "peak_rss_bytes": peak,
        "speculative": None if rows[0].speculative is None else {
            "draft": str(draft) if draft is not None else None, "lookup": lookup,
            "acceptance_rate": med(lambda r: r.speculative["acceptance_rate"]),
            "tokens_per_pass": med(lambda r: r.speculative["tokens_per_pass"])},
        "size_bytes": model.size_bytes,
        "kv_cache_bytes": model.kv_cache_bytes,
        "machine": {"cpu": _cpu_name(), "cores": _cores(), "python": platform.python_version(),
                    "onnxruntime": _ort_version()},
    }


def weights_label(dtype: str | None, q: dict[str, Any] | None) -> str:
    """What the weights are: "fp32", or for a quantized folder its linears' formats and method, e.g.
    "int4g32 x 112, int8g128 x 56; gptq" (a quantized folder's dtype is its activations')."""
    if not q:
        return str(dtype)
    plan = q.get("plan") or {}
    counts = plan.get("counts") or {}
    what = ", ".join(f"{k} x {n}" for k, n in counts.items()) or f"int{q.get('bits', '?')}"
    return f"{what}; {q.get('method', '?')}"


def summary_lines(r: dict[str, Any]) -> list[str]:
    s = r["decode_step_ms"]
    return [
        f"{r['folder']} ({weights_label(r['dtype'], r.get('quantization'))}), {r['prompt_tokens']} prompt + "
        f"{r['new_tokens']} new tokens, "
        f"median of {r['runs']} runs",
        f"  time to first token  {r['ttft_s'] * 1e3:8.0f} ms",
        f"  prefill              {r['prefill_tps']:8.1f} tokens/s",
        f"  decode               {r['decode_tps']:8.1f} tokens/s",
        f"  decode step          {s['total']:8.2f} ms = onnxruntime {s['onnxruntime']:.2f} + sampling "
        f"{s['sampling']:.3f} + detokenize {s['detokenize']:.3f} + other {s['other']:.3f}",
        f"  read per token       {r['bytes_per_token']['total'] / 2**20:8.1f} MiB (weights "
        f"{r['bytes_per_token']['weights'] / 2**20:.1f} + KV cache {r['bytes_per_token']['kv_cache'] / 2**20:.1f})",
        f"  bandwidth ceiling    {r['bandwidth_limit_tps']:8.1f} tokens/s at {r['memory_bandwidth_bytes_s'] / 1e9:.1f} GB/s "
        f"(copy, measured): decode reaches {r['bandwidth_share'] * 100:.0f} % of it",
        *([f"  speculative          {r['speculative']['tokens_per_pass']:8.2f} tokens a forward pass, "
           f"{r['speculative']['acceptance_rate'] * 100:.0f} % of proposals accepted "
           f"({'draft ' + r['speculative']['draft'] if r['speculative']['draft'] else 'lookup'})"]
          if r.get("speculative") else []),
        f"  peak RSS             {r['peak_rss_bytes'] / 2**20:8.0f} MiB",
        f"  size on disk         {r['size_bytes'] / 2**20:8.0f} MiB",
        f"  load                 {r['load_s']:8.2f} s",
    ]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    import os
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__
