"""`qwen-edge quantize`: source -> quantized artifact folder (MatMulNBits linears, GatherBlockQuantized
embedding, MatMulNBits LM head), optionally also a GPTQ-format Hugging Face checkpoint.

The plan (a format per tensor, recipe.py) comes from one of:
- `--recipe FILE`: replayed as written;
- `--target-size` / `--bpw` / `--target-kl`: sensitivity.py measures each tensor, allocate.py chooses;
- otherwise uniform: `--bits` / `--group-size` everywhere (`--int8-layers` at 8 bits), tables per
  `--embed-bits` / `--head-bits`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, OutputError, QwenEdgeError
from ..pack import check_bits, check_block_size
from .recipe import Format, HeadResidual, Plan

METHODS = ("rtn", "gptq", "awq")
RESIDUAL_FORMAT = Format(4, 64)  # an int8 plan's embedding residual (docs/quantize.md, "int8")
TOKEN_BITS = {"4": 4, "8": 8, "32": None, "fp32": None}
class _Overlay:
    """Source weights with some tensors replaced (AWQ's folded norm weights)."""

    def __init__(self, base, overrides: dict[str, np.ndarray]):
        self.base, self.overrides = base, overrides

    def get(self, name: str) -> np.ndarray:
        return self.overrides[name] if name in self.overrides else self.base.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.overrides or name in self.base


def parse_token_bits(value: str | int | None, what: str) -> int | None:
    key = str(value).lower()
    if key not in TOKEN_BITS:
        raise InputError(f"unsupported {what} precision '{value}': choose 8, 4 or fp32")
    return TOKEN_BITS[key]


def validate(method: str, bits: int, group_size: int, calibration: str | Sequence[str], damp: float, samples: int = 1,
             seq_len: int = 2) -> None:
    if method not in METHODS:
        raise InputError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    check_bits(bits)
    check_block_size(group_size)
    if not 0 < damp < 1:
        raise InputError(f"--damp {damp} is outside (0, 1)")
    if samples < 1 or seq_len < 2:
        raise InputError("--samples must be >= 1 and --seq-len >= 2")
    if method != "rtn":
        from .calibration_text import sources
        sources(calibration)


@dataclass
class QuantizeConfig:
    """Every option of one quantization: the one object the CLI and the Python API build (as `EvalConfig` is
    for eval). The defaults are the documented ones; `run` refuses a bad combination before reading weights."""

    source: str
    out: Path
    method: str = "gptq"
    bits: int = 4
    group_size: int = 32
    sym: bool = False
    act_order: bool = False
    damp: float = 0.01
    refit: bool = True
    float_target: bool = False
    calibration: str | Sequence[str] = "mix"
    samples: int = 32
    seq_len: int = 512
    seed: int = 0
    embed_bits: str | int = 8
    head_bits: str | int = 8
    token_group_size: int | None = None
    accuracy_level: int = 4
    max_length: int | None = None
    int8_layers: str | None = None
    tie_embeddings: str | None = None
    target_size: str | int | None = None
    bpw: float | None = None
    target_kl: float | None = None
    target_speed: str | float | None = None
    recipe: str | Path | None = None
    sensitivity_samples: int = 16
    ort_format: bool = False
    save_checkpoint: str | Path | None = None
    force: bool = False
    revision: str | None = None
    progress: bool = True

    @property
    def goals(self) -> list:
        return [g for g in (self.target_size, self.bpw, self.target_kl) if g is not None]


def quantize(source: str, out: str | Path, **options: Any) -> dict[str, Any]:
    """Quantize `source` into the artifact folder `out`; `options` are QuantizeConfig's fields."""
    return run(QuantizeConfig(str(source), Path(out), **options))


def run(c: QuantizeConfig) -> dict[str, Any]:
    from ..export.writer import check_output
    from ..outputs import check_target, overlaps
    from ..sources import local_paths, open_source
    from ..sources.tie import tie
    from .checkpoint import is_our_checkpoint
    from .plan import allocated_plan, parse_goal, parse_speed, uniform_plan

    out = Path(c.out)
    validate(c.method, c.bits, c.group_size, c.calibration, c.damp, c.samples, c.seq_len)
    # int8 is chosen for accuracy (KL <= 0.001): its tables use blocks of 32 (the head's int8 activations are
    # quantized per block); two copies of one matrix are not tied (that alone costs KL ~0.0005, measured)
    # but the embedding is stored as the head plus an int4g64 residual (~74 MiB instead of ~150);
    # int4 plans tie them (130 MiB) and keep the tables at blocks of 128
    goals = c.goals
    uniform8 = c.bits == 8 and not goals and c.recipe is None
    token_group_size = c.token_group_size or (32 if uniform8 else 128)
    tie_given = c.tie_embeddings
    tie_embeddings = c.tie_embeddings or ("residual" if uniform8 else "auto")
    check_block_size(token_group_size)
    if c.accuracy_level not in (0, 1, 2, 3, 4):
        raise InputError(f"--accuracy-level {c.accuracy_level} is outside 0..4")
    e_bits, h_bits = parse_token_bits(c.embed_bits, "embedding"), parse_token_bits(c.head_bits, "LM head")
    if len(goals) > 1 or (goals and c.recipe is not None):
        raise InputError("give one of --target-size, --bpw, --target-kl and --recipe")
    if tie_given == "residual" and (goals or c.recipe is not None):
        raise InputError("--tie-embeddings residual shapes a uniform plan's tables (--bits); a target or a recipe "
                         "sets the tables itself")
    budget = parse_goal(c.target_size, c.bpw, c.target_kl)
    speed = parse_speed(c.target_speed)
    if c.target_speed is not None and budget is None:
        raise InputError("--target-speed shapes an allocation: give it with --target-size, --bpw or --target-kl")
    if goals and not 1 <= c.sensitivity_samples <= 1024:
        raise InputError("--sensitivity-samples must be between 1 and 1024")
    local = local_paths(c.source)
    check_output(out, c.force, local)
    if c.recipe is not None and not Path(c.recipe).is_file():
        raise InputError(f"recipe {c.recipe} not found")
    if c.save_checkpoint is not None:
        if overlaps(Path(c.save_checkpoint), out):
            raise OutputError(f"--save-checkpoint {c.save_checkpoint} and -o {out} overlap: give two separate "
                              "folders")
        check_target(Path(c.save_checkpoint), force=c.force, is_ours=is_our_checkpoint, sources=local,
                     what="checkpoint output")
    t0 = time.perf_counter()
    src = open_source(c.source, revision=c.revision)
    if src.quantization:
        raise QwenEdgeError(f"{c.source} is already a {src.quantization.get('quant_method', 'quantized')} "
                            "checkpoint: export it directly (qwen-edge export) instead of re-quantizing")
    recipe_json: dict[str, Any] | None = None
    if c.recipe is not None:
        from . import recipe as R
        plan, recipe_json = R.load(c.recipe, src.spec)
        if plan.tied and not src.spec.tie_word_embeddings:
            tie_embeddings = "on"  # the recipe was made with one table
        elif not plan.tied and tie_given is None:  # two tables in the recipe: keep the source's two copies
            tie_embeddings = "residual" if isinstance(plan.embedding, HeadResidual) else "off"
    # before tie(), which reads both token tables: the estimate needs only the header
    _check_memory(src.spec, method=c.method, goal=budget, bits=c.bits, samples=c.samples, seq_len=c.seq_len,
                  max_length=c.max_length, recipe=c.recipe is not None, windows=c.sensitivity_samples,
                  keep_packed=c.save_checkpoint is not None)
    src, tie_info = tie(src, tie_embeddings)
    spec = src.spec
    if c.recipe is not None:
        if not plan.tied and spec.tie_word_embeddings and "lm_head" not in plan.tables:
            raise InputError(f"recipe {c.recipe} does not fit: its tables do not match this model's")
        if isinstance(plan.embedding, HeadResidual) and spec.tie_word_embeddings:
            raise InputError(f"recipe {c.recipe} stores the embedding as the LM head plus a residual, but this "
                             "model has one tied table: give it as \"table\": FORMAT")
        planned = {"kind": "recipe", "path": str(c.recipe)}
    elif goals:
        plan, planned = allocated_plan(src, budget, c.calibration, c.sensitivity_samples, c.seq_len, c.seed,
                                       c.max_length, c.progress, speed=speed)
    else:
        plan = uniform_plan(spec, c.bits, c.group_size, e_bits, h_bits, token_group_size, c.int8_layers)
        planned = {"kind": "uniform"}
    if tie_info.get("residual") and plan.tables.get("lm_head") is not None and "embedding" in plan.tables \
            and c.recipe is None and not goals:
        plan.tables["embedding"] = HeadResidual(RESIDUAL_FORMAT)
    if c.save_checkpoint is not None and len({f.bits for f in plan.linears.values()}) > 1:
        raise InputError("this plan mixes 4- and 8-bit linears, which a GPTQ checkpoint (one bits value) cannot "
                         "hold; drop --save-checkpoint")

    info = _info(c.method, plan, spec, c.sym, c.accuracy_level, tie_info, planned)
    manifest = _quantize_into(src, out, plan, info, c)
    manifest["quantize_seconds"] = round(time.perf_counter() - t0, 2)
    if budget and budget[0] == "size":
        size = sum((out / n).stat().st_size for n in manifest["files"]) + (out / "qwen_edge.json").stat().st_size
        if size > budget[1]:  # the estimate covers the worst case; this is the promise itself
            raise QwenEdgeError(f"internal: {out} is {size} bytes, over the {budget[1]}-byte budget")
    return manifest


def _check_memory(spec, *, method: str, goal, bits: int, samples: int, seq_len: int, max_length, recipe: bool,
                  windows: int = 16, keep_packed: bool = False) -> None:
    """Refuse before the slow part a job whose peak memory would exceed the machine's (footprint.py)."""
    from .. import footprint as FP
    if goal and goal[0] == "size":
        out = int(goal[1])
    else:
        out = FP.packed_bytes(spec, goal[1] if goal and goal[0] == "bpw" else 8.6 if bits == 8 or goal else 4.8)
    stages = [FP.writing(spec, out, keep_packed)]
    if goal:
        stages.append(FP.sensitivity(spec, seq_len, windows))
    if method != "rtn":
        stages.append(FP.calibration(spec, samples, seq_len, method, out))
    worst = max(stages, key=lambda e: e.total)
    cheaper = []
    if goal and worst.what == "the sensitivity pass":
        plain = [FP.writing(spec, FP.packed_bytes(spec, 4.8))] + \
            ([FP.calibration(spec, samples, seq_len, method, FP.packed_bytes(spec, 4.8))] if method != "rtn" else [])
        cheaper.append(f"a plan without the sensitivity pass fits in about "
                       f"{max(e.total for e in plain) / FP.GIB:.1f} GiB: --recipe FILE or a uniform --bits 4")
    if method != "rtn" and worst.what.endswith("calibration"):
        cheaper.append(f"--method rtn needs about {FP.writing(spec, out, keep_packed).total / FP.GIB:.1f} GiB")
    FP.check(stages, "; ".join(cheaper) or "use a machine with more memory", command="quantize")


def _info(method: str, plan: Plan, spec, sym: bool, accuracy_level: int, tie_info: dict,
          planned: dict[str, Any]) -> dict[str, Any]:
    bits = sorted({f.bits for f in plan.linears.values()})
    groups = sorted({f.group_size for f in plan.linears.values()})
    return {"method": method, "bits": bits[0] if len(bits) == 1 else bits,
            "group_size": groups[0] if len(groups) == 1 else groups, "sym": sym, "format": "MatMulNBits",
            "accuracy_level": accuracy_level, "tie_embeddings": tie_info,
            "embedding": _fmt_json(plan.embedding), "lm_head": _fmt_json(plan.lm_head),
            "plan": {"how": planned, "counts": plan.counts(),
                     "tables": {k: "fp32" if f is None else str(f) for k, f in plan.tables.items()},
                     "linears": {k: str(f) for k, f in plan.linears.items()}}}


def _fmt_json(f) -> dict | None:
    if isinstance(f, HeadResidual):
        return {"head_plus_residual": _fmt_json(f.residual)}
    return None if f is None else {"bits": f.bits, "group_size": f.group_size}


def _quantize_into(src, out: Path, plan: Plan, info: dict, c: QuantizeConfig) -> dict:
    from ..export.nbits import QuantTokens, nbits_linear
    from ..export.writer import write_artifact
    from ..pack import rtn
    from . import recipe as R
    from .layer_by_layer import Options, calibrate, rtn_linears
    from .calibration_text import calibration_windows, label
    spec, weights = src.spec, src.weights
    tokens = QuantTokens(lambda w, b, g: rtn(w, b, g, sym=False), plan.embedding, plan.lm_head, c.accuracy_level,
                         head_weight=lambda: src.weights.get("lm_head.weight"))
    result = None
    linears: dict = {}
    if c.method == "rtn":
        rtn_lookup = rtn_linears(lambda name: plan.linears[name], c.sym)

        def lookup(name: str, w: np.ndarray):
            p = rtn_lookup(name, w)
            if c.save_checkpoint is not None:  # kept only for the GPTQ-format copy, written after the artifact
                linears[name] = p
            return p
    else:
        if c.samples * c.seq_len < max(spec.intermediate_size, spec.hidden_size):
            import sys
            print(f"warning: {c.samples} x {c.seq_len} = {c.samples * c.seq_len} calibration tokens is fewer than "
                  f"down_proj's {spec.intermediate_size} inputs: its Hessian is rank-deficient and damping "
                  "decides; use --samples / --seq-len for at least that many", file=sys.stderr)
        windows = calibration_windows(c.calibration, src.write_tokenizer, c.samples, c.seq_len, c.seed)
        embed_dq, calib_ids = None, windows
        if plan.embedding is not None:  # the rows the windows use, as the graph will see them (quantized)
            f = plan.embedding
            rows, inv = np.unique(windows, return_inverse=True)
            table = weights.get("model.embed_tokens.weight")
            if isinstance(f, HeadResidual):
                from ..export.nbits import residual_rows
                embed_dq = residual_rows(table[rows], weights.get("lm_head.weight")[rows], f, plan.lm_head,
                                         lambda w, b, g: rtn(w, b, g, sym=False))
            else:
                embed_dq = rtn(np.asarray(table[rows], dtype=np.float32), f.bits, f.group_size).dequantize()
            del table
            calib_ids = inv.reshape(windows.shape)  # indexes into those rows (blocks run along a row)
        opts = Options(method=c.method, formats=dict(plan.linears), sym=c.sym, act_order=c.act_order, damp=c.damp,
                       refit=c.refit, asymmetric=c.float_target)
        checkpoint = _calibration_checkpoint(out, src, plan, info, windows, method=c.method, sym=c.sym,
                                             act_order=c.act_order, damp=c.damp, refit=c.refit,
                                             float_target=c.float_target)
        result = calibrate(spec, weights, calib_ids, opts, embed_dequant=embed_dq, progress=c.progress,
                           checkpoint=checkpoint)
        del embed_dq
        weights = _Overlay(weights, result.overrides)
        linears = result.linears

        def lookup(name: str, w: np.ndarray):
            return linears[name]
        info.update(calibration=label(c.calibration), samples=c.samples, seq_len=c.seq_len, seed=c.seed)
        if c.method == "gptq":
            info.update(act_order=c.act_order, damp=c.damp, refit=c.refit, true_sequential=True,
                        float_target=c.float_target)
        info["calibration_seconds"] = round(result.seconds, 1)
    src.weights = weights
    recipe_json = plan.to_json(spec, c.method, {"how": info["plan"]["how"].get("kind")})

    def extra(tmp: Path) -> None:
        R.save(recipe_json, tmp / "recipe.json")
    manifest = write_artifact(src, out, max_length=c.max_length, force=c.force,
                              linear=nbits_linear(lookup, c.accuracy_level), tokens=tokens, quantization=info,
                              progress=c.progress, extra_files=extra, ort_format=c.ort_format)
    manifest["tied_embedding_shared"] = tokens.shared
    if result is not None:
        manifest["per_layer_error"] = result.per_layer_error
        if result.refit_gain:
            manifest["refit_error_ratio_mean"] = float(np.mean(result.refit_gain))
    if c.save_checkpoint is not None:
        from .checkpoint import save_gptq_checkpoint
        save_gptq_checkpoint(src, linears, Path(c.save_checkpoint), {**info, "bits": plan.linears[next(iter(
            plan.linears))].bits, "group_size": _one_group(plan)}, force=c.force, sources=src.paths)
    if result is not None:
        checkpoint.remove()  # everything is written: the saved layers are no longer needed
    return manifest


def _calibration_checkpoint(out: Path, src, plan: Plan, info: dict, windows: np.ndarray, **options):
    """Where finished layers are kept (resume.py), keyed by everything that decides their values."""
    from .. import __version__
    from . import resume
    job = {"version": __version__, "sources": resume.source_identity(src.paths), **options,
           "linears": {k: str(f) for k, f in plan.linears.items()}, "embedding": str(plan.embedding),
           "tie": info.get("tie_embeddings"), "windows": hashlib.sha256(np.ascontiguousarray(windows).tobytes()).hexdigest()}
    return resume.Checkpoint(resume.folder_for(Path(out)), resume.fingerprint(job))


def _one_group(plan: Plan) -> int:
    groups = {f.group_size for f in plan.linears.values()}
    if len(groups) > 1:
        raise InputError("a GPTQ checkpoint holds one group size; this plan mixes several")
    return groups.pop()
