"""Per-token statistics, one window at a time: the full [window, vocab] log-softmax never outlives its window
and is processed in row chunks, so memory stays near one window's logits."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .windows import Window

ROW_CHUNK = 64


@dataclass
class Compact:
    """A reference distribution per scored token: its top-k log-probs (sorted, descending), the log of the
    probability mass of all other tokens, and the log-prob of the actual next token."""
    ids: np.ndarray    # int32 [N, k]
    logp: np.ndarray   # float32 [N, k]
    rest: np.ndarray   # float32 [N]  log(1 - sum(exp(logp))), computed from the full distribution
    nll: np.ndarray    # float64 [N]  -log p(target)

    def __len__(self) -> int:
        return len(self.nll)

    def slice(self, a: int, b: int) -> "Compact":
        return Compact(self.ids[a:b], self.logp[a:b], self.rest[a:b], self.nll[a:b])

    @staticmethod
    def concat(parts: list["Compact"]) -> "Compact":
        return Compact(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "logp", "rest", "nll")))


@dataclass
class TokenStats:
    nll: np.ndarray                      # float64 [N]
    kl: Optional[np.ndarray] = None      # float64 [N]  KL(reference || model), top-k + rest grouping
    top1: Optional[np.ndarray] = None    # bool [N]     model's argmax is the reference's argmax
    compact: Optional[Compact] = None    # this model's own compact distribution (for --save-reference)
    seconds: float = 0.0


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    lse = m.astype(np.float64) + np.log(np.exp(x - m).sum(axis=1, keepdims=True, dtype=np.float64))
    return (x - lse).astype(np.float32)


def _masked_lse(lq: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """log of the probability mass outside `ids`, per row (float64; -inf when nothing is left)."""
    y = lq.copy()
    np.put_along_axis(y, ids, -np.inf, axis=1)
    with np.errstate(divide="ignore"):
        return np.log(np.exp(y).sum(axis=1, dtype=np.float64))


def _top_k(lq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.argpartition(-lq, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(lq, ids, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1).astype(np.int32), np.take_along_axis(vals, order, axis=1)


def kl_from_compact(ref: Compact, lq: np.ndarray) -> np.ndarray:
    """KL(P || Q) with P given compactly: the top-k tokens each, the rest as one bucket. By the log-sum
    inequality this is a lower bound of the full KL, equal to it when both agree outside the top k."""
    ids = ref.ids.astype(np.int64)
    lp = ref.logp.astype(np.float64)
    lq_s = np.take_along_axis(lq, ids, axis=1).astype(np.float64)
    kl = (np.exp(lp) * (lp - lq_s)).sum(axis=1)
    # the rest bucket at float32 on both sides, as references store it: a model against itself gives exactly 0
    lp_r = ref.rest.astype(np.float64)
    lq_r = _masked_lse(lq, ids).astype(np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        rest = np.where(np.isneginf(lp_r), 0.0, np.exp(lp_r) * (lp_r - lq_r))
    return np.maximum(kl + rest, 0.0)


def _chunk(lq: np.ndarray, tgt: np.ndarray, top_k: int, ref: Optional[Compact]) -> tuple:
    nll = -np.take_along_axis(lq, tgt[:, None], axis=1)[:, 0].astype(np.float64)
    comp = kl = top1 = None
    if top_k:
        ids, vals = _top_k(lq, top_k)
        comp = Compact(ids, vals, _masked_lse(lq, ids).astype(np.float32), nll)
    if ref is not None:
        kl = kl_from_compact(ref, lq)
        # ties count as agreement: the model's value at the reference's argmax is the model's maximum
        top1 = np.take_along_axis(lq, ref.ids[:, :1].astype(np.int64), axis=1)[:, 0] >= lq.max(axis=1)
    return nll, comp, kl, top1


class Progress:
    def __init__(self, desc: str, total: int, enabled: bool = True):
        self.desc, self.total, self.enabled, self.t0 = desc, total, enabled, time.perf_counter()

    def update(self, done: int, tokens: int) -> None:
        if self.enabled:
            dt = time.perf_counter() - self.t0
            eta = dt / done * (self.total - done) if done else 0.0
            print(f"\r{self.desc}: window {done}/{self.total}, {tokens} tokens scored, {dt:.0f} s"
                  f" (eta {eta:.0f} s)", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr, flush=True)


def score(logits_fn: Callable[[np.ndarray], np.ndarray], tokens: np.ndarray, windows: list[Window], *,
          top_k: int = 0, reference: Optional[Compact] = None, desc: str = "eval",
          progress: bool = True) -> TokenStats:
    """Scores every window's targets; `top_k` > 0 keeps this model's compact distribution, `reference`
    (aligned with the targets) adds KL and top-1 agreement."""
    nlls, comps, kls, top1s = [], [], [], []
    bar = Progress(desc, len(windows), progress)
    t0, pos = time.perf_counter(), 0
    try:
        for i, w in enumerate(windows):
            logits = logits_fn(tokens[w.begin:w.end])
            rows = logits[w.first - 1 - w.begin: w.end - 1 - w.begin]  # row t-1 predicts token t
            tgt = tokens[w.first:w.end]
            for a in range(0, len(rows), ROW_CHUNK):
                b = min(a + ROW_CHUNK, len(rows))
                lq = _log_softmax(np.asarray(rows[a:b], dtype=np.float32))
                ref = reference.slice(pos + a, pos + b) if reference is not None else None
                nll, comp, kl, top1 = _chunk(lq, tgt[a:b], top_k, ref)
                nlls.append(nll)
                if comp is not None:
                    comps.append(comp)
                if kl is not None:
                    kls.append(kl)
                    top1s.append(top1)
            pos += len(rows)
            del logits, rows
            bar.update(i + 1, pos)
    finally:
        bar.close()
    return TokenStats(nll=np.concatenate(nlls), kl=np.concatenate(kls) if kls else None,
                      top1=np.concatenate(top1s) if top1s else None,
                      compact=Compact.concat(comps) if comps else None, seconds=time.perf_counter() - t0)
