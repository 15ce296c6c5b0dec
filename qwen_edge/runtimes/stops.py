"""Stop strings on streamed text.

A stop string can span several tokens ("\\n\\n" may arrive as "\\n" + "\\n"), so text
that could still be the start of a stop is held back until the next piece decides it;
a matched stop and everything after it are never shown.
"""

from __future__ import annotations

from collections.abc import Sequence

from qwen_edge.errors import QwenEdgeError


class StopMatcher:
    """Feed text pieces with ``put``; it returns what is safe to show and whether to stop."""

    def __init__(self, stops: Sequence[str] | None) -> None:
        self.stops = _validate(stops)
        # Every proper prefix of every stop: a tail of the buffer in this set must wait.
        self._prefixes = {s[:i] for s in self.stops for i in range(1, len(s))}
        self._longest = max((len(s) for s in self.stops), default=0)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the stream

    def put(self, piece: str) -> tuple[str, bool]:
        """Add streamed text; return ``(text to emit, stopped)``.  After a stop: ("", True)."""
        if self.stopped:
            return "", True
        buf = self._held + piece
        if not self.stops:
            return buf, False
        # Earliest match wins; the held tail is shorter than any stop, so a match can
        # only start there or later and scanning the whole (short) buffer is enough.
        hit, which = len(buf), None
        for s in self.stops:
            i = buf.find(s, 0, hit + len(s))
            if i != -1 and i < hit:
                hit, which = i, s
        if which is not None:
            self._held, self.stopped, self.matched = "", True, which
            return buf[:hit], True
        # Hold back the longest tail that is still the beginning of some stop.
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            if buf[-n:] in self._prefixes:
                self._held = buf[-n:]
                return buf[:-n], False
        self._held = ""
        return buf, False

    def flush(self) -> str:
        """At the end of generation: the held-back text (it never became a stop)."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def _validate(stops: Sequence[str] | None) -> list[str]:
    if stops is None:
        return []
    if isinstance(stops, (str, bytes)) or not isinstance(stops, (list, tuple)):
        raise QwenEdgeError(f"unknown stop type {type(stops).__name__}: expected a list of strings")
    for s in stops:
        if not isinstance(s, str):
            raise QwenEdgeError(f"unknown stop type {type(s).__name__} in stop list: expected strings")
        if not s:
            raise QwenEdgeError("stop strings must not be empty")
    return list(dict.fromkeys(stops))  # drop duplicates, keep order
