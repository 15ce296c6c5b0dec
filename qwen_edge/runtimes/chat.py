"""Multi-turn chat that keeps the KV cache between turns.

The cache holds the conversation so far, the assistant's reply and its end token included. A new
turn renders the whole conversation with the chat template; when that text extends what the cache
holds (the usual case), only the new text is tokenized and prefilled. Otherwise (a reply cut by a
stop string, a template that rewrites history, an edited `messages`) the cache is rewound to the
longest common token prefix, which is free with an in-place cache.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from ..errors import QwenEdgeError
from .context import too_long
from .generate import Result, TextStream, check_max_new_tokens
from .options import CHAT_NAMES, GenerateOptions



class Chat:
    """chat = model.chat(system="You are terse."); for piece in chat.send("Hi"): ...; chat.say("More?")"""

    def __init__(self, model: Any, system: str | None = None, **defaults: Any):
        self.model = model
        self.defaults = GenerateOptions.of(None, "chat", CHAT_NAMES, **defaults)  # Model.stream's, without tools
        self.messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
        self.runner = model.new_runner()  # this chat's own cache, for its lifetime
        self.last: Result | None = None  # the last turn's result
        self._busy = False
        self._lock = threading.Lock()  # one turn at a time, also across threads

    @property
    def tokens(self) -> list[int]:
        """The conversation's ids so far (in the cache, plus the last reply's end token)."""
        return self.runner.history.tolist()

    def reset(self, system: str | None = None) -> None:
        if self._busy:
            raise QwenEdgeError("the previous reply is still streaming: finish or close it first")
        self.messages = [{"role": "system", "content": system}] if system is not None else []
        self.runner.reset()

    def say(self, content: str, **options: Any) -> str:
        """Send a user message and return the whole reply."""
        s = self.send(content, **options)
        return s.read()

    def send(self, content: str, **options: Any) -> TextStream:
        """Send a user message; iterate the returned stream for the reply (added to `messages` when done).

        A Chat holds one conversation: a second send while a reply streams (from any thread) is an error,
        so no reply is ever recorded that its caller did not receive.
        """
        with self._lock:  # check-and-set in one step: two threads cannot both start a turn
            if self._busy:
                raise QwenEdgeError("the previous reply is still streaming: finish or close it first")
            self._busy = True
        try:
            return self._send(content, options)
        except BaseException:
            self._busy = False
            raise

    def _send(self, content: str, options: dict[str, Any]) -> TextStream:
        if not isinstance(content, str):
            raise QwenEdgeError(f"a chat message is a string, got {type(content).__name__}")
        o = GenerateOptions.of(self.defaults, "chat", CHAT_NAMES, **options)
        t0 = time.perf_counter()
        max_new = check_max_new_tokens(o.max_new_tokens)
        params = self.model.sampling(**o.sampling())
        # a reply constrained to a schema or grammar, or with log-probabilities (both compose with speculation)
        constraint = self.model.constraint(**o.constraint())
        from .logprobs import check_top
        top = check_top(o.logprobs)
        messages, keep, new = self._fit(self.messages + [{"role": "user", "content": content}], max_new,
                                        bool(o.truncate))
        self.runner.truncate(keep)
        self.runner.append(new)

        def done(stream: TextStream) -> None:
            self._busy = False
            self.last = stream.result
            self.messages = messages + [{"role": "assistant", "content": stream.result.text}]

        return self.model.generation(self.runner, params=params, constraint=constraint, top_logprobs=top,
                                     max_new_tokens=max_new, stop=o.stop, ignore_eos=bool(o.ignore_eos), t0=t0,
                                     on_done=done)

    # ------------------------------------------------------------------ internals
    def _new_ids(self, text: str) -> tuple[int, list[int]]:
        """(ids of the history to keep, new ids to append) for the rendered conversation `text`."""
        hist = self.runner.history
        enc = self.model.tokenizer.encode
        if hist.size:
            done = self.model.tokenizer.decode(hist.tolist(), skip_special_tokens=False)
            if text.startswith(done) and len(text) > len(done):
                return hist.size, enc(text[len(done):], add_special_tokens=False).ids
        ids = enc(text, add_special_tokens=False).ids
        n = min(hist.size, len(ids) - 1)
        diff = np.flatnonzero(hist[:n] != np.asarray(ids[:n], dtype=np.int64))
        keep = int(diff[0]) if diff.size else n
        return keep, ids[keep:]

    def _fit(self, messages: list[dict], max_new: int, truncate: bool) -> tuple[list[dict], int, list[int]]:
        """The messages (with truncate: without their oldest turns, so the prompt fits) and their ids."""
        limit = self.runner.max_length
        room = min(max_new, limit // 2)
        while True:
            keep, new = self._new_ids(self.model.render(messages))
            n = keep + len(new)
            if n < limit and (not truncate or n + room <= limit):
                return messages, keep, new
            first = 1 if messages and messages[0]["role"] == "system" else 0
            if not truncate or len(messages) - first <= 1:
                raise too_long(n, limit, "conversation",
                               "start a new chat or drop the oldest turns (truncate=True, --truncate)")
            del messages[first]  # the oldest turn: a user message and what answered it
            while len(messages) - first > 1 and messages[first]["role"] != "user":
                del messages[first]
