"""One copy of a tied table: a source that stores its embedding and LM head as two copies of one matrix.

Qwen2.5-0.5B ties them, yet its GGUF holds two copies (token_embd at Q5_0, output at Q8_0: 4.4% apart,
correlation 0.999), which costs ~130 MiB in every artifact made from it. `tie(src, mode)`:
- "off": leave the source alone;
- "on": store one table (the LM head's copy) whatever the difference;
- "auto": the same only when the copies agree within AUTO_LIMIT (relative Frobenius difference); two
  independently trained matrices differ by ~141% (sqrt 2), two quantizations of one matrix by a few %;
- "residual": keep both (untied), and report `residual: True` when they agree as "auto" requires: the
  quantizer then stores the embedding as the head's codes plus a small residual (recipe.HeadResidual;
  the int8 default, where tying alone costs KL ~0.0005).
The head's copy is kept: an error in the head moves every logit, one in the embedding one token's input,
and llama.cpp stores the head at the higher precision for the same reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import InputError

MODES = ("auto", "on", "off", "residual")
AUTO_LIMIT = 0.10
EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"


class _TiedWeights:
    """The source's weights with the head's copy standing in for the embedding, and no separate head."""

    def __init__(self, base: Any, table: np.ndarray):
        self.base, self.table = base, table

    def get(self, name: str) -> np.ndarray:
        return self.table if name == EMBED else self.base.get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(name)

    def names(self) -> list[str]:
        return [n for n in self.base.names() if n != HEAD]

    def __contains__(self, name: str) -> bool:
        return name != HEAD and name in self.base

    @property
    def unknown(self) -> list[str]:
        return list(getattr(self.base, "unknown", []))


def tie(src: Any, mode: str = "auto") -> tuple[Any, dict[str, Any]]:
    """(the source, possibly with one table, and what was decided) for `mode` auto / on / off."""
    if mode not in MODES:
        raise InputError(f"--tie-embeddings '{mode}': choose auto, on, off or residual")
    if src.spec.tie_word_embeddings:
        return src, {"tied": True, "why": "the config ties them"}
    if mode == "off" or HEAD not in src.weights or src.quantization:
        return src, {"tied": False, "why": "off" if mode == "off" else "no second copy"}
    head = src.weights.get(HEAD)
    embed = src.weights.get(EMBED)
    rel = float(np.linalg.norm(embed - head) / max(float(np.linalg.norm(head)), 1e-30))
    del embed
    info = {"relative_difference": round(rel, 5), "mode": mode}
    if mode == "residual":
        agree = rel <= AUTO_LIMIT
        return src, {**info, "tied": False, "residual": agree,
                     "why": (f"one matrix stored twice ({rel:.1%} apart): the embedding is the head plus a residual"
                             if agree else f"the copies differ by {rel:.1%}: stored apart")}
    if mode == "auto" and rel > AUTO_LIMIT:
        return src, {**info, "tied": False, "why": f"the copies differ by {rel:.1%} (auto ties at <= {AUTO_LIMIT:.0%})"}
    spec = dataclasses.replace(src.spec, tie_word_embeddings=True)
    return dataclasses.replace(src, spec=spec, weights=_TiedWeights(src.weights, head)), \
        {**info, "tied": True, "why": f"one matrix stored twice ({rel:.1%} apart): the LM head's copy is kept"}
