"""A quantization plan: one format per packed linear and for the embedding table(s), with its exact size.

A format is bits and block size, written "int4g32" (4-bit, 32 input channels per block) or "fp32" for a
float table. MatMulNBits stores per block a float32 scale and (asymmetric) a zero-point code, so

    bytes per weight = bits / 8 + (4 + bits / 8) / block   (int4g32: 0.641, int8g128: 1.039)

The plan is recorded in the manifest and saved beside the model as `recipe.json`; `--recipe FILE` replays
it (edit it like llama.cpp's per-tensor type overrides). Tensor names are the exporter's packed linears:
model.layers.N.self_attn.qkv_proj / o_proj, model.layers.N.mlp.gate_up_proj / down_proj; the tables are
"embedding" and "lm_head", or "table" when one tied matrix serves both. An untied embedding may also be
"lm_head+int4g64": the head's stored codes plus a residual in that format (HeadResidual).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..spec import LINEARS, ModelSpec  # LINEARS: the exporter's packed linears (spec.PACKED)

SCHEMA, VERSION = "qwen-edge-recipe", 1
_FMT = re.compile(r"^int([48])g(16|32|64|128|256)$")


@dataclass(frozen=True, order=True)
class Format:
    bits: int
    group_size: int

    @classmethod
    def parse(cls, text: str, what: str = "format") -> "Format | None":
        """'int4g32' -> Format(4, 32); 'fp32' -> None (a float table)."""
        t = str(text).strip().lower()
        if t in ("fp32", "float", "none"):
            return None
        m = _FMT.match(t)
        if not m:
            raise InputError(f"unknown {what} '{text}': use int4gN or int8gN with N in 16, 32, 64, 128, 256, "
                             "or fp32 for a table")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"int{self.bits}g{self.group_size}"

    def nbytes(self, rows: int, cols: int) -> int:
        """Bytes MatMulNBits / GatherBlockQuantized store for a [rows, cols] weight (asymmetric)."""
        blocks = -(-cols // self.group_size)
        codes = rows * blocks * self.group_size * self.bits // 8
        zeros = rows * (-(-blocks * self.bits // 8))  # packed per row (4-bit: two per byte)
        return codes + rows * blocks * 4 + zeros


@dataclass(frozen=True)
class HeadResidual:
    """An embedding stored as the LM head's codes (gathered, not stored again) plus `residual`, the
    embedding minus the dequantized head, in its own format.

    For a source whose two table copies are two quantizations of one matrix (the 0.5B's GGUF: Q5_0 and
    Q8_0, 4.4 % apart): tying them costs KL ~0.0005 at int8, a second int8 table ~150 MiB; an int4g64
    residual is ~74 MiB and leaves the embedding closer to the source than int8g32 would (0.34 % against
    0.49 % relative error, measured)."""

    residual: Format

    def __str__(self) -> str:
        return f"lm_head+{self.residual}"


def parse_table(text: str, role: str) -> "Format | HeadResidual | None":
    """A table's format in a recipe: int4gN / int8gN / fp32, or lm_head+int4gN for an untied embedding."""
    t = str(text).strip().lower()
    if t.startswith("lm_head+"):
        if role != "embedding":
            raise InputError(f"'{text}': only an untied embedding can be stored as the head plus a residual")
        f = Format.parse(t[len("lm_head+"):], f"residual format for {role}")
        if f is None:
            raise InputError(f"'{text}': the residual must be int4gN or int8gN")
        return HeadResidual(f)
    return Format.parse(t, f"format for {role}")


def table_bytes(role: str, f: "Format | HeadResidual | None", vocab: int, hidden: int,
                head: Format | None = None) -> int:
    """An embedding ("embedding"), LM head ("lm_head") or one tied table serving both ("table").

    The head is a MatMulNBits; the embedding a GatherBlockQuantized over the same codes and scales, with
    its own zero points at one byte per block (export/nbits.py), so a tied table stores those twice."""
    if f is None:
        return vocab * hidden * 4
    if isinstance(f, HeadResidual):  # the head's codes and scales are shared: its gather zeros, then the residual
        if head is None:
            raise InputError("an embedding stored as the head plus a residual needs a quantized lm_head")
        return vocab * -(-hidden // head.group_size) + table_bytes("embedding", f.residual, vocab, hidden)
    gather_zeros = vocab * -(-hidden // f.group_size)
    if role == "lm_head":
        return f.nbytes(vocab, hidden)
    if role == "embedding":
        return f.nbytes(vocab, hidden) - vocab * -(-(-(-hidden // f.group_size)) * f.bits // 8) + gather_zeros
    return f.nbytes(vocab, hidden) + gather_zeros


def fmt_str(f: "Format | HeadResidual | None") -> str:
    return "fp32" if f is None else str(f)


def linear_shapes(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """[out, in] of every packed linear, by exporter name."""
    h, i = spec.hidden_size, spec.intermediate_size
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    shapes = {"self_attn.qkv_proj": (q + 2 * kv, h), "self_attn.o_proj": (h, q), "mlp.gate_up_proj": (2 * i, h),
              "mlp.down_proj": (h, i)}
    return {f"model.layers.{n}.{k}": shapes[k] for n in range(spec.num_layers) for k in LINEARS}


@dataclass
class Plan:
    linears: dict[str, Format]
    tables: dict[str, Any]  # {"table": f} when tied, else {"embedding": f or HeadResidual, "lm_head": f}

    @property
    def tied(self) -> bool:
        return "table" in self.tables

    @property
    def embedding(self) -> "Format | HeadResidual | None":
        return self.tables["table" if self.tied else "embedding"]

    @property
    def lm_head(self) -> Format | None:
        return self.tables["table" if self.tied else "lm_head"]

    def weight_bytes(self, spec: ModelSpec) -> int:
        shapes = linear_shapes(spec)
        n = sum(f.nbytes(*shapes[k]) for k, f in self.linears.items())
        return n + sum(table_bytes(k, f, spec.vocab_size, spec.hidden_size, self.tables.get("lm_head"))
                       for k, f in self.tables.items())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.linears.values():
            out[str(f)] = out.get(str(f), 0) + 1
        return dict(sorted(out.items()))

    def to_json(self, spec: ModelSpec, method: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": VERSION, "method": method,
                "model": {"model_type": spec.model_type, "num_layers": spec.num_layers,
                          "hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
                          "vocab_size": spec.vocab_size},
                "tables": {k: fmt_str(f) for k, f in self.tables.items()},
                "linears": {k: str(f) for k, f in self.linears.items()},
                **(extra or {})}


def uniform(spec: ModelSpec, fmt: Format, tables: dict[str, Format | None],
            overrides: dict[int, Format] | None = None) -> Plan:
    """Every linear in `fmt` (layers in `overrides` in theirs)."""
    overrides = overrides or {}
    linears = {name: overrides.get(int(name.split(".")[2]), fmt) for name in linear_shapes(spec)}
    return Plan(linears, dict(tables))


def load(path: str | Path, spec: ModelSpec) -> tuple[Plan, dict[str, Any]]:
    """A recipe file checked against the model: every linear named once with a valid format."""
    path = Path(path)
    try:
        r = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"recipe {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read recipe {path}: {e}") from None
    if not isinstance(r, dict) or r.get("schema") != SCHEMA:
        raise InputError(f"{path} is not a qwen-edge recipe")
    if int(r.get("version", 0)) > VERSION:
        raise InputError(f"{path} has recipe version {r.get('version')}; this qwen-edge reads up to {VERSION}")
    m = r.get("model", {})
    for key in ("num_layers", "hidden_size", "intermediate_size", "vocab_size"):
        if m.get(key) != getattr(spec, key):
            raise InputError(f"recipe {path} was made for a model with {key} {m.get(key)}; this one has "
                             f"{getattr(spec, key)}")
    want = linear_shapes(spec)
    given = r.get("linears")
    if not isinstance(given, dict):
        raise InputError(f"recipe {path} has no 'linears' table")
    unknown = sorted(set(given) - set(want))
    missing = sorted(set(want) - set(given))
    if unknown or missing:
        raise InputError(f"recipe {path} does not fit this model: "
                         + (f"unknown tensor {unknown[0]}" if unknown else f"no format for {missing[0]}"))
    linears = {}
    for k in want:
        f = Format.parse(given[k], f"format for {k}")
        if f is None:
            raise InputError(f"recipe {path}: {k} must be int4gN or int8gN (linears are never float)")
        linears[k] = f
    tables = r.get("tables")
    if not isinstance(tables, dict) or set(tables) not in ({"table"}, {"embedding", "lm_head"}):
        raise InputError(f"recipe {path}: 'tables' must be {{\"table\": ...}} (tied) or "
                         "{\"embedding\": ..., \"lm_head\": ...}")
    parsed = {k: parse_table(v, k) for k, v in tables.items()}
    if isinstance(parsed.get("embedding"), HeadResidual) and parsed.get("lm_head") is None:
        raise InputError(f"recipe {path}: an embedding stored as the head plus a residual needs a quantized lm_head")
    return Plan(linears, parsed), r


def save(plan_json: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(plan_json, indent=2) + "\n", encoding="utf-8")


def parse_size(text: str) -> int:
    """'450MiB' / '0.45GB' / '1TB' / '471859200' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?i?[bB]?)\s*", str(text))
    if not m:
        raise InputError(f"--target-size '{text}' is not a size like 450MiB, 0.5GB or 471859200")
    unit = m.group(2).lower().rstrip("b")
    mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
            "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}.get(unit)
    if mult is None:
        raise InputError(f"--target-size '{text}': unknown unit {m.group(2)!r} "
                         "(use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return int(float(m.group(1)) * mult)


def human_size(n: float) -> str:
    """Bytes as a person reads them: 1.0 KiB, 409.6 MiB, 1.2 GiB (never '0.0 MiB' for a small size)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"
