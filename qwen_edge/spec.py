"""The model spec: everything the graph builder needs to know about a Qwen dense model.

It is read from a Hugging Face ``config.json`` (transformers 4.x or 5.x layout) or from GGUF metadata,
validated once here, and recorded in the artifact manifest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import QwenEdgeError

SUPPORTED = "dense qwen2 (Qwen2, Qwen2.5 and its Coder/Math/Instruct variants) and qwen3"
ROPE_TYPES = ("default", "yarn")

# The exporter's linears in a decoder layer, in graph order, and the source projections each one packs (their
# rows concatenated in this order: q, k, v; gate, up). Every stage that names, shapes, splits or gathers a
# packed linear reads this one table.
PACKED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "self_attn.o_proj": ("self_attn.o_proj",),
          "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
          "mlp.down_proj": ("mlp.down_proj",)}
LINEARS = tuple(PACKED)


def packed_sources(layer: int, linear: str, what: str = "weight") -> list[str]:
    """The source tensor names packed into `linear` of decoder layer `layer` (what: weight or bias)."""
    return [f"model.layers.{layer}.{p}.{what}" for p in PACKED[linear]]


@dataclass(frozen=True)
class RopeSpec:
    theta: float
    type: str = "default"  # "default" or "yarn"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None  # None: derived from factor as transformers does
    truncate: bool = True


@dataclass(frozen=True)
class ModelSpec:
    model_type: str  # "qwen2" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeSpec
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        d["rope"] = RopeSpec(**d["rope"])
        return cls(**d)

    def validate(self) -> "ModelSpec":
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if int(getattr(self, name)) <= 0:
                raise QwenEdgeError(f"invalid model config: {name} must be positive")
        if self.num_heads % self.num_kv_heads:
            raise QwenEdgeError(
                f"invalid model config: num_attention_heads ({self.num_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})")
        if self.head_dim % 2:
            raise QwenEdgeError(f"invalid model config: head_dim {self.head_dim} must be even for RoPE")
        if not (self.rope.theta > 0 and math.isfinite(self.rope.theta)):
            raise QwenEdgeError(f"invalid model config: RoPE base {self.rope.theta} must be positive")
        return self


def _refuse(model_type: str) -> QwenEdgeError:
    return QwenEdgeError(f"unsupported model_type '{model_type}': qwen-edge supports {SUPPORTED}")


def _rope_from_config(cfg: dict[str, Any]) -> RopeSpec:
    """Read RoPE from either config layout; never fall back silently to a default base.

    transformers 4.x: ``rope_theta`` + ``rope_scaling``; 5.x: ``rope_parameters`` holding both. Qwen2.5
    uses a base of 1e6 while transformers' class default is 1e4, so a missing base is an error, not a guess.
    """
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # 5.x per-layer-type form, e.g. {"full_attention": {...}}; dense Qwen has one kind of layer.
        if set(params) != {"full_attention"}:
            raise QwenEdgeError(f"unsupported rope_parameters layer types {sorted(params)}: only full attention")
        params = params["full_attention"]
    theta_new = params.get("rope_theta") if isinstance(params, dict) else None
    theta_old = cfg.get("rope_theta")
    if theta_new is None and theta_old is None:
        raise QwenEdgeError("config.json has no RoPE base: expected rope_theta (transformers 4.x) "
                            "or rope_parameters.rope_theta (5.x)")
    if theta_new is not None and theta_old is not None and float(theta_new) != float(theta_old):
        raise QwenEdgeError(f"config.json has two different RoPE bases: rope_theta={theta_old} and "
                            f"rope_parameters.rope_theta={theta_new}")
    theta = float(theta_new if theta_new is not None else theta_old)

    scaling = params if isinstance(params, dict) else cfg.get("rope_scaling")
    if scaling is None and isinstance(params, dict):
        scaling = cfg.get("rope_scaling")
    scaling = dict(scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in ROPE_TYPES:
        raise QwenEdgeError(f"unsupported RoPE scaling '{rope_type}': qwen-edge supports {', '.join(ROPE_TYPES)}")
    if rope_type == "default":
        return RopeSpec(theta=theta)
    factor = float(scaling.get("factor", 1.0))
    if factor < 1.0:
        raise QwenEdgeError(f"invalid YaRN factor {factor}: must be >= 1")
    orig = scaling.get("original_max_position_embeddings") or cfg.get("max_position_embeddings")
    return RopeSpec(
        theta=theta, type="yarn", factor=factor,
        original_max_position_embeddings=int(orig),
        beta_fast=float(scaling.get("beta_fast") or 32.0),
        beta_slow=float(scaling.get("beta_slow") or 1.0),
        attention_factor=(float(scaling["attention_factor"]) if scaling.get("attention_factor") is not None else None),
        truncate=bool(scaling.get("truncate", True)),
    )


def _int(cfg: dict[str, Any], key: str) -> int:
    """A config integer: a JSON integer (or an integral number), never a bool or a string."""
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != int(v):
        raise QwenEdgeError(f"config.json: {key} must be an integer, got {v!r}")
    return int(v)


def spec_from_hf_config(cfg: dict[str, Any]) -> ModelSpec:
    """Build and validate a spec from a Hugging Face config.json dict (4.x or 5.x layout)."""
    model_type = cfg.get("model_type")
    if model_type not in ("qwen2", "qwen3"):
        raise _refuse(str(model_type))
    if cfg.get("use_sliding_window") or any(t != "full_attention" for t in cfg.get("layer_types") or []):
        raise QwenEdgeError("sliding-window attention layers are not supported: qwen-edge exports "
                            "full-attention models (set use_sliding_window=false)")
    text = cfg.get("text_config")
    if isinstance(text, dict):  # some 5.x configs nest the text model
        cfg = {**cfg, **text}
    try:
        hidden = _int(cfg, "hidden_size")
        heads = _int(cfg, "num_attention_heads")
        if heads <= 0:
            raise QwenEdgeError(f"invalid model config: num_attention_heads must be positive, got {heads}")
        spec = ModelSpec(
            model_type=model_type,
            vocab_size=_int(cfg, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_int(cfg, "intermediate_size"),
            num_layers=_int(cfg, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=_int(cfg, "num_key_value_heads") if cfg.get("num_key_value_heads") else heads,
            head_dim=_int(cfg, "head_dim") if cfg.get("head_dim") else hidden // heads,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=_int({"max_position_embeddings": 32768, **cfg}, "max_position_embeddings"),
            rope=_rope_from_config(cfg),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            # Qwen2 always has q/k/v biases; Qwen3 declares them with attention_bias (off in released models).
            qkv_bias=True if model_type == "qwen2" else bool(cfg.get("attention_bias", False)),
            qk_norm=model_type == "qwen3",
        )
    except KeyError as e:
        raise QwenEdgeError(f"config.json is missing {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise QwenEdgeError(f"config.json has an invalid value: {e}") from None
    return spec.validate()
