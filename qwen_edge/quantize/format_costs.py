"""What each weight format costs in time on this CPU, measured at the model's own shapes; cached.

The allocation (allocate.py) trades predicted KL against bytes; decode speed is a second budget, because
bytes do not price time: onnxruntime's MatMulNBits runs some formats far slower per byte than others
(its x86 8-bit GEMV, and small blocks, are bound by unpacking and dot products on a 2-core machine, not
by memory). So every candidate format is timed here, once per (onnxruntime version, CPU, threads, shapes):

- one graph per (shape, format) holding R copies of a MatMulNBits, each with its own random codes,
  scales and zero points (identical copies share memory in onnxruntime: measured 115 GB/s, reads from
  cache, against 35 GB/s for distinct ones), R chosen so the copies together pass COLD_BYTES: each call
  reads its weights from memory, not from cache, as in a decode step that reads every linear once;
- at M=1 (a decode step) and at M=PREFILL_M (a prefill chunk); outputs are bound once (IO binding), the
  median of several passes over the R copies, divided by R, is the seconds per call;
- one session at a time. Timing formats round-robin (all sessions of a shape alive, passes alternating)
  would cancel the machine's drift, but co-resident sessions slow each other by ~1.7x (measured: gate_up
  int4g16/g32/g64 237/159/140 us alone, 424/241/244 us together), so it is not done: on a busy machine
  the table inherits its drift (one call read 162 us in one table and 293 us in the next here), and
  `costs_for(..., refresh=True)` measures again;
- accuracy_level 4 and the runtime's session settings (spinning threads), as the artifacts run.

The head is timed at M=1 in both columns: the runtime computes only the last position's logits.
The table is a JSON file under the cache (`format-costs/`); the allocation reads it (plan.py), and
`qwen-edge bench --predicted` (predicted_decode) and scripts/bench_speed_model.py set its predictions
beside measured decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import cache_dir
from ..errors import InputError
from ..ort_options import session_options
from ..spec import LINEARS, ModelSpec
from .recipe import Format, linear_shapes

SCHEMA = 5  # 2: distinct copies (identical ones were shared); 3-4: round-robin (wrong, see above); 5: one at a time
CANDIDATES = ("int4g16", "int4g32", "int4g64", "int4g128", "int4g256", "int8g32", "int8g64", "int8g128",
              "int8g256")
COLD_BYTES = 256 << 20
PREFILL_M = 256
MAX_COPIES = 256  # tiny shapes: enough copies to time them, not a graph of thousands of nodes
STEP_CONTEXT = 512  # cached positions when the rest of a decode step is timed (the benchmarks' prompt)
KINDS = (*LINEARS, "lm_head")


@dataclass
class CostTable:
    """Seconds per call of each format at each weight kind ([out, in] shapes in `shapes`)."""

    shapes: dict[str, tuple[int, int]]
    decode: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> format -> s at M=1
    prefill: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> format -> s at M=PREFILL_M
    machine: dict[str, Any] = field(default_factory=dict)
    step_s: float = 0.0  # the rest of a decode step (step_seconds), when measured for a model

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "shapes": {k: list(v) for k, v in self.shapes.items()}, "decode": self.decode,
                "prefill": self.prefill, "machine": self.machine, "prefill_m": PREFILL_M,
                "cold_bytes": COLD_BYTES, "step_s": self.step_s, "step_context": STEP_CONTEXT}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CostTable":
        return cls({k: tuple(v) for k, v in d["shapes"].items()}, d["decode"], d["prefill"], d.get("machine", {}),
                   float(d.get("step_s", 0.0)))

    def decode_seconds(self, plan: dict[str, str]) -> float:
        """Predicted seconds of a decode step for a plan {tensor name: format} (tables included)."""
        return self.step_s + sum(0.0 if k == "embedding" else self.decode[kind_of(k)][f] for k, f in plan.items())

    def gbps(self, kind: str, fmt: str) -> float:
        """The format's effective read rate at M=1 (GB/s): its bytes over its time."""
        n, k = self.shapes[kind]
        return Format.parse(fmt).nbytes(n, k) / self.decode[kind][fmt] / 1e9


def kinds_of(spec: Any) -> dict[str, tuple[int, int]]:
    """[out, in] of each weight kind whose cost is measured: the four packed linears and the head."""
    shapes = linear_shapes(spec)
    out = {k: shapes[f"model.layers.0.{k}"] for k in KINDS[:4]}
    out["lm_head"] = (spec.vocab_size, spec.hidden_size)
    return out


def kind_of(name: str) -> str:
    """The kind of a plan's tensor name: 'model.layers.3.mlp.down_proj' -> 'mlp.down_proj'; tables -> lm_head."""
    if name in ("table", "lm_head", "embedding"):
        return "lm_head"
    return name.split(".", 3)[3]


def machine() -> dict[str, Any]:
    """What invalidates a table: onnxruntime's version and the CPU."""
    import onnxruntime as ort
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
        cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), cpu)
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
        cpu += " [" + " ".join(sorted(f for f in flags if f.startswith(("avx", "amx")) or f in ("fma",))) + "]"
    except OSError:
        pass
    return {"onnxruntime": ort.__version__, "cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine()}


def _graph(n: int, k: int, f: Format, copies: int, m: int) -> bytes:
    """A model of `copies` MatMulNBits [m, k] x [k, n] at format f, each with its own weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from ..pack import rtn, to_matmulnbits
    rng = np.random.default_rng(0)
    p = to_matmulnbits(rtn(rng.standard_normal((n, k), dtype=np.float32) * 0.02, f.bits, f.group_size))
    nodes, inits, outs = [], [], []
    for c in range(copies):  # random codes: only the layout matters for the time, and no two copies agree
        b, s, z = f"B{c}", f"S{c}", f"Z{c}"
        inits += [numpy_helper.from_array(rng.integers(0, 256, p.B.shape, np.uint8), b),
                  numpy_helper.from_array(rng.uniform(1e-3, 2e-3, p.scales.size).astype(np.float32).reshape(n, -1), s),
                  numpy_helper.from_array(rng.integers(0, 256, p.zero_points.shape, np.uint8), z)]
        nodes.append(helper.make_node("MatMulNBits", ["X", b, s, z], [f"Y{c}"], domain="com.microsoft", K=k, N=n,
                                      bits=f.bits, block_size=f.group_size, accuracy_level=4))
        outs.append(helper.make_tensor_value_info(f"Y{c}", TensorProto.FLOAT, [m, n]))
    g = helper.make_graph(nodes, "cost", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [m, k])], outs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 10
    return model.SerializeToString()


class _Timer:
    """One session of `copies` MatMulNBits at one format, its input and outputs bound once."""

    def __init__(self, n: int, k: int, f: Format, m: int, threads: int, cold_bytes: int):
        import onnxruntime as ort
        copies = min(MAX_COPIES, max(1, -(-cold_bytes // f.nbytes(n, k))))
        if m > 1:
            copies = min(copies, 4)  # compute-bound: a few copies are enough, and keep the outputs small
        self.sess = ort.InferenceSession(_graph(n, k, f, copies, m), session_options(threads),
                                         providers=["CPUExecutionProvider"])
        self.x = np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)
        self.io = self.sess.io_binding()
        self.io.bind_cpu_input("X", self.x)
        self.ys = [np.empty((m, n), np.float32) for _ in range(copies)]
        for c, y in enumerate(self.ys):
            self.io.bind_output(f"Y{c}", "cpu", 0, np.float32, list(y.shape), y.ctypes.data)
        self.copies, self.times = copies, []
        for _ in range(2):
            self.sess.run_with_iobinding(self.io)

    def once(self) -> None:
        # Sessions that ran just before keep their threads spinning for a while: on 2 cores they would
        # contend with this one (measured: every call 3x slower). Let them settle, then warm this
        # session's own pool with an untimed call, as consecutive nodes of one model find it.
        time.sleep(0.005)
        self.sess.run_with_iobinding(self.io)
        t = time.perf_counter()
        self.sess.run_with_iobinding(self.io)
        self.times.append(time.perf_counter() - t)

    def seconds(self) -> float:
        return float(np.median(self.times)) / self.copies


def time_formats(n: int, k: int, formats: list[Format], m: int, threads: int = 0, passes: int = 7,
                 cold_bytes: int = COLD_BYTES) -> list[float]:
    """Median seconds of one MatMulNBits call [m, k] x [k, n] per format, weights out of cache, one format's
    session at a time (co-resident sessions slow each other: the module docstring)."""
    out: list[float] = []
    for f in formats:
        t = _Timer(n, k, f, m, threads, cold_bytes)
        for _ in range(passes):
            t.once()
        out.append(t.seconds())
        del t  # its session and weights go before the next format's are made
    return out


def _cache_path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir() / "format-costs" / f"{digest}.json"


def costs_for(shapes: dict[str, tuple[int, int]], *, spec: Any = None, threads: int = 0,
              formats: tuple[str, ...] = CANDIDATES, refresh: bool = False, progress: bool = True,
              cold_bytes: int = COLD_BYTES) -> CostTable:
    """The cost table for these shapes on this machine: from the cache, else measured (and cached). With
    `spec`, the rest of that model's decode step (step_seconds) is measured too."""
    dims = None if spec is None else {k: getattr(spec, k) for k in (
        "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
        "qkv_bias", "qk_norm", "tie_word_embeddings")}
    key = {"schema": SCHEMA, "shapes": {k: list(v) for k, v in shapes.items()}, "threads": threads,
           "formats": list(formats), "machine": machine(), "prefill_m": PREFILL_M, "cold_bytes": cold_bytes,
           "model": dims, "step_context": STEP_CONTEXT}
    path = _cache_path(key)
    if not refresh and path.is_file():
        try:
            return CostTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry: measure again
    table = CostTable(dict(shapes), machine={**key["machine"], "threads": threads})
    t0, total, done = time.perf_counter(), len(shapes) * len(formats), 0
    fmts = [Format.parse(fs) for fs in formats]
    for kind, (n, k) in shapes.items():
        table.decode[kind] = dict(zip(formats, time_formats(n, k, fmts, 1, threads, cold_bytes=cold_bytes)))
        table.prefill[kind] = dict(table.decode[kind]) if kind == "lm_head" else \
            dict(zip(formats, time_formats(n, k, fmts, PREFILL_M, threads, passes=3, cold_bytes=cold_bytes)))
        done += len(formats)
        if progress:
            print(f"\rformat costs: {done}/{total} ({kind}) {time.perf_counter() - t0:.0f} s", end="",
                  file=sys.stderr, flush=True)
    if spec is not None:
        table.step_s = step_seconds(spec, context=STEP_CONTEXT, threads=threads)
    if progress:
        print(f" (the rest of a decode step: {table.step_s * 1e3:.2f} ms)" if spec is not None else "",
              file=sys.stderr)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(table.to_dict(), indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only means measuring again next time
    return table


def predicted_decode(folder: Path, *, threads: int = 0, progress: bool = True) -> dict[str, Any]:
    """The decode speed this machine's cost table predicts for a quantized artifact (its recipe.json: a
    format per tensor), the figure `quantize --target-speed` plans with; `qwen-edge bench --predicted` sets
    it beside the measured one. Refuses a folder without a plan before any timing."""
    folder = Path(folder)
    try:
        r = json.loads((folder / "recipe.json").read_text(encoding="utf-8"))
        plan = {**r["linears"], **r["tables"]}
        spec = ModelSpec.from_dict(json.loads((folder / "qwen_edge.json").read_text(encoding="utf-8"))["model"])
    except FileNotFoundError:
        raise InputError(f"--predicted needs a quantized artifact (its recipe.json: a format per tensor); "
                         f"{folder} has none") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read the plan of {folder}: {e}") from None
    costs = costs_for(kinds_of(spec), spec=spec, threads=threads, progress=progress)
    try:
        seconds = costs.decode_seconds(plan)
    except KeyError as e:
        raise InputError(f"{folder}'s plan has a format the cost table does not time: {e}") from None
    return {"decode_tps": round(1 / seconds, 2), "step_ms": round(costs.step_s * 1e3, 3),
            "linears_and_head_ms": round((seconds - costs.step_s) * 1e3, 3), "context": STEP_CONTEXT,
            "cost_table": costs.machine}


# --- the rest of a decode step ----------------------------------------------------------------------------
class _ZeroWeights:
    """Every tensor of the checkpoint as a zero-strided view of one 0.0: shapes right, no memory."""

    def __init__(self, spec: Any):
        from ..sources.validate import expected_shapes
        self.shapes = expected_shapes(spec)

    def __contains__(self, name: str) -> bool:
        return name in self.shapes

    def get(self, name: str) -> np.ndarray:
        return np.broadcast_to(np.float32(0.0), self.shapes[name])


def _hollow_linear(g: Any, x: str, name: str, w: np.ndarray, b: np.ndarray | None) -> str:
    """[.., k] -> [.., n] by copying x (Concat, Slice): the shape a linear gives, at almost no cost."""
    n, k = w.shape
    reps = -(-n // k)
    y = x if reps == 1 else g.op("Concat", [x] * reps, f"{name}/hollow_concat", axis=-1)
    return g.op("Slice", [y, g.const([0], f"{name}/s0", np.int64), g.const([n], f"{name}/s1", np.int64),
                          g.const([-1], f"{name}/ax", np.int64)], f"{name}/hollow_slice")


class _HollowTokens:
    """The embedding as a Gather from a 16-row table, the head as a hollow linear [hidden -> vocab]."""

    def __init__(self, vocab: int, hidden: int):
        self.vocab, self.hidden = vocab, hidden

    def embed(self, g: Any, ids: str, w: np.ndarray) -> str:
        table = g.weight("hollow_embed", np.zeros((16, self.hidden), np.float32))
        return g.op("Gather", [table, g.op("Mod", [ids, g.const(16, "hollow_16", np.int64)], "embed/Mod")],
                    "embed/Gather")

    def head(self, g: Any, x: str, w: Any, embed_w: Any) -> str:
        return _hollow_linear(g, x, "lm_head", np.broadcast_to(np.float32(0), (self.vocab, self.hidden)), None)


def step_seconds(spec: Any, *, context: int = 512, steps: int = 48, threads: int = 0) -> float:
    """Median seconds of a decode step of this model's graph with every linear and the head replaced by a
    copy of its input: attention over `context` cached positions, norms, activations, the logits output
    and onnxruntime's per-node work, without the weights' reading. Added to the measured formats' costs
    it predicts a whole decode step."""
    import tempfile

    import onnxruntime as ort

    from ..export.decoder import build_decoder
    from ..export.graph import Graph
    length = context + steps + 1
    with tempfile.TemporaryDirectory(prefix="qwen-edge-step-") as tmp:
        g = Graph(Path(tmp) / "model.onnx.data")
        try:
            build_decoder(g, spec, _ZeroWeights(spec), max_length=length, linear=_hollow_linear,
                          tokens=_HollowTokens(spec.vocab_size, spec.hidden_size))
        finally:
            g.abort()
        g.save(Path(tmp) / "model.onnx", "hollow", overridable=["logits_to_keep"])
        sess = ort.InferenceSession(str(Path(tmp) / "model.onnx"), session_options(threads),
                                    providers=["CPUExecutionProvider"])
        shape = (1, spec.num_kv_heads, length, spec.head_dim)
        kv = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(2 * spec.num_layers)]
        b = sess.io_binding()
        for i in range(spec.num_layers):
            for j, kind in enumerate(("key", "value")):
                b.bind_ortvalue_input(f"past_key_values.{i}.{kind}", kv[2 * i + j])
                b.bind_ortvalue_output(f"present.{i}.{kind}", kv[2 * i + j])
        keep = ort.OrtValue.ortvalue_from_numpy(np.array(1, np.int64))
        b.bind_ortvalue_input("logits_to_keep", keep)
        logits = np.empty((1, 1, spec.vocab_size), np.float32)
        b.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        ids, ones = np.zeros((1, 1), np.int64), np.ones((1, length), np.int64)
        times = []
        for t in range(context, context + steps):
            b.bind_cpu_input("input_ids", ids)
            b.bind_cpu_input("attention_mask", ones[:, : t + 1])
            t0 = time.perf_counter()
            sess.run_with_iobinding(b)
            int(logits.argmax())  # the runtime's greedy pick reads the logits too
            times.append(time.perf_counter() - t0)
        return float(np.median(times[4:]))
