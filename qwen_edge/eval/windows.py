"""Tokens and the window plan: which tokens each forward pass sees and which of them it scores."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import QwenEdgeError


@dataclass(frozen=True)
class Window:
    begin: int  # first token fed
    end: int    # one past the last token fed
    first: int  # first target scored; targets first..end-1 are predicted from the logits at t-1

    @property
    def n_scored(self) -> int:
        return self.end - self.first


def plan(n_tokens: int, ctx: int, stride: int) -> list[Window]:
    """Windows of at most `ctx` tokens starting every `stride` tokens; every token from 1 on is scored once,
    by the first window that holds it with at least one token before it in the same window."""
    if ctx < 2:
        raise QwenEdgeError(f"--ctx must be at least 2 (got {ctx})")
    if not 1 <= stride <= ctx:
        raise QwenEdgeError(f"--stride must be between 1 and --ctx ({ctx}); got {stride}")
    if n_tokens < 2:
        raise QwenEdgeError(f"the dataset has {n_tokens} token(s); at least 2 are needed to score one")
    out: list[Window] = []
    begin, scored_to = 0, 1
    while scored_to < n_tokens:
        end = min(begin + ctx, n_tokens)
        first = max(scored_to, begin + 1)
        if first < end:
            out.append(Window(begin, end, first))
            scored_to = end
        begin += stride
    return out


def targets(tokens: np.ndarray, windows: list[Window]) -> np.ndarray:
    """The scored target ids in order, as one array."""
    return np.concatenate([tokens[w.first:w.end] for w in windows]).astype(np.int64)


def tokenize(tokenizer: Any, text: str, max_tokens: int | None) -> np.ndarray:
    """Token ids of `text` (no special tokens), cut to `max_tokens`. Long texts are tokenized by growing
    prefixes, so `--max-tokens` bounds tokenizer time too; a margin keeps the cut away from a token that a
    truncated prefix could split differently."""
    margin = 64
    if max_tokens is None:
        return np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int64)
    chars = max_tokens * 8 + 4096
    while True:
        ids = tokenizer.encode(text[:chars], add_special_tokens=False).ids
        if chars >= len(text) or len(ids) >= max_tokens + margin:
            return np.asarray(ids[:max_tokens], dtype=np.int64)
        chars *= 2


def fingerprint(tokens: np.ndarray) -> str:
    """sha256 of the token ids (int64 little endian): names the exact evaluated text under one tokenizer."""
    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<i8").tobytes()).hexdigest()
