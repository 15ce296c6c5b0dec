"""Streaming detokenization: token ids in, complete text pieces out.

Qwen's byte-level BPE can split one character (CJK, Hangul, emoji, ...) over several
tokens, so decoding each token alone prints U+FFFD.  ``StreamDecoder`` keeps a small
window of recent ids and emits text only once the window decodes to something that does
not end in U+FFFD and extends what it decoded before -- the incremental scheme of vLLM /
HF ``TextStreamer``, with a bounded window so each token costs O(1).

Only ``tokenizers`` and the standard library are needed (no transformers, no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only for annotations: the caller hands us a loaded tokenizer
    from tokenizers import Tokenizer

_REPLACEMENT = "\ufffd"
# A character is at most 4 UTF-8 bytes and every token carries at least one byte, so a
# valid character completes within 4 tokens; a pending run longer than this is invalid
# bytes (a model can emit any byte sequence) and is flushed as-is, U+FFFD included.
_MAX_PENDING = 8


class StreamDecoder:
    """Incremental decoder: ``put`` one id at a time, ``flush`` at the end.

    Invariant: ``self._ids[:self._read]`` were already emitted and are kept only as
    context (decoders may treat the first token of a sequence specially, e.g. strip a
    leading space); ``self._ids[self._read:]`` are pending.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._ids: list[int] = []
        self._read = 0
        self._prefix_text = ""  # decode(self._ids[:self._read])
        self._pieces: list[str] = []

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def put(self, token_id: int) -> str:
        """Add one token; return the text it completes ("" while a character is partial)."""
        self._ids.append(int(token_id))
        text = self._decode(self._ids)
        pending = len(self._ids) - self._read
        if (text.endswith(_REPLACEMENT) or len(text) < len(self._prefix_text)) and pending < _MAX_PENDING:
            return ""  # a character (or the decoder's view of the context) is incomplete
        return self._emit(text)

    def flush(self) -> str:
        """Return whatever is still pending (an incomplete tail shows as U+FFFD) and reset."""
        piece = self._emit(self._decode(self._ids)) if len(self._ids) > self._read else ""
        self._ids, self._read, self._prefix_text = [], 0, ""
        return piece

    @property
    def text(self) -> str:
        """Everything emitted so far."""
        if len(self._pieces) > 1:  # keep the join cheap for repeated reads
            self._pieces = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def _emit(self, text: str) -> str:
        # The window decodes to prefix + new text; slide it so only the just-emitted ids
        # stay as context.  That bounds each decode to <= 1 + _MAX_PENDING tokens.
        piece = text[len(self._prefix_text):]
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        if piece:
            self._pieces.append(piece)
        return piece
