"""pass@k and paired differences, with the statistics a CI gate can lean on.

- pass@k: the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k) for n samples of which c
  pass, computed as a product (no large binomials), averaged over items.
- The difference between a model and its reference is paired: both answered the same items, so only items
  where they disagree carry information. The interval is a paired bootstrap over items (percentile, 10,000
  resamples, fixed seed: the same report every run), which works for greedy pass@1 (0/1 per item) and for
  pass@k from several samples (fractions per item) alike. For 0/1 outcomes the exact McNemar test (a
  binomial test on the discordant items) gives the p-value: exact at any sample size, where a normal
  approximation is poor with the few discordant items a good quantization leaves.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per item, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(results: Sequence[Sequence[bool]], k: int) -> float:
    return float(np.mean([pass_at_k(len(r), int(sum(r)), k) for r in results])) if results else 0.0


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b items only the model passed, c only the reference."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)


def paired(model: Sequence[float], reference: Sequence[float], *, resamples: int = 10_000, seed: int = 0,
           level: float = 0.95) -> dict[str, float | int | bool | None]:
    """The model's score minus the reference's over the same items, its bootstrap interval, and (for 0/1
    scores) the discordant counts and the exact McNemar p-value."""
    x, y = np.asarray(model, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("paired scores need the same, non-empty set of items")
    d = x - y
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(resamples, d.size))
    boot = d[idx].mean(axis=1)
    lo, hi = np.quantile(boot, [(1 - level) / 2, 1 - (1 - level) / 2])
    out: dict[str, float | int | bool | None] = {
        "diff": float(d.mean()), "ci_low": float(lo), "ci_high": float(hi), "level": level, "items": int(d.size),
        "distinguishable": bool(lo > 0 or hi < 0), "p_value": None, "model_only": None, "reference_only": None}
    if set(np.unique(x)) <= {0.0, 1.0} and set(np.unique(y)) <= {0.0, 1.0}:
        b, c = int(((x == 1) & (y == 0)).sum()), int(((x == 0) & (y == 1)).sum())
        out.update(model_only=b, reference_only=c, p_value=mcnemar_exact(b, c))
    return out


def noise_floor(n: int, p: float = 0.5, level: float = 0.95) -> float:
    """Half the width of a (normal) interval on a score near `p` from n items: a gate margin smaller than
    this cannot be told apart from noise at this sample size."""
    from statistics import NormalDist
    z = NormalDist().inv_cdf((1 + level) / 2)
    return z * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))

