"""The context rule, in one place for the Python API, chat, the CLI and HTTP (js/src/core.js states it for
JavaScript): a prompt of n tokens fits a context of max_length positions when n < max_length, one position
staying free for the reply."""

from __future__ import annotations

from ..errors import InputError


class ContextLengthError(InputError):
    """A prompt or conversation with no room left for a reply (HTTP: 400 context_length_exceeded)."""


def too_long(n: int, max_length: int, what: str = "prompt", hint: str = "") -> ContextLengthError:
    return ContextLengthError(f"the {what} is {n} tokens but the context holds {max_length} and one position "
                              "must stay free for the reply" + (f"; {hint}" if hint else ""))


def check_context(n: int, max_length: int, what: str = "prompt", hint: str = "") -> None:
    if n >= max_length:
        raise too_long(n, max_length, what, hint)
