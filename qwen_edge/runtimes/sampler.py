"""Token sampling on numpy logits: repetition penalty, temperature, top-k, top-p, min-p.

The order and the semantics follow Hugging Face ``generate``: repetition penalty,
then (unless greedy) temperature -> top-k -> top-p -> min-p, renormalize, draw.

Speed matters: this runs once per generated token on a laptop CPU with a 151,936-token
vocabulary, where a full ``argsort`` costs ~8 ms and even ``argpartition`` ~1 ms.  So
the hot paths never sort the vocabulary:

* top-k finds a cheap lower bound on the k-th largest logit from per-group maxima and
  only partitions the few logits above it;
* top-p brackets the nucleus boundary with masked sums (peaked rows stop there) or a
  histogram keyed by the float bits (flat rows), and sorts only the few tokens at the
  boundary;
* drawing from the whole vocabulary uses a two-level inverse CDF (group sums, then one
  group) instead of a 150k-long ``cumsum``.

Only numpy and the standard library are imported: apps ship this without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from qwen_edge.errors import QwenEdgeError

from .logprobs import TokenLogprob, entry, log_softmax

# Rows of the (rows, n // rows) view used for group maxima / sums.  Reducing over axis 0
# of that view is ~6x faster in numpy than reducing contiguous blocks over axis 1.
_GROUP_ROWS = 128
# Below this many weights a plain cumsum is cheaper than the two-level draw.
_SMALL = 4096
# top-p sorts the undecided boundary band once it holds at most this many tokens.
_BAND = 1024


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token.  ``temperature == 0`` means greedy (argmax)."""

    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    min_p: float = 0.0  # 0.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off (HF: seen tokens' logits divided / multiplied)
    frequency_penalty: float = 0.0  # OpenAI: minus this x each generated token's count so far
    presence_penalty: float = 0.0  # OpenAI: minus this once for each token generated so far
    seed: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        t = _real("temperature", self.temperature)
        if not math.isfinite(t) or t < 0:
            raise QwenEdgeError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        p = _real("top_p", self.top_p)
        if not 0.0 < p <= 1.0:
            raise QwenEdgeError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            raise QwenEdgeError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        m = _real("min_p", self.min_p)
        if not 0.0 <= m <= 1.0:
            raise QwenEdgeError(f"min_p must be in [0, 1], got {self.min_p!r}")
        r = _real("repetition_penalty", self.repetition_penalty)
        if not (math.isfinite(r) and r > 0):
            raise QwenEdgeError(
                f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty!r}"
            )
        for name in ("frequency_penalty", "presence_penalty"):
            v = _real(name, getattr(self, name))
            if not -2.0 <= v <= 2.0:
                raise QwenEdgeError(f"{name} must be between -2 and 2, got {getattr(self, name)!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0
        ):
            raise QwenEdgeError(f"seed must be an integer >= 0 or None, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_defaults(
        cls,
        generation_config: dict[str, Any] | None,
        *,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        min_p: float | None = None,
        repetition_penalty: float | None = None,
        seed: int | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
    ) -> SamplingParams:
        """Model defaults from a HF ``generation_config.json`` dict, then user overrides.

        An override of ``None`` keeps the model's value; keys missing from the config (or
        null there) fall back to this class's defaults (note: top_k is off here, while HF
        assumes 50 when a config omits it).  ``do_sample: false`` in the config means
        greedy unless the user passes a temperature.
        """
        cfg = generation_config or {}
        values: dict[str, Any] = {}
        for key in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                    "presence_penalty"):
            if cfg.get(key) is not None:
                values[key] = cfg[key]
        if cfg.get("do_sample") is False:
            values["temperature"] = 0.0
        user = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty, seed=seed, frequency_penalty=frequency_penalty,
                    presence_penalty=presence_penalty)
        values.update({k: v for k, v in user.items() if v is not None})
        return cls(**values)


def _real(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise QwenEdgeError(f"{name} must be a number, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- pipeline


def _penalize(logits: np.ndarray, history: np.ndarray | None, penalty: float) -> np.ndarray:
    """HF repetition penalty: seen tokens' logits > 0 are divided by it, others multiplied.

    Gather-then-scatter reads the original values, so repeated ids in ``history`` are
    penalized exactly once without an ``np.unique``.  Copies so the caller's array is kept.
    """
    if penalty == 1.0 or history is None or len(history) == 0:
        return logits
    ids = np.asarray(history, dtype=np.int64).reshape(-1)
    out = logits.copy()
    seen = out[ids]
    out[ids] = np.where(seen > 0, seen / penalty, seen * penalty)
    return out


def _additive(logits: np.ndarray, generated: np.ndarray | None, frequency: float, presence: float) -> np.ndarray:
    """OpenAI's penalties over the tokens generated so far: logit -= frequency * count + presence."""
    if (frequency == 0.0 and presence == 0.0) or generated is None or len(generated) == 0:
        return logits
    ids, counts = np.unique(np.asarray(generated, dtype=np.int64).reshape(-1), return_counts=True)
    out = logits.copy()
    out[ids] -= np.float32(frequency) * counts.astype(np.float32) + np.float32(presence)
    return out


def _as_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits)
    if x.ndim != 1:
        if x.size != x.shape[-1]:
            raise ValueError(f"expected logits for one position, got shape {x.shape}")
        x = x.reshape(-1)
    # float32 everywhere on the full vocabulary: half the memory traffic of float64.
    return x.astype(np.float32, copy=False)


def _topk_candidates(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of a superset of the top-k logits, without touching most of the vocab.

    Split the vocab into groups; the k-th largest group maximum ``t`` is <= the k-th
    largest logit (k distinct groups each hold an element >= t).  So {x >= t} holds every
    top-k token (ties included) and is usually only a few times k long.
    """
    n = x.size
    cols = n // _GROUP_ROWS
    if cols < 8 * k:  # too few groups for the bound to help
        return np.arange(n)
    gmax = x[: cols * _GROUP_ROWS].reshape(_GROUP_ROWS, cols).max(axis=0)
    t = np.partition(gmax, cols - k)[cols - k]
    return np.flatnonzero(x >= t)


def _nucleus(w: np.ndarray, top_p: float) -> np.ndarray:
    """Indices of the smallest top set of ``w`` (float32 weights, max 1) with mass >= top_p.

    Never sorts the vocab: it searches for the weight ``cut`` of the last token kept,
    working on values only, then takes {w >= cut} in one pass (ties at the cut are all
    kept, as HF's top-k does; HF's top-p breaks them by sort order, i.e. arbitrarily).
    """
    # float32 (pairwise) sums are ~2x faster than float64 and precise to ~1e-6: plenty
    # to steer the search; the final cut accumulates in float64.
    target = top_p * float(w.sum())
    # 1) Peaked rows (the common case) stop here: the nucleus is among the few tokens of
    #    weight >= 0.1 or 0.01, so the masked copies are tiny.
    hi, mass = 2.0, 0.0  # {w >= 2} is empty: the max weight is 1
    for t in (1e-1, 1e-2):
        top = w[w >= t]
        m = float(top.sum())
        if m >= target:
            band = top[top < hi]
            break
        hi, mass = t, m
    else:  # the boundary is deep in the bulk: histogram everything (no copy needed)
        band, mass = w, 0.0
    # 2) Flat rows: histogram the band by the float's bit pattern (for floats >= 0 it is
    #    monotone in the value): the top 12 bits of a float32 split [0, 1] into ~1000
    #    log-spaced bins for the price of a shift.  Keep the bin where the mass from the
    #    top crosses the target, then split it by the next 8 bits, and so on.
    for shift in (20, 12, 4, 0):
        if band.size <= _BAND:
            break
        # Shift straight into intp (what bincount wants; its own cast of int32 is slow).
        key = np.right_shift(band.view(np.int32), shift, dtype=np.intp)
        key -= key.min()
        hist = np.bincount(key, weights=band)
        cum = mass + np.cumsum(hist[::-1])  # mass from the largest key down
        r = min(int(np.searchsorted(cum, target, side="left")), hist.size - 1)
        mass = float(cum[r - 1]) if r else mass
        band = band[key == hist.size - 1 - r]
    # 3) HF semantics on the sorted band: keep a token iff the mass strictly above it < top_p.
    band = -np.sort(-band)
    before = mass + np.cumsum(band, dtype=np.float64)[:-1]
    cut = band[min(int(np.searchsorted(before, target, side="left")), band.size - 1)]
    return np.flatnonzero(w >= cut)


def _distribution(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None,
                  generated: np.ndarray | None = None) -> tuple[np.ndarray | None, np.ndarray]:
    """Token ids (None = the whole vocab, in order) and their unnormalized float32 weights.

    history: every id so far (repetition penalty); generated: the ids this call generated (OpenAI's)."""
    x = _penalize(_as_logits(logits), history, params.repetition_penalty)
    x = _additive(x, generated, params.frequency_penalty, params.presence_penalty)
    n = x.size
    if params.greedy:
        return np.array([int(np.argmax(x))]), np.ones(1, np.float32)
    # Clamped so a tiny temperature gives 0 * 1e30 = 0 at the max, not 0 * inf = nan.
    inv_t = np.float32(min(1.0 / params.temperature, 1e30))
    k = params.top_k if 0 < params.top_k < n else 0
    if k:
        ids = _topk_candidates(x, k)
        v = x[ids]
        if ids.size > k:  # HF keeps every logit >= the k-th largest (ties included)
            keep = v >= np.partition(v, ids.size - k)[ids.size - k]
            ids, v = ids[keep], v[keep]
        with np.errstate(over="ignore"):  # a tiny temperature sends the tail to -inf: weight 0, as meant
            w = np.exp((v - v.max()) * inv_t)  # temperature is monotone: same top-k either way
    else:
        with np.errstate(over="ignore"):
            ids, w = None, np.exp((x - x.max()) * inv_t)
    # Weights are exp(logit - max): the max weight is exactly 1, which both filters use.
    if params.top_p < 1.0:
        sel = _nucleus(w, params.top_p)
        ids, w = (sel if ids is None else ids[sel]), w[sel]
    if params.min_p > 0.0:  # prob >= min_p * max prob  <=>  weight >= min_p
        sel = np.flatnonzero(w >= np.float32(params.min_p))
        ids, w = (sel if ids is None else ids[sel]), w[sel]
    return ids, w


def _draw(w: np.ndarray, u: float) -> int:
    """Index i with probability w[i] / sum(w) given u ~ U[0, 1), by inverse CDF.

    Large arrays go through group sums first so no cumsum is longer than ~1-2k.
    """
    n = w.size
    if n <= _SMALL:
        c = np.cumsum(w, dtype=np.float64)
        return _pick(c, u * c[-1], w)
    cols = n // _GROUP_ROWS
    main = w[: cols * _GROUP_ROWS].reshape(_GROUP_ROWS, cols)
    # Group j is the strided column main[:, j]; the ragged tail is one extra group.
    sums = np.empty(cols + 1, dtype=np.float64)
    sums[:cols] = main.sum(axis=0)
    sums[cols] = w[cols * _GROUP_ROWS:].sum(dtype=np.float64)
    c = np.cumsum(sums)
    target = u * c[-1]
    g = _pick(c, target, sums)
    col = main[:, g] if g < cols else w[cols * _GROUP_ROWS:]
    cc = np.cumsum(col, dtype=np.float64)
    j = _pick(cc, target - (c[g - 1] if g else 0.0), col)
    return j * cols + g if g < cols else cols * _GROUP_ROWS + j


def _pick(cum: np.ndarray, target: float, w: np.ndarray) -> int:
    i = int(np.searchsorted(cum, target, side="right"))
    if i < w.size and w[i] > 0:
        return i
    # Rounding pushed the target past the end: take the last non-zero weight.
    return int(np.flatnonzero(w)[-1])


def probs(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None = None,
          generated: np.ndarray | None = None) -> np.ndarray:
    """The final distribution ``Sampler.sample`` draws from, over the whole vocab (float64)."""
    ids, w = _distribution(logits, params, history, generated)
    w = np.asarray(w, dtype=np.float64)
    if ids is None:
        return w / w.sum()
    out = np.zeros(np.asarray(logits).shape[-1], dtype=np.float64)
    out[ids] = w / w.sum()
    return out


class Sampler:
    """Draws token ids; the same seed gives the same tokens for the same logits."""

    def __init__(self, params: SamplingParams | None = None, constraint: Any = None,
                 top_logprobs: int | None = None) -> None:
        self.params = params or SamplingParams()
        self.rng = np.random.default_rng(self.params.seed)
        # constrained.Constraint: masks what its grammar does not allow next, before every other step
        self.constraint = constraint
        # logprobs.py: with a count (0 = the chosen token's alone), each draw's log-probability is kept in `log`
        self.top_logprobs = top_logprobs
        self.log: list[Any] = []

    @property
    def needs_history(self) -> bool:
        p = self.params
        return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0

    def sample(self, logits: np.ndarray, history: np.ndarray | None = None,
               generated: np.ndarray | None = None) -> int:
        """Next token id from ``logits`` [vocab]; ``history`` = every id so far (repetition penalty),
        ``generated`` = the ids generated by this call (frequency / presence penalties)."""
        if self.constraint is not None:
            if self.params.greedy and self.top_logprobs is None:  # the mask only when the best token is refused
                return self.constraint.greedy(logits, lambda x: _distribution(x, self.params, history, generated)[0][0])
            logits = self.constraint.mask(logits)
        ids, w = _distribution(logits, self.params, history, generated)
        if self.params.greedy:
            tok = int(ids[0])  # no random draw, so greedy never advances the rng
        else:
            j = _draw(w, float(self.rng.random()))
            tok = j if ids is None else int(ids[j])
        if self.top_logprobs is not None:
            self.log.append(sampled(logits, self.params, history, generated, tok, self.top_logprobs))
        return tok


def sampled(logits: np.ndarray, params: SamplingParams, history: np.ndarray | None, generated: np.ndarray | None,
            token: int, top: int) -> TokenLogprob:
    """The log-probability entry (logprobs.py) of a token drawn from `logits` (already masked by a constraint,
    if any): the distribution after the penalties and the temperature (1 when greedy), before truncation.
    Here rather than in logprobs.py, so that logprobs.py needs nothing of the sampler (no import cycle)."""
    x = _penalize(_as_logits(logits), history, params.repetition_penalty)
    x = _additive(x, generated, params.frequency_penalty, params.presence_penalty)
    t = params.temperature if params.temperature > 0 else 1.0
    return entry(log_softmax(x / t), token, top)
