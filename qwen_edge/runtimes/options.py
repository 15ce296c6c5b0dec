"""What one generation may be asked, in one object: `GenerateOptions`, read by Model.stream / generate /
complete and by Chat (which takes the same options except tools). The names are declared once here; the
model's generation defaults fill what a request leaves as None (Model.sampling)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

from ..errors import QwenEdgeError

DEFAULT_MAX_NEW_TOKENS = 512
SAMPLING = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed", "frequency_penalty",
            "presence_penalty")
CONSTRAINTS = ("json_schema", "json_object", "regex", "grammar")
TOOLS = ("tools", "tool_choice", "parallel_tool_calls")


@dataclass(frozen=True)
class GenerateOptions:
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: Sequence[str] | None = None
    truncate: bool = False  # drop the oldest prompt tokens (or chat turns) when the prompt does not fit
    ignore_eos: bool = False  # run max_new_tokens steps even past end tokens (benchmarks)
    json_schema: Mapping[str, Any] | str | None = None
    json_object: bool = False
    regex: str | None = None
    grammar: str | None = None
    logprobs: int | None = None
    tools: list[dict] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True

    @classmethod
    def of(cls, base: "GenerateOptions | None" = None, what: str = "generation", allowed: Sequence[str] = (),
           **changes: Any) -> "GenerateOptions":
        """`base` (or the defaults) with `changes`; an unknown name (or one outside `allowed`) is one clear
        QwenEdgeError naming the accepted ones."""
        names = tuple(allowed) or NAMES
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise QwenEdgeError(f"unknown {what} option {unknown[0]!r}: use {', '.join(names)}")
        return replace(base or cls(), **changes)

    def sampling(self) -> dict[str, Any]:
        """The sampling overrides (None: the model's default)."""
        return {k: getattr(self, k) for k in SAMPLING}

    def constraint(self) -> dict[str, Any]:
        """The constraint asked for, as Model.constraint's keywords."""
        return {k: getattr(self, k) for k in CONSTRAINTS if getattr(self, k) not in (None, False)}

    @property
    def constrained(self) -> bool:
        return bool(self.constraint())


NAMES = tuple(f.name for f in fields(GenerateOptions))
CHAT_NAMES = tuple(n for n in NAMES if n not in TOOLS)
