"""Generations for the server: N at once, a bounded queue, and a prompt cache of KV caches.

- Admission: at most `parallel` generations run; up to `queue` more wait (in arrival order); beyond that
  a request is refused at once (Busy: 503 with Retry-After). A waiting request whose client went away
  leaves the queue.
- Prompt cache: every KV cache is a Runner (an in-place cache of the context length). When a generation
  ends its runner joins an LRU of idle runners, keeping what it holds (prompt and reply). A new request
  takes the idle runner whose cached tokens share the longest prefix with its prompt, rewinds it to that
  prefix (free with an in-place cache) and prefills only the rest: a chat that sends its history again
  prefills just the new turn, as llama-server's prompt cache does. At most `parallel + cache` runners
  exist; the least recently used idle one is dropped (its memory freed) beyond that. Memory is bounded by
  (parallel + cache) x context x KV bytes per token.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Sequence

import numpy as np

from ..runtimes.generate import TextStream
from ..runtimes.kv import Runner
from ..runtimes.sampler import SamplingParams


class Busy(Exception):
    """The queue is full."""


class Gone(Exception):
    """The client left while its request waited."""


class Closing(Exception):
    """The server is stopping: no new generation starts."""


class Engine:
    def __init__(self, model: Any, parallel: int = 1, queue: int = 16, cache: int = 4):
        self.model, self.parallel, self.queue_limit, self.cache = model, parallel, queue, cache
        self._cond = threading.Condition()
        self._waiting: deque[object] = deque()
        self.active = 0
        self._idle: list[Runner] = []  # least recently used first
        self._runners = 0
        self.served = 0
        self.closing = False  # set by close(): admit refuses, waiting requests leave the line

    # --- admission ---------------------------------------------------------------------------------------
    def admit(self, gone: Callable[[], bool]) -> None:
        """Take a generation slot, waiting in line if all are busy; Busy when the line is full,
        Closing once the server stops."""
        with self._cond:
            if self.closing:
                raise Closing()
            if self.active < self.parallel and not self._waiting:
                self.active += 1
                return
            if len(self._waiting) >= self.queue_limit:
                raise Busy()
            me = object()
            self._waiting.append(me)
            try:
                while not (self.active < self.parallel and self._waiting[0] is me):
                    self._cond.wait(0.05)
                    if self.closing:
                        raise Closing()
                    if gone():
                        raise Gone()
                self.active += 1
            finally:
                self._waiting.remove(me)
                self._cond.notify_all()

    def close(self) -> None:
        """Refuse new generations from now on (running ones are ended by their cancel check)."""
        with self._cond:
            self.closing = True
            self._cond.notify_all()

    def release(self) -> None:
        with self._cond:
            self.active -= 1
            self.served += 1
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # --- the prompt cache --------------------------------------------------------------------------------
    def _runner_for(self, ids: Sequence[int]) -> tuple[Runner, int]:
        """The idle runner sharing the longest cached prefix with `ids` (rewound to it), or a fresh one."""
        want = np.asarray(ids, dtype=np.int64)
        with self._cond:
            best, keep = None, 0
            for r in self._idle:
                n = min(r.length, len(want) - 1)  # at least one token must be fed
                diff = np.flatnonzero(r.ids[:n] != want[:n])
                common = int(diff[0]) if diff.size else n
                if common > keep:
                    best, keep = r, common
            if best is not None:
                self._idle.remove(best)
            elif self._runners < self.parallel + self.cache:
                self._runners += 1
            else:  # reuse the least recently used idle runner's memory
                best = self._idle.pop(0)
        if best is None:
            best = self.model.new_runner()
        best.truncate(keep)
        best.append(list(ids[keep:]))
        return best, keep

    def _give_back(self, runner: Runner) -> None:
        with self._cond:
            self._idle.append(runner)
            while len(self._idle) > self.cache:
                self._idle.pop(0)  # its buffers go with it
                self._runners -= 1

    # --- one generation ----------------------------------------------------------------------------------
    def generate(self, ids: Sequence[int], *, max_new_tokens: int, params: SamplingParams,
                 stop: list[str] | None, cancel: Callable[[], bool], constraint: Any = None,
                 top_logprobs: int | None = None) -> TextStream:
        """A stream over a runner chosen by the prompt cache; closing or finishing it returns the runner."""
        t0 = time.perf_counter()
        runner, _ = self._runner_for(ids)
        try:
            # (a draft's runner is attached to this runner: it keeps the same conversation's prefix cached)
            return self.model.generation(runner, params=params, constraint=constraint, top_logprobs=top_logprobs,
                                         max_new_tokens=max_new_tokens, stop=stop, t0=t0, cancel=cancel,
                                         on_done=lambda s: self._give_back(s.runner))
        except BaseException:
            self._give_back(runner)
            raise

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"active": self.active, "queued": len(self._waiting), "kv_caches": self._runners,
                    "idle_caches": len(self._idle), "served": self.served}
