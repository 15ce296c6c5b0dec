"""A GGUF file (llama.cpp's format) as a model source: spec from metadata, dequantized weights.

The weights are dequantized to fp32 one tensor at a time with the ``gguf`` package (numpy), and renamed to
Hugging Face names so the graph builder sees one naming scheme. qwen2/qwen3 tensors are stored without the
q/k row permutation llama.cpp applies to llama models, so no un-permuting is needed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QwenEdgeError, SourceError
from ..spec import ModelSpec, RopeSpec
from .gguf_header import TensorInfo, read_header

_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight", "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight", "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight", "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight", "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
        "output_norm.weight": "model.norm.weight"}
_IGNORED = {"rope_freqs.weight"}  # derived from the RoPE metadata, which the graph uses instead


def _hf_name(name: str) -> str | None:
    if name in _TOP:
        return _TOP[name]
    m = re.fullmatch(r"blk\.(\d+)\.(.+)", name)
    if m and m.group(2) in _BLOCK:
        return f"model.layers.{m.group(1)}.{_BLOCK[m.group(2)]}"
    return None


class GGUFSource:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._meta, infos = read_header(self.path)  # bounded: a damaged file is one SourceError
        self._tensors: dict[str, TensorInfo] = {}
        self.unknown: list[str] = []  # tensors no Qwen dense model has
        for t in infos.values():
            hf = _hf_name(t.name)
            if hf is not None:
                self._tensors[hf] = t
            elif t.name not in _IGNORED:
                self.unknown.append(t.name)

    def meta(self, key: str, default: Any = None) -> Any:
        return self._meta.get(key, default)

    # --- spec --------------------------------------------------------------------------------------
    def spec(self) -> ModelSpec:
        arch = self.meta("general.architecture")
        if arch not in ("qwen2", "qwen3"):
            from ..spec import _refuse
            raise _refuse(str(arch))
        a = lambda k, d=None: self.meta(f"{arch}.{k}", d)  # noqa: E731
        if a("rope.freq_base") is None:
            raise SourceError(f"{self.path.name} has no {arch}.rope.freq_base: refusing to guess the RoPE base")
        for key in ("embedding_length", "attention.head_count", "feed_forward_length", "block_count"):
            if not isinstance(a(key), int) or isinstance(a(key), bool):
                raise SourceError(f"{self.path.name}: metadata {arch}.{key} is missing or not an integer")
        hidden, heads = int(a("embedding_length")), int(a("attention.head_count"))
        if heads <= 0:
            raise SourceError(f"{self.path.name}: {arch}.attention.head_count must be positive")
        emb = self._tensors.get("model.embed_tokens.weight")
        if emb is None:
            raise SourceError(f"{self.path.name} has no token_embd.weight tensor")
        scaling = a("rope.scaling.type", "none")
        if scaling in (None, "none"):
            rope = RopeSpec(theta=float(a("rope.freq_base")))
        elif scaling == "yarn":
            rope = RopeSpec(theta=float(a("rope.freq_base")), type="yarn", factor=float(a("rope.scaling.factor")),
                            original_max_position_embeddings=int(a("rope.scaling.original_context_length")))
        else:
            raise QwenEdgeError(f"unsupported RoPE scaling '{scaling}' in {self.path.name}")
        return ModelSpec(
            model_type=arch,
            vocab_size=int(emb.shape[0]),
            hidden_size=hidden,
            intermediate_size=int(a("feed_forward_length")),
            num_layers=int(a("block_count")),
            num_heads=heads,
            num_kv_heads=int(a("attention.head_count_kv", heads)),
            head_dim=int(a("attention.key_length", hidden // heads)),
            rms_norm_eps=float(a("attention.layer_norm_rms_epsilon", 1e-6)),
            max_position_embeddings=int(a("context_length", 32768)),
            rope=rope,
            tie_word_embeddings="lm_head.weight" not in self._tensors,
            qkv_bias="model.layers.0.self_attn.q_proj.bias" in self._tensors,
            qk_norm="model.layers.0.self_attn.q_norm.weight" in self._tensors,
        ).validate()

    # --- weights, by Hugging Face name ------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name).shape

    def _info(self, name: str) -> TensorInfo:
        try:
            return self._tensors[name]
        except KeyError:
            raise SourceError(f"{self.path.name} is missing tensor for {name!r}") from None

    def get(self, name: str) -> np.ndarray:
        from gguf.quants import dequantize
        t = self._info(name)
        shape = t.shape  # numpy order: already [out, in] like PyTorch
        n_rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.nbytes,))
        rows = data.reshape(n_rows, -1)
        out = np.empty((n_rows, shape[-1]), dtype=np.float32)
        # Dequantize in row blocks: the library's temporaries are several times the block, so a whole
        # embedding matrix at once would need a few extra copies of it.
        step = max(1, (1 << 24) // max(1, out.shape[1]))
        try:
            for r in range(0, n_rows, step):
                out[r:r + step] = dequantize(np.asarray(rows[r:r + step]), t.type).reshape(-1, out.shape[1])
        except (NotImplementedError, ValueError) as e:
            raise SourceError(f"{self.path.name}: cannot dequantize {t.name}: {e}") from None
        return out.reshape(shape)

    # --- tokenizer and generation defaults --------------------------------------------------------
    def generation_config(self) -> dict:
        eos = [int(self.meta("tokenizer.ggml.eos_token_id"))] if self.meta("tokenizer.ggml.eos_token_id") is not None else []
        eot = self.meta("tokenizer.ggml.eot_token_id")
        if eot is not None and int(eot) not in eos:
            eos.append(int(eot))
        cfg: dict[str, Any] = {"eos_token_id": eos}
        if self.meta("tokenizer.ggml.bos_token_id") is not None:
            cfg["bos_token_id"] = int(self.meta("tokenizer.ggml.bos_token_id"))
        if self.meta("tokenizer.ggml.padding_token_id") is not None:
            cfg["pad_token_id"] = int(self.meta("tokenizer.ggml.padding_token_id"))
        return cfg

    def write_tokenizer_files(self, dest: Path) -> None:
        """Convert the embedded BPE vocabulary to tokenizer.json with transformers' GGUF converter."""
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise QwenEdgeError("converting a GGUF tokenizer needs transformers: pip install 'qwen-edge[export]'") from None
        import contextlib
        import io
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                tok = AutoTokenizer.from_pretrained(str(self.path.parent), gguf_file=self.path.name)
            tok.save_pretrained(str(dest))
        except Exception as e:  # transformers' converter raises assorted errors on odd vocabularies
            raise SourceError(f"{self.path.name}: its tokenizer cannot be converted "
                              f"({type(e).__name__}: {str(e).strip()[:160]})") from None
        tc_path = dest / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text(encoding="utf-8"))
        if "chat_template" not in tc and self.meta("tokenizer.chat_template"):
            tc["chat_template"] = self.meta("tokenizer.chat_template")
        tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False), encoding="utf-8")
