"""The generation loop: prefill, sample, feed back; and the text stream on top of it.

`token_loop` yields token ids; `TextStream` turns them into text pieces (never a broken UTF-8
character, stop strings held back until decided) and records a `Result` with timings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

from ..errors import QwenEdgeError
from .detok import StreamDecoder
from .kv import Runner
from .sampler import Sampler
from .stops import StopMatcher


@dataclass
class Timings:
    """Seconds and counts for one generation (`decode_tps` excludes the first token)."""

    prompt_tokens: int = 0  # tokens prefilled by this call (a chat turn reuses the earlier ones)
    cached_tokens: int = 0  # tokens already in the cache when the call started
    new_tokens: int = 0
    ttft_s: float = 0.0  # call start to the first token (tokenizing, prefill and one sample)
    prefill_s: float = 0.0
    decode_s: float = 0.0  # first token to last token
    total_s: float = 0.0
    run_s: float = 0.0  # inside onnxruntime during the decode steps
    sample_s: float = 0.0
    detok_s: float = 0.0  # streaming detokenizer and stop strings
    cancelled: bool = False  # stopped by the caller's cancel()
    speculative: dict[str, Any] | None = None  # with a draft or lookup: SpecStats.to_dict()
    mask_s: float = 0.0  # constrained decoding: computing the allowed-token masks (within sample_s)

    @property
    def prefill_tps(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        return (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "prefill_tps": self.prefill_tps, "decode_tps": self.decode_tps}


@dataclass
class Result:
    text: str = ""
    tokens: list[int] = field(default_factory=list)  # generated ids (with the end token when it ended on one)
    finish_reason: str = ""  # "eos" | "stop" (a stop string) | "length" (max_new_tokens or the context)
    timings: Timings = field(default_factory=Timings)
    logprobs: list[Any] | None = None  # with logprobs=N: a logprobs.TokenLogprob per token in `tokens`
    tool_calls: list[dict] | None = None  # with tools (Model.complete): the calls, in OpenAI's format
    content: str | None = None  # with tools: the text outside the calls (None when there is none)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "finish_reason": self.finish_reason,
                "timings": self.timings.to_dict()}


def token_loop(runner: Runner, sampler: Sampler, *, max_new_tokens: int, stop_ids: frozenset[int],
               ignore_eos: bool = False, timings: Timings, t0: float,
               cancel: Callable[[], bool] | None = None, proposer: Any = None) -> Iterator[int]:
    """Run the runner's pending ids, then sample up to max_new_tokens ids, each fed back in place.

    The one consumer of a generation's tokens (mlx-lm's generate_step shape): a producer (`plain_steps`, or
    speculative.py's `speculative_steps` with a draft model or prompt lookup) yields each final token, already
    in the runner; the end tests live here once: an end token (unless ignore_eos), max_new_tokens ids, a full
    context, or `cancel()` turning true (checked after every token, before the next forward pass: a server
    stops within one token of a disconnect). Closing the producer lets it settle the cache. The last sampled
    id stays pending (not fed): a chat's next turn feeds it with its own tokens. Fills `timings`.
    """
    timings.cached_tokens = runner.length
    timings.prompt_tokens = runner.n - runner.length
    start = runner.n  # ids from here on are this call's output
    t = time.perf_counter()
    logits = runner.forward()
    timings.prefill_s = time.perf_counter() - t
    run0 = runner.run_seconds
    stats = None
    if proposer is None:
        steps = plain_steps(runner, sampler, logits, start, timings)
    else:
        from .speculative import SpecStats, speculative_steps
        stats = SpecStats()
        steps = speculative_steps(runner, sampler, proposer, logits, start, timings, stats,
                                  max_new_tokens=max_new_tokens, stop_ids=frozenset() if ignore_eos else stop_ids)
    emitted = 0
    try:
        for tok in steps:
            emitted += 1
            timings.new_tokens = emitted
            if emitted == 1:
                timings.ttft_s = time.perf_counter() - t0
            yield tok
            if (tok in stop_ids and not ignore_eos) or emitted == max_new_tokens or runner.free == 0:
                return
            if cancel is not None and cancel():
                timings.cancelled = True
                return
    finally:
        steps.close()  # the producer settles the cache (speculative: back to the tokens kept)
        timings.run_s = runner.run_seconds - run0
        if sampler.constraint is not None:
            timings.mask_s = sampler.constraint.mask_s
        if stats is not None:
            timings.speculative = stats.to_dict()


def plain_steps(runner: Runner, sampler: Sampler, logits: Any, start: int, timings: Timings) -> Iterator[int]:
    """One token a forward pass: sample (a constraint told of it), feed it back, run the next step when asked."""
    penalty = sampler.needs_history
    constraint = sampler.constraint  # constrained.py: told every sampled token
    # the sampler's greedy path, minus its overhead
    argmax = sampler.params.greedy and not penalty and constraint is None and sampler.top_logprobs is None
    sample, push, forward = sampler.sample, runner.push, runner.forward
    while True:
        ts = time.perf_counter()
        tok = int(logits.argmax()) if argmax else (
            sample(logits, runner.history, runner.history[start:]) if penalty else sample(logits))
        if constraint is not None:
            constraint.advance(tok)
        timings.sample_s += time.perf_counter() - ts
        push(tok)
        yield tok
        logits = forward()


class TextStream:
    """Iterate for text pieces; `result` holds the whole text, tokens, finish reason and timings.

    Closing it early (break + close(), or garbage collection) ends the generation and frees the cache.
    """

    def __init__(self, runner: Runner, sampler: Sampler, tokenizer: Any, *, max_new_tokens: int,
                 stop_ids: frozenset[int], stops: Sequence[str] | None = None, ignore_eos: bool = False,
                 t0: float | None = None, on_done: Callable[[TextStream], None] | None = None,
                 cancel: Callable[[], bool] | None = None, proposer: Any = None):
        self.result = Result()
        self._t0 = time.perf_counter() if t0 is None else t0
        if ignore_eos:
            stop_ids = frozenset()
        self._stop_ids = stop_ids
        self._matcher = StopMatcher(stops if stops else None)
        self._decoder = StreamDecoder(tokenizer)
        self._on_done = on_done
        self.runner = runner
        self.sampler = sampler
        if sampler.top_logprobs is not None:
            self.result.logprobs = sampler.log  # filled as tokens are drawn (the server streams them)
        self._tokens = token_loop(runner, sampler, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                                  ignore_eos=ignore_eos, timings=self.result.timings, t0=self._t0, cancel=cancel,
                                  proposer=proposer)
        self._pieces = self._run()
        self.done = False

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def __enter__(self) -> TextStream:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._pieces.close()
        if self._on_done is not None:  # never started: the generator's finally did not run
            cb, self._on_done = self._on_done, None
            cb(self)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def read(self) -> str:
        """Run to the end; return the whole text."""
        for _ in self:
            pass
        return self.result.text

    def _run(self) -> Iterator[str]:
        res, tm = self.result, self.result.timings
        text: list[str] = []
        detok_s = 0.0
        t_first = t_last = 0.0
        reason = "cancelled"
        try:
            for tok in self._tokens:
                t_last = time.perf_counter()
                if not t_first:
                    t_first = t_last
                res.tokens.append(tok)
                ts = time.perf_counter()
                piece = "" if tok in self._stop_ids else self._decoder.put(tok)
                out, stopped = self._matcher.put(piece) if piece else ("", False)
                detok_s += time.perf_counter() - ts
                if out:
                    text.append(out)
                    yield out
                if stopped:
                    reason = "stop"
                    break
            else:
                last = res.tokens[-1] if res.tokens else None
                reason = ("cancelled" if tm.cancelled else
                          "eos" if last is not None and last in self._stop_ids else "length")
            if reason != "stop":
                ts = time.perf_counter()
                tail, stopped = self._matcher.put(self._decoder.flush())
                tail += self._matcher.flush()
                detok_s += time.perf_counter() - ts
                if stopped:
                    reason = "stop"
                if tail:
                    text.append(tail)
                    yield tail
        finally:
            self._tokens.close()
            tm.detok_s = detok_s
            tm.total_s = time.perf_counter() - self._t0
            tm.decode_s = t_last - t_first
            res.text = "".join(text)
            res.finish_reason = reason
            self.done = True
            if self._on_done is not None:
                cb, self._on_done = self._on_done, None
                cb(self)


def check_max_new_tokens(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise QwenEdgeError(f"max_new_tokens must be an integer >= 1, got {n!r}")
    return n
