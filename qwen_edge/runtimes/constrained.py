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

import re
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, QwenEdgeError
from .constraint_check import grammar_unproductive, json_text, json_value, schema_unsatisfiable

KINDS = ("json_schema", "json_object", "regex", "grammar")
# Steps the matcher is fed before generation (probe): each step a forced run of tokens (a schema's fixed keys
# and punctuation) or, where the grammar offers a choice, one allowed token. Far enough to meet the parser's
# limits where a large schema meets them (the 1,000-property object: at its first token, or behind required
# keys), a few milliseconds on Qwen's vocabulary.
PROBE_STEPS = 8


class ConstraintFailed(QwenEdgeError):
    """The parser stopped in the middle of a generation (a limit that the probe's path did not reach)."""


def _first_line(err: str) -> str:
    line = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "unknown error")
    line = re.sub(r"^(Parser Error|Error|Warning):\s*", "", line)
    return re.sub(r"[;,]?\s*stopping$", "", line).rstrip("; ")

# Between JSON tokens: nothing, one space, or a line break and an indent of up to 16 spaces. Compact and
# pretty-printed JSON (a model's usual styles) fit; unbounded whitespace let a small model wander in blank
# space instead of finishing (the tiny test models: runs of 30+ characters), a bounded run of spaces on a
# line still let the real 0.5B pad `]                 ,` (scripts/bench_constrained.py), and tabs or a
# carriage return in the indent let a tiny model write `\r\n\t\t\t\t` plus 12 spaces between every
# token of a tool call until it ran out of tokens. The same rule for json_schema, json_object and tool calls.
WHITESPACE = r"(\n {0,16}| )?"


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
        what = {"json_schema": "JSON schema", "json_object": "JSON object constraint", "regex": "regex",
                "grammar": "grammar"}.get(kind, kind)
        try:
            if kind == "json_schema":
                schema = json_text(value, "the JSON schema") if isinstance(value, str) else value
                if not isinstance(schema, dict):
                    raise QwenEdgeError("a JSON schema is a JSON object")
                json_value(schema, "the JSON schema")  # before llguidance: a self-containing dict crashed it
                why = schema_unsatisfiable(schema)
                if why:
                    raise InputError(f"the JSON schema cannot be honoured: {why}")
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
                why = grammar_unproductive(value)
                if why:
                    raise InputError(f"the grammar cannot be honoured: {why}")
                grammar = llg.LLMatcher.grammar_from_lark(value)
            else:
                raise QwenEdgeError(f"unknown constraint {kind!r}: use one of {', '.join(KINDS)}")
        except QwenEdgeError:
            raise
        except (ValueError, TypeError, RecursionError) as e:
            raise QwenEdgeError(f"invalid {what}: {_first_line(str(e))}") from None
        ok, warnings = _validate(llg, grammar, self.tokenizer)
        if not ok:
            raise QwenEdgeError(f"invalid {what}: {_first_line(warnings)}")
        self.probe(grammar, what)
        return grammar

    def probe(self, grammar: str, what: str) -> None:
        """Feed the matcher its first steps (a forced run of tokens, else the lowest allowed id): a grammar that
        allows nothing at all, or a parser limit met on the way, is a QwenEdgeError now rather than an empty or
        cut reply later. Reaching an accepting state ends the walk early."""
        llg = _llg()
        m = llg.LLMatcher(self.tokenizer, grammar, log_level=0)  # errors are read back, not printed
        mask = llg.numpy.allocate_token_bitmask(1, self.vocab_size)
        eos = self.tokenizer.eos_token
        for step in range(PROBE_STEPS):
            if not m.is_error():
                llg.numpy.fill_next_token_bitmask(m, mask, 0)
            if m.is_error():
                raise InputError(_limit_message(what, m.get_error()))
            if m.is_accepting():
                return
            allowed = np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[:self.vocab_size])
            allowed = allowed[allowed != eos]
            if allowed.size == 0:
                if step == 0 or m.is_stopped():
                    raise InputError(f"the {what} cannot be honoured: no output can satisfy it "
                                     "(its parser allows no first token)")
                return
            forced = [int(t) for t in m.compute_ff_tokens()][:256] or [int(allowed[0])]
            if not m.consume_tokens(forced) or m.is_error():
                raise InputError(_limit_message(what, m.get_error()))

    def constraint(self, spec: ConstraintSpec) -> Constraint:
        return Constraint(self, self.compile(spec))


def _limit_message(what: str, err: str) -> str:
    line = _first_line(err)
    if "max is" in line or "too many" in line.lower() or "fuel" in line.lower():
        return (f"the {what} is too complex for the constraint parser (llguidance: {line}): "
                "use fewer optional properties or alternatives")
    return f"the {what} cannot be honoured: {line}"


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
        self.matcher = llg.LLMatcher(grammars.tokenizer, grammar, log_level=0)
        err = self.matcher.get_error()
        if err:
            raise QwenEdgeError(f"the constraint cannot start: {_first_line(err)}")
        self.bitmask = self._np.allocate_token_bitmask(1, grammars.vocab_size)
        self.vocab_size = grammars.vocab_size
        self.mask_s = 0.0  # time computing masks (the cost per token: docs/runtime.md)
        self.masks = 0

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """logits with every token the grammar does not allow next set to -inf (a new array)."""
        t = time.perf_counter()
        self._np.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        out = np.array(logits, dtype=np.float32).reshape(1, -1)  # a copy: the logits buffer is the runner's
        self._np.apply_token_bitmask_inplace(out, self.bitmask)
        out = out[0]
        self.mask_s += time.perf_counter() - t
        self.masks += 1
        return out

    def fork(self) -> Constraint:
        """An independent copy of this generation's state (a draft model's proposals follow it)."""
        c = object.__new__(Constraint)
        c._np, c.vocab_size, c.mask_s, c.masks = self._np, self.vocab_size, 0.0, 0
        c.matcher = self.matcher.deep_copy()
        c.bitmask = self._np.allocate_token_bitmask(1, self.vocab_size)
        return c

    def mask_prefix(self, logits: np.ndarray) -> np.ndarray:
        """`mask` for a row over the first ids of the vocabulary (a draft's smaller, unpadded vocabulary)."""
        n = np.asarray(logits).shape[-1]
        if n == self.vocab_size:
            return self.mask(logits)
        full = np.full(self.vocab_size, -np.inf, dtype=np.float32)
        full[:n] = logits
        return self.mask(full)[:n]

    def allows(self, token: int) -> bool:
        """Whether the grammar accepts `token` next (its state unchanged)."""
        return int(self.matcher.validate_tokens([int(token)])) == 1

    def greedy(self, logits: np.ndarray, pick: Any) -> int:
        """The greedy token under the constraint: `pick(row)` on the raw row when the grammar allows that token
        (masking only lowers the others, so it is the masked row's pick too), else on the masked row. Saves
        applying the mask to the whole vocabulary (~1.3 ms a token on Qwen's; measured) on most steps."""
        t = time.perf_counter()
        tok = int(pick(logits))
        if not self.allows(tok):
            tok = int(pick(self.mask(logits)))
        self.mask_s += time.perf_counter() - t
        return tok

    def valid_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens`, in order, the grammar would accept from its current state (state unchanged)."""
        return int(self.matcher.validate_tokens([int(t) for t in tokens]))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise ConstraintFailed(f"constrained decoding stopped: {_first_line(self.matcher.get_error() or '')} "
                                   f"(token {token} after {self.masks} tokens)")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()
