"""Peak memory of a job, estimated before it starts, and the refusal of a job that cannot fit.

A 1.5B model given to `quantize --target-size` used to grow past 17 GB before anyone noticed; on a 24 GB
machine that ends with the kernel's OOM killer taking the job, or something else. Every command that can
need more than the machine has calls `check()` right after reading the model's header (no weights read,
nothing written) and exits 2 with one line naming what would fit instead.

The estimates follow what each stage holds at its peak (docs/reliability.md lists them with the measured
peaks they were checked against):
- sensitivity (a size / KL target): one decoder layer in fp32 with its gradient and Fisher accumulator,
  the token table(s) likewise, every window's activations at a layer boundary, one window's logits;
- GPTQ / AWQ: one decoder layer in fp32, the calibration activations (inputs and float targets), the
  Hessians of one layer's linears and GPTQ's working copies of the widest one;
- writing an artifact: the packed output held until written, plus the float tables being packed;
- running one (run / serve / bench / eval): the weights onnxruntime loads and prepacks, the KV cache at
  the context length, the logits.
Standard library only: the runtime imports this module too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError

GIB = 2**30
BASE = 700 << 20  # the interpreter with numpy, torch / onnxruntime and tokenizers loaded (measured ~0.5-0.7 GB)
# Measured peak / the sum below, on the real 0.5B (docs/reliability.md): allocator slack, temporaries
SLACK = 1.15


@dataclass
class Estimate:
    what: str
    parts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return int(BASE + SLACK * sum(self.parts.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "total_bytes": self.total, "parts": dict(self.parts)}


def _params(spec: Any) -> tuple[int, int]:
    """(parameters of the linears, of one token table)."""
    h, i = spec.hidden_size, spec.intermediate_size
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    per_layer = (q + 2 * kv) * h + h * q + 2 * i * h + h * i
    return spec.num_layers * per_layer, spec.vocab_size * h


def sensitivity(spec: Any, seq_len: int, windows: int = 16) -> Estimate:
    """The layer-by-layer pass (quantize/sensitivity.py): one decoder layer, the token table(s) and the
    boundary activations of every window, never the whole model."""
    lin, table = _params(spec)
    h, i, L = spec.hidden_size, spec.intermediate_size, spec.num_layers
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    # autograd keeps, in one layer for one window, the normed inputs, q/k/v, the attention weights, the
    # MLP's gate, up and product (two of width i), and the residuals
    acts = seq_len * 4 * (6 * h + 2 * q + 4 * kv + 4 * i + 2 * spec.num_heads * seq_len)
    tables = "the table: weight, Fisher and gradient" if spec.tie_word_embeddings else \
        "the head: weight, Fisher and gradient"
    return Estimate("the sensitivity pass", {
        "one layer: weights, gradients and Fisher in fp32": 4 * 4 * lin // L,
        tables: 12 * table,
        # every window's layer output, gradient (old and new) and saved input, fp32
        "boundary activations of every window": 4 * 4 * windows * seq_len * h,
        "one layer's autograd activations for one window": acts,
        # logits, log-softmax, the sampling distribution and their gradients (fp32, one window)
        "logits and their gradient": 6 * 4 * seq_len * spec.vocab_size})


def calibration(spec: Any, samples: int, seq_len: int, method: str, out_bytes: int = 0) -> Estimate:
    lin, table = _params(spec)
    L, h, i = spec.num_layers, spec.hidden_size, spec.intermediate_size
    tokens = samples * seq_len
    widest = max(h, i, spec.num_heads * spec.head_dim)
    parts = {
        "one layer in fp32 (and its float copy)": 2 * 4 * lin // L,
        # a layer's inputs and outputs, the float targets, and the outputs as saved for a resume
        "calibration activations (inputs, outputs, float targets)": 4 * 4 * tokens * h,
        "the MLP's inner activations for a batch": 4 * 4 * min(tokens, 8 * seq_len) * i,
        # the source's table read in fp32 for the rows the windows use (the finished layers wait on disk,
        # quantize/resume.py, and are read back one at a time while the artifact is written)
        "the source's token table in fp32": 4 * table,
    }
    if method == "gptq":
        parts["Hessians of one layer (fp32) and the widest one's inverse"] = 4 * (3 * h * h + i * i) + 3 * 4 * widest ** 2
    else:  # AWQ keeps every linear's inputs of a layer for its scale search
        parts["a layer's linear inputs (AWQ)"] = 4 * tokens * (3 * h + i)
    return Estimate(f"{method.upper()} calibration", parts)


def writing(spec: Any, out_bytes: int, keep_packed: bool = False) -> Estimate:
    """Weights stream into the data file as they are packed; `keep_packed` (a GPTQ-format copy to write
    afterwards, --save-checkpoint) holds every packed linear until the end."""
    lin, table = _params(spec)
    tables = 1 if spec.tie_word_embeddings else 2
    parts = {"a token table in fp32 while it is packed": 4 * table * min(tables, 2),
             "one layer's weights in fp32 while packed": 4 * lin // spec.num_layers}
    if keep_packed:
        parts["the packed weights until written"] = out_bytes
    return Estimate("writing the artifact", parts)


def packed_bytes(spec: Any, bits_per_weight: float) -> int:
    lin, table = _params(spec)
    tables = 1 if spec.tie_word_embeddings else 2
    return int((lin + tables * table) * bits_per_weight / 8)


def session(spec: Any, weight_bytes: int, max_length: int, dtype_bytes: int = 4, quantized: bool = True) -> Estimate:
    kv = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * max_length * dtype_bytes
    return Estimate("running the model", {
        "weights (loaded" + (" and prepacked" if quantized else "") + ")": int(weight_bytes * (1.5 if quantized else 1.05)),
        "KV cache at the context length": kv, "logits of a prefill chunk": 4 * 256 * spec.vocab_size})


def _parse_bytes(text: str) -> int | None:
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?i?b?)?\s*", text.lower())
    if not m:
        return None
    unit = (m.group(2) or "b").rstrip("b").rstrip("i")
    return int(float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[unit])


def available_bytes() -> int | None:
    """Memory this process can still take: MemAvailable (page cache it may reclaim included), capped by a
    cgroup limit; QWEN_EDGE_MEMORY_LIMIT (e.g. 8GiB) overrides both. None where it cannot be read."""
    env = os.environ.get("QWEN_EDGE_MEMORY_LIMIT")
    if env:
        v = _parse_bytes(env)
        if v is None:
            raise InputError(f"QWEN_EDGE_MEMORY_LIMIT={env!r} is not a size like 8GiB")
        return v
    avail = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            lim = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            cur = int(f.read().strip())
        if lim != "max":
            free = int(lim) - cur
            avail = free if avail is None else min(avail, free)
    except (OSError, ValueError):
        pass
    return avail


def check(estimates: list[Estimate], instead: str, *, command: str) -> None:
    """Refuse (InputError: one line, exit 2) when the largest stage exceeds the available memory."""
    if os.environ.get("QWEN_EDGE_NO_MEMORY_CHECK") == "1":
        return
    avail = available_bytes()
    if avail is None or not estimates:
        return
    worst = max(estimates, key=lambda e: e.total)
    if worst.total > avail:
        big = max(worst.parts, key=worst.parts.get)
        raise InputError(f"{command} needs about {worst.total / GIB:.1f} GiB at its peak ({worst.what}: "
                         f"{big}), more than the {avail / GIB:.1f} GiB this machine has available; {instead}")


def check_artifact(folder: Any, manifest: dict[str, Any], *, command: str, max_length: int | None = None) -> None:
    """Refuse to load an artifact whose session would not fit (run, serve, bench, eval)."""
    from pathlib import Path
    m = manifest.get("model", {})
    try:
        data = sum(p.stat().st_size for p in Path(folder).glob("model.onnx*") if p.is_file())

        class _S:  # the manifest's model fields, as a spec
            num_layers, num_kv_heads, head_dim = int(m["num_layers"]), int(m["num_kv_heads"]), int(m["head_dim"])
            vocab_size = int(m["vocab_size"])
        length = int(max_length or manifest.get("max_length") or 4096)
    except (KeyError, TypeError, ValueError, OSError):
        return  # the manifest check reports a damaged folder; nothing to estimate from
    kv_bytes = 2 if manifest.get("dtype") == "fp16" else 4
    est = session(_S, data, length, kv_bytes, quantized=bool(manifest.get("quantization")))
    check([est], "give a smaller --max-length, or use a smaller (more quantized) model", command=command)


def check_export(spec: Any, *, command: str = "export") -> None:
    _, table = _params(spec)
    check([Estimate("writing the artifact", {"a token table in fp32 while it is written": 2 * 4 * table})],
          "use a machine with more memory", command=command)
