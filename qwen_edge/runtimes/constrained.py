"""Constrained decoding: JSON schema, any JSON object, a regex or a Lark grammar, on llguidance.

llguidance is what onnxruntime-genai and llama.cpp use; it computes the set of allowed next tokens from a
lexer/parser split in tens of microseconds for a 150k vocabulary (docs/runtime.md has the comparison with
xgrammar and outlines-core and the measured cost per token). A `Constraint` is made once per generation: the
sampler masks the logits with `mask(logits)` before anything else (penalties, temperature, top-k ...), and the
generate loop reports every sampled token with `advance(token)`. When the grammar is complete only the end
token is allowed, so the output always parses.

llguidance is an optional dependency (`pip install qwen-edge[constrained]`): the runtime imports it only
when a constraint is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import QwenEdgeError

KINDS = ("json_schema", "json_object", "regex", "grammar")
# Between JSON tokens: nothing, one space, or a line break and an indent of up to 16 spaces or tabs. Compact
# and pretty-printed JSON (a model's usual styles) fit; unbounded whitespace let a small model wander in blank
# space instead of finishing (the tiny test models: runs of 30+ characters), and a bounded run of spaces on a
# line still let the real 0.5B pad `]                 ,` (scripts/bench_constrained.py).
WHITESPACE = r"(\r?\n[ \t]{0,16}| )?"


@dataclass(frozen=True)
class ConstraintSpec:
    """What the output must match: kind in KINDS; value a schema (dict or JSON text), a regex or a Lark grammar."""

    kind: str
    value: Any = None


def _llg() -> Any:
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401
    except ImportError:
        raise QwenEdgeError("constrained decoding needs llguidance: pip install 'qwen-edge[constrained]'") from None
    return llguidance


class Grammars:
    """One model's llguidance tokenizer (built once, ~1 s for Qwen's vocabulary) and its grammar checks."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_id: int):
        llg = _llg()
        self.vocab_size = vocab_size
        self.tokenizer = llg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_id)

    def compile(self, spec: ConstraintSpec) -> str:
        """The grammar text for llguidance, checked: an invalid schema, regex or grammar is a QwenEdgeError
        (before any generation)."""
        llg = _llg()
        kind, value = spec.kind, spec.value
        try:
            if kind == "json_schema":
                schema = json.loads(value) if isinstance(value, str) else value
                if not isinstance(schema, dict):
                    raise QwenEdgeError("a JSON schema is a JSON object")
                grammar = llg.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_pattern": WHITESPACE})
            elif kind == "json_object":
                grammar = llg.LLMatcher.grammar_from_json_schema({"type": "object"},
                                                                 defaults={"whitespace_pattern": WHITESPACE})
            elif kind == "regex":
                if not isinstance(value, str) or not value:
                    raise QwenEdgeError("a regex constraint is a non-empty string")
                grammar = llg.LLMatcher.grammar_from_regex(value)
            elif kind == "grammar":
                if not isinstance(value, str) or not value.strip():
                    raise QwenEdgeError("a grammar constraint is non-empty Lark text")
                grammar = llg.LLMatcher.grammar_from_lark(value)
            else:
                raise QwenEdgeError(f"unknown constraint {kind!r}: use one of {', '.join(KINDS)}")
        except QwenEdgeError:
            raise
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise QwenEdgeError(f"invalid {kind.replace('_', ' ')}: {e}") from None
        ok, warnings = _validate(llg, grammar, self.tokenizer)
        if not ok:
            raise QwenEdgeError(f"invalid {kind.replace('_', ' ')}: {warnings}")
        return grammar

    def constraint(self, spec: ConstraintSpec) -> Constraint:
        return Constraint(self, self.compile(spec))


def _validate(llg: Any, grammar: str, tokenizer: Any) -> tuple[bool, str]:
    r = llg.LLMatcher.validate_grammar(grammar, tokenizer)
    if isinstance(r, tuple):  # (is_error, messages) in llguidance >= 0.7
        is_error, msgs = r
        return (not is_error), "; ".join(map(str, msgs)) if msgs else ""
    return (not r), str(r or "")


class Constraint:
    """One generation's matcher: masks logits and follows the sampled tokens."""

    def __init__(self, grammars: Grammars, grammar: str):
        llg = _llg()
        self._np = llg.numpy
        self.matcher = llg.LLMatcher(grammars.tokenizer, grammar)
        err = self.matcher.get_error()
        if err:
            raise QwenEdgeError(f"the constraint cannot start: {err}")
        self.bitmask = self._np.allocate_token_bitmask(1, grammars.vocab_size)
        self.vocab_size = grammars.vocab_size
        self.mask_s = 0.0  # time computing masks (the cost per token: docs/runtime.md)
        self.masks = 0

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """logits with every token the grammar does not allow next set to -inf (a new array)."""
        import time
        t = time.perf_counter()
        self._np.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        out = np.array(logits, dtype=np.float32).reshape(1, -1)  # a copy: the logits buffer is the runner's
        self._np.apply_token_bitmask_inplace(out, self.bitmask)
        out = out[0]
        self.mask_s += time.perf_counter() - t
        self.masks += 1
        return out

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise QwenEdgeError(f"constrained decoding: token {token} was not allowed ({self.matcher.get_error()})")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()
