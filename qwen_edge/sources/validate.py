"""A source checked against itself before anything is written.

- The config's sizes are within sane bounds (a typo must not become a 3.6 TiB KV cache).
- Every tensor the config implies exists with the shape it implies (vocab, hidden, heads, kv heads,
  head_dim, intermediate, layer count), and no tensor is left unused (a config with too few layers
  would otherwise export a truncated model with exit code 0).
- The tokenizer loads, round-trips a string, fits the embedding, and its special tokens (end of
  sequence, padding, the chat template's markers) exist in its vocabulary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterable

from ..errors import SourceError
from ..spec import ModelSpec

# Far above any dense Qwen (152k vocab, 3584 hidden, 28 layers, 18944 intermediate, 128k context).
BOUNDS = {"vocab_size": 1 << 20, "hidden_size": 1 << 15, "intermediate_size": 1 << 17, "num_layers": 512,
          "num_heads": 1024, "num_kv_heads": 1024, "head_dim": 1024, "max_position_embeddings": 1 << 20}
# Names a checkpoint may hold that the graph derives or does not use.
IGNORABLE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
ROUND_TRIP = "Hello, world! 1234 naïve café — 你好, мир 👋\n\tdef f(x): return x ** 2"


def check_bounds(spec: ModelSpec) -> None:
    for name, limit in BOUNDS.items():
        v = int(getattr(spec, name))
        if v > limit:
            raise SourceError(f"invalid model config: {name} {v} is beyond any supported model (at most {limit})")
    if spec.num_heads * spec.head_dim > 4 * spec.hidden_size or spec.num_kv_heads > spec.num_heads:
        raise SourceError(f"invalid model config: {spec.num_heads} heads x head_dim {spec.head_dim} with "
                          f"{spec.num_kv_heads} kv heads does not fit hidden_size {spec.hidden_size}")


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Every tensor a Qwen dense checkpoint with this config holds, by Hugging Face name."""
    h, v, i = spec.hidden_size, spec.vocab_size, spec.intermediate_size
    q, kv = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,)}
    if not spec.tie_word_embeddings:
        out["lm_head.weight"] = (v, h)
    for n in range(spec.num_layers):
        p = f"model.layers.{n}"
        a = f"{p}.self_attn"
        out.update({f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
                    f"{a}.q_proj.weight": (q, h), f"{a}.k_proj.weight": (kv, h), f"{a}.v_proj.weight": (kv, h),
                    f"{a}.o_proj.weight": (h, q), f"{p}.mlp.gate_proj.weight": (i, h),
                    f"{p}.mlp.up_proj.weight": (i, h), f"{p}.mlp.down_proj.weight": (h, i)})
        if spec.qkv_bias:
            out.update({f"{a}.q_proj.bias": (q,), f"{a}.k_proj.bias": (kv,), f"{a}.v_proj.bias": (kv,)})
        if spec.qk_norm:
            out.update({f"{a}.q_norm.weight": (spec.head_dim,), f"{a}.k_norm.weight": (spec.head_dim,)})
    return out


def check_tensors(spec: ModelSpec, weights: Any, where: str, unknown: Iterable[str] = ()) -> None:
    """Every expected tensor present with its shape; nothing left over (an o_proj bias is optional)."""
    check_bounds(spec)
    want = expected_shapes(spec)
    have = set(weights.names())
    for name, shape in want.items():
        if name not in have:
            raise SourceError(f"{where} has no tensor {name} (the config implies it): the config and the "
                              "weights disagree")
        got = tuple(int(d) for d in weights.shape(name))
        if got != shape:
            raise SourceError(f"{where}: tensor {name} has shape {list(got)}, the config implies {list(shape)} "
                              f"({_hint(name, spec)})")
    optional = {f"model.layers.{n}.self_attn.o_proj.bias" for n in range(spec.num_layers)}
    if spec.tie_word_embeddings:
        optional.add("lm_head.weight")  # some tied checkpoints also save the head: it must be the same size
    extra = sorted(n for n in have - set(want) if not IGNORABLE.search(n) and n not in optional) + sorted(unknown)
    if extra:
        layer = next((n for n in extra if n.startswith("model.layers.")), None)
        why = (f"the config's num_hidden_layers is {spec.num_layers}" if layer else "no Qwen dense model uses it")
        raise SourceError(f"{where} has tensor {extra[0]} that would be left unused ({why}); "
                          f"{len(extra)} such tensor(s)")
    for name in optional & have:
        base = (spec.vocab_size, spec.hidden_size) if name == "lm_head.weight" else (spec.hidden_size,)
        if tuple(int(d) for d in weights.shape(name)) != base:
            raise SourceError(f"{where}: tensor {name} has shape {list(weights.shape(name))}, expected {list(base)}")


def _hint(name: str, spec: ModelSpec) -> str:
    if "embed_tokens" in name or "lm_head" in name:
        return f"vocab_size {spec.vocab_size}, hidden_size {spec.hidden_size}"
    if "self_attn" in name:
        return (f"hidden_size {spec.hidden_size}, {spec.num_heads} heads, {spec.num_kv_heads} kv heads, "
                f"head_dim {spec.head_dim}")
    if "mlp" in name:
        return f"hidden_size {spec.hidden_size}, intermediate_size {spec.intermediate_size}"
    return f"hidden_size {spec.hidden_size}"


def check_tokenizer(folder: Path, spec: ModelSpec, generation_config: dict, where: str) -> None:
    """The tokenizer files in `folder` load, round-trip text and agree with the model."""
    try:
        from tokenizers import Tokenizer
    except ImportError:  # a core dependency; only a broken install lands here
        raise SourceError("the tokenizers package is missing: pip install tokenizers") from None
    path = Path(folder) / "tokenizer.json"
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises bare Exceptions on bad JSON or a wrong schema
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise SourceError(f"{where}: tokenizer.json does not load ({first})") from None
    n = tok.get_vocab_size(with_added_tokens=True)
    if n == 0 or n > spec.vocab_size:
        raise SourceError(f"{where}: the tokenizer has {n} tokens but the embedding has {spec.vocab_size} rows")
    try:
        back = tok.decode(tok.encode(ROUND_TRIP, add_special_tokens=False).ids, skip_special_tokens=False)
    except Exception as e:
        raise SourceError(f"{where}: the tokenizer fails on plain text ({type(e).__name__}: {e})") from None
    if back != ROUND_TRIP:
        raise SourceError(f"{where}: the tokenizer does not round-trip text ({ROUND_TRIP[:20]!r}... came back as "
                          f"{back[:20]!r}...)")
    eos = generation_config.get("eos_token_id")
    for i in eos if isinstance(eos, list) else [] if eos is None else [eos]:
        if not isinstance(i, int) or not 0 <= i < n:
            raise SourceError(f"{where}: end-of-sequence id {i!r} is not a token of the tokenizer (0..{n - 1})")
    cfg_path = Path(folder) / "tokenizer_config.json"
    cfg: dict = {}
    if cfg_path.is_file():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SourceError(f"{where}: tokenizer_config.json is not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise SourceError(f"{where}: tokenizer_config.json is not a JSON object")
    for key in ("eos_token", "pad_token", "bos_token", "unk_token"):
        t = cfg.get(key)
        t = t.get("content") if isinstance(t, dict) else t
        if isinstance(t, str) and tok.token_to_id(t) is None:
            raise SourceError(f"{where}: {key} {t!r} is not in the tokenizer's vocabulary")
    template = cfg.get("chat_template")
    if isinstance(template, str):
        for marker in ("<|im_start|>", "<|im_end|>"):
            if marker in template and tok.token_to_id(marker) is None:
                raise SourceError(f"{where}: the chat template uses {marker} but the tokenizer has no such token")
