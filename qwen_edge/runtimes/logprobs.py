"""Token log-probabilities: of each generated token (and the most likely alternatives), and of a prompt's tokens.

A generated token's log-probability is taken from the distribution the sampler drew from before truncation:
the logits after the repetition / frequency / presence penalties and a constraint's mask, divided by the
temperature (1 when greedy), log-softmaxed over the whole vocabulary. A prompt's tokens (`prompt_logprobs`,
for evaluation harnesses) use the model's raw distribution (temperature 1, no penalties).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import QwenEdgeError

MAX_TOP = 20  # OpenAI's limit for top_logprobs
# A token's own log-probability is never -inf in practice (it was drawn, so its probability was not zero),
# but a float that JSON cannot carry must never reach a writer: such a value is given as this floor (the
# figure OpenAI's API uses for a token it would not sample). Alternatives a constraint masked out have
# probability zero and are left out of `top`, which may then hold fewer than N entries.
LOGPROB_FLOOR = -9999.0


@dataclass
class TokenLogprob:
    id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)  # the most likely tokens, best first


def check_top(n: object, what: str = "logprobs") -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_TOP:
        raise QwenEdgeError(f"{what} must be an integer in 0..{MAX_TOP} (the alternatives to return), got {n!r}")
    return n


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x[np.isfinite(x)].max()
    return x - (m + np.log(np.exp(x - m).sum()))


def entry(lp: np.ndarray, token: int, top: int) -> TokenLogprob:
    """The token's log-probability and the `top` most likely alternatives with a finite one (masked tokens,
    at -inf, are not alternatives)."""
    alts: list[tuple[int, float]] = []
    if top:
        k = min(top, lp.size)
        idx = np.argpartition(-lp, k - 1)[:k]
        idx = idx[np.argsort(-lp[idx], kind="stable")]
        alts = [(int(i), float(lp[i])) for i in idx if np.isfinite(lp[i])]
    own = float(lp[token])
    return TokenLogprob(int(token), own if np.isfinite(own) else LOGPROB_FLOOR, alts)


def prompt_logprobs(runner, ids: list[int], top: int, chunk: int = 64) -> list[TokenLogprob | None]:
    """Each prompt token's log-probability given the ones before it (None for the first): chunks of `chunk`
    positions, each position's logits from one pass (Runner.forward_last). Leaves the prompt in the cache."""
    runner.reset()
    out: list[TokenLogprob | None] = [None]
    for s in range(0, len(ids), chunk):
        part = ids[s:s + chunk]
        runner.append(part)
        rows = runner.forward_last(len(part))
        for j in range(len(part)):
            nxt = s + j + 1
            if nxt < len(ids):
                out.append(entry(log_softmax(rows[j]), ids[nxt], top))
    return out


_BYTE_OF: dict[str, int] | None = None


def token_bytes(tokenizer, token_id: int) -> bytes:
    """The bytes a token stands for (Qwen's byte-level BPE maps each byte to one printable character)."""
    global _BYTE_OF
    if _BYTE_OF is None:
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
            list(range(ord("\xae"), ord("\xff") + 1))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _BYTE_OF = {chr(c): b for b, c in zip(bs, cs)}
    s = tokenizer.id_to_token(int(token_id)) or ""
    try:
        return bytes(_BYTE_OF[ch] for ch in s)
    except KeyError:  # an added / special token: its own text
        return s.encode("utf-8")
