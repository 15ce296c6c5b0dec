"""Which format each tensor gets: a uniform plan, a replayed recipe, or an allocation to a size, bits-per-weight
or KL target from the measured sensitivity of every tensor (sensitivity.py, allocate.py), within a decode-
speed budget from the measured cost of every format on this CPU (format_costs.py)."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .recipe import Format, Plan, human_size

# Candidates for allocation: every block size onnxruntime's MatMulNBits runs on its fast path (accuracy
# level 4) from 16 to 128, at 4 and 8 bits. Which pay off is for the predicted KL, the bytes and the
# measured time to decide: int4g16 and int8g32 are the most accurate steps and the slowest per byte.
LINEAR_CHOICES = ("int4g128", "int4g64", "int4g32", "int4g16", "int8g128", "int8g64", "int8g32")
TABLE_CHOICES = ("int4g128", "int4g64", "int4g32", "int8g128", "int8g64", "int8g32")
# The default speed floor of an allocation: predicted decode at least that of the plain int4 file
# (`--bits 4`: every linear int4g32, the table(s) int8g128), so buying accuracy never makes a file slower.
SPEED_REFERENCE = ("int4g32", "int8g128")  # (linears, tables)


def parse_layers(text: str | None, num_layers: int) -> frozenset[int]:
    """'0,1,-1' -> {0, 1, num_layers - 1}; negative indices count from the end."""
    if not text:
        return frozenset()
    out = set()
    for part in str(text).split(","):
        try:
            i = int(part.strip())
        except ValueError:
            raise InputError(f"--int8-layers takes layer indices like 0,1,-1; got '{part.strip()}'") from None
        if not -num_layers <= i < num_layers:
            raise InputError(f"--int8-layers: layer {i} is outside the model's {num_layers} layers")
        out.add(i % num_layers)
    return frozenset(out)


# Predicted KLs are stored to 7 decimals and their noise between window draws is far above that: a KL target
# below this cannot be told apart from zero (and no 4- or 8-bit plan reaches it).
KL_RESOLUTION = 1e-6

def parse_goal(target_size, bpw, target_kl) -> tuple[str, float] | None:
    from .recipe import parse_size
    if target_size is not None:
        return ("size", parse_size(str(target_size)) if not isinstance(target_size, int) else target_size)
    if bpw is not None:
        if not 2.0 <= float(bpw) <= 16.0:
            raise InputError(f"--bpw {bpw} is outside 2..16 bits per weight")
        return ("bpw", float(bpw))
    if target_kl is not None:
        if not float(target_kl) > 0:
            raise InputError(f"--target-kl {target_kl} must be a positive number (nats per token)")
        if float(target_kl) < KL_RESOLUTION:  # before the sensitivity pass (minutes): it cannot be met or told
            raise InputError(f"--target-kl {target_kl:g} is below what the sensitivity pass resolves "
                             f"({KL_RESOLUTION:g} nats per token; int8 files measure ~1e-3): give a larger target, "
                             "or --bits 8 for the most accurate file")
        return ("kl", float(target_kl))
    return None


def parse_speed(text: str | float | None) -> tuple[str, float] | None:
    """'70tok/s' or '70' -> ("tps", 70); '1.2x' -> ("x", 1.2): times the predicted decode speed of the plain
    int4 plan (SPEED_REFERENCE); '0' -> None (accuracy alone). None -> the default, 1x."""
    if text is None:
        return ("x", 1.0)
    t = str(text).strip().lower().replace(" ", "")
    try:
        if t.endswith("x"):
            v, kind = float(t[:-1]), "x"
        else:
            v, kind = float(t.removesuffix("tok/s").removesuffix("tps")), "tps"
    except ValueError:
        raise InputError(f"--target-speed '{text}': give tokens per second (70tok/s), a multiple of the plain int4 "
                         "plan's speed (1.2x) or 0 for accuracy alone") from None
    if v == 0:
        return None
    if not (v > 0 and v < 1e5) or (kind == "x" and v > 100):
        raise InputError(f"--target-speed {text} is out of range")
    return (kind, v)


def uniform_plan(spec, bits: int, group_size: int, e_bits, h_bits, token_group_size: int, int8_layers) -> Plan:
    from .recipe import uniform
    keep8 = parse_layers(int8_layers, spec.num_layers) if bits == 4 else frozenset()
    over = {i: Format(8, group_size) for i in keep8}
    ef = None if e_bits is None else Format(e_bits, token_group_size)
    hf = None if h_bits is None else Format(h_bits, token_group_size)
    tables = {"table": ef} if spec.tie_word_embeddings and ef == hf else {"embedding": ef, "lm_head": hf}
    return uniform(spec, Format(bits, group_size), tables, over)


def fixed_bytes(src, max_length: int) -> int:
    """Everything in the folder but the quantized weights, at its largest: tokenizer and config files, the
    graph, norms, biases, RoPE tables and the external-data alignment (4 KiB per tensor at most)."""
    from ..export.writer import context_limit
    s = src.spec
    ml = max_length or context_limit(s)
    tok = sum(p.stat().st_size for p in Path(src._staged.name).iterdir()) if src._staged else 16 << 20
    floats = 2 * ml * (s.head_dim // 2) + (2 * s.num_layers + 1) * s.hidden_size
    floats += s.num_layers * ((s.num_heads + 2 * s.num_kv_heads) * s.head_dim * s.qkv_bias + 2 * s.head_dim * s.qk_norm)
    tensors = 16 * s.num_layers + 16
    return tok + 4 * floats + 4096 * tensors + (1 << 20)  # + 1 MiB: graph, manifest, recipe, configs


def cached_sensitivity(src, windows: np.ndarray, cand: dict, seed: int, compute) -> tuple[dict, str | None]:
    """The per-tensor predicted KL, computed once per source, windows and candidate formats: it is the slow
    half of an allocation (about 40 minutes for the 1.5B on 2 cores) and a second `--target-size` or
    `--target-kl` of the same model only changes the allocation. Kept under the cache folder as JSON; returns
    (prediction, the file it was read from or None)."""
    import json

    from .. import __version__
    from ..cache import cache_dir
    from .resume import _write_atomic, fingerprint, source_identity
    from .sensitivity import METHOD_VERSION
    key = fingerprint({"version": __version__, "method": METHOD_VERSION, "sources": source_identity(src.paths),
                       "spec": repr(src.spec), "seed": seed,
                       "windows": hashlib.sha256(np.ascontiguousarray(windows).tobytes()).hexdigest(),
                       "formats": {k: [str(f) for f in v] for k, v in sorted(cand.items())}})
    path = cache_dir() / "sensitivity" / f"{key[:24]}.json"
    try:
        saved = json.loads(path.read_text())
        if saved.get("key") == key and set(saved["predicted_kl"]) == set(cand):
            return saved["predicted_kl"], str(path)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    pred = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": key, "predicted_kl": pred}, allow_nan=False)  # strict JSON, or not kept
        _write_atomic(path, lambda tmp: tmp.write_text(text))
    except (OSError, ValueError):
        pass  # only saves time next run
    return pred, None


def allocated_plan(src, budget, calibration, n_windows: int, seq_len: int, seed: int, max_length,
                   progress: bool, speed: tuple[str, float] | None = ("x", 1.0),
                   threads: int = 0) -> tuple[Plan, dict[str, Any]]:
    from . import allocate as A
    from .calibration_text import calibration_windows
    from .format_costs import costs_for, kind_of, kinds_of
    from .recipe import linear_shapes, table_bytes
    from .sensitivity import predicted_kl_by_layer
    spec = src.spec
    tables = ["table"] if spec.tie_word_embeddings else ["embedding", "lm_head"]
    shapes = linear_shapes(spec)
    cand = {k: [Format.parse(f) for f in LINEAR_CHOICES] for k in shapes}
    cand.update({t: [Format.parse(f) for f in TABLE_CHOICES] for t in tables})
    costs = None

    def seconds(k: str, f: Format) -> float:
        if costs is None or k == "embedding":  # the embedding is read one row per token
            return 0.0
        return costs.decode[kind_of(k)][str(f)]

    def options_from(pred: dict[str, dict[str, float]] | None) -> dict[str, list[A.Option]]:
        opts = {}
        for k, fmts in cand.items():
            opts[k] = [A.Option(str(f), f.nbytes(*shapes[k]) if k in shapes else
                                table_bytes(k, f, spec.vocab_size, spec.hidden_size),
                                pred[k][str(f)] if pred else 0.0, seconds(k, f)) for f in fmts]
        return opts
    fixed = fixed_bytes(src, max_length)
    params = sum(r * c for r, c in shapes.values()) + len(tables) * spec.vocab_size * spec.hidden_size
    kind, value = budget
    weights_budget = None
    if kind == "size":
        weights_budget = int(value) - fixed
    elif kind == "bpw":
        weights_budget = int(value * params / 8)
    if weights_budget is not None:  # refuse impossible budgets before the slow part
        sizes = options_from(None)
        lo, hi = A.cheapest(sizes), A.dearest(sizes)
        what = f"--target-size {human_size(value)}" if kind == "size" else f"--bpw {value}"
        if weights_budget < lo:
            low = human_size(lo + fixed) if kind == "size" else f"{lo * 8 / params:.1f} bits per weight"
            raise InputError(f"{what} is below the smallest plan (every tensor at int4 with blocks of 128: {low})")
        if weights_budget >= hi:
            high = human_size(hi + fixed) if kind == "size" else f"{hi * 8 / params:.1f} bits per weight"
            raise InputError(f"{what} is at or above the all-int8 size ({high}): use --bits 8")
    max_seconds, speed_info = float("inf"), {"target": "off (accuracy alone)"}
    if speed:  # after the size checks: measuring the formats takes minutes the first time on a machine
        costs = costs_for(kinds_of(spec), spec=spec, threads=threads, progress=progress)
        ref_lin, ref_tab = (Format.parse(f) for f in SPEED_REFERENCE)
        ref_s = sum(seconds(k, ref_lin if k in shapes else ref_tab) for k in cand)
        step = costs.step_s
        want_tps = speed[1] / (step + ref_s) if speed[0] == "x" else speed[1]
        max_seconds = 1.0 / want_tps - step
        speed_info = {"target": f"{speed[1]:g}x plain int4 (linears {SPEED_REFERENCE[0]}, tables {SPEED_REFERENCE[1]})"
                      if speed[0] == "x" else f"{speed[1]:g} tok/s",
                      "target_tps": round(want_tps, 2), "reference_tps": round(1 / (step + ref_s), 2),
                      "step_s": step, "cost_table": costs.machine}
        if max_seconds <= 0:
            raise InputError(f"--target-speed {want_tps:.1f} tok/s is beyond this CPU: the rest of a decode step "
                             f"alone takes {step * 1e3:.2f} ms ({1 / step:.0f} tok/s)")
        sizes = options_from(None)
        A.for_budgets(sizes, max_bytes=weights_budget if weights_budget is not None else float("inf"),
                      max_seconds=max_seconds)  # refuses an impossible pair before the slow part
    t0 = time.perf_counter()
    windows = calibration_windows(calibration, src.write_tokenizer, n_windows, seq_len, seed + 1)  # not GPTQ's
    pred, reused = cached_sensitivity(src, windows, cand, seed, lambda: predicted_kl_by_layer(
        spec, src.weights, windows, cand, seed=seed, progress=progress, threads=threads))
    if reused and progress:
        print(f"sensitivity: reused {reused} (same source, windows and formats)", file=sys.stderr, flush=True)
    options = options_from(pred)
    if costs is None:
        chosen = A.for_kl(options, value) if kind == "kl" else A.for_budget(options, weights_budget)
    else:
        chosen = A.for_budgets(options, max_bytes=weights_budget if weights_budget is not None else float("inf"),
                               max_seconds=max_seconds, kl_target=value if kind == "kl" else None)
    nbytes, kl, secs = A.totals3(chosen)
    if costs is not None:
        speed_info["predicted_tps"] = round(1 / (costs.step_s + secs), 2)
    plan = Plan({k: Format.parse(chosen[k].fmt) for k in shapes},
                {t: Format.parse(chosen[t].fmt) for t in tables})
    info = {"kind": {"size": "target-size", "bpw": "bpw", "kl": "target-kl"}[kind], "goal": value,
            "predicted_kl_rtn": round(kl, 6), "weight_bytes": nbytes, "fixed_bytes_max": fixed, "speed": speed_info,
            "sensitivity": {"windows": n_windows, "seq_len": seq_len, "seconds": round(time.perf_counter() - t0, 1),
                            "reused": bool(reused),
                            "predicted_kl": {k: {f: round(v, 7) for f, v in d.items()} for k, d in pred.items()}}}
    return plan, info
