"""The reported figures and their standard errors, from per-token statistics.

Standard errors treat the scored tokens as independent samples (the usual convention, as in llama.cpp);
tokens of one text are correlated, so they understate the real uncertainty somewhat. The error of
exp(mean) comes from the delta method: se(exp(m)) = exp(m) * se(m).
"""

from __future__ import annotations

import math

import numpy as np


def _se(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def perplexity(nll: np.ndarray) -> dict[str, float]:
    m = float(np.mean(nll))
    ppl = math.exp(m)
    return {"tokens": int(len(nll)), "nll_mean": m, "ppl": ppl, "ppl_se": ppl * _se(nll)}


def against_reference(nll: np.ndarray, ref_nll: np.ndarray, kl: np.ndarray, top1: np.ndarray) -> dict[str, float]:
    """KL statistics, top-1 agreement and the perplexity ratio model/reference on the same tokens; the
    ratio's error uses the paired per-token differences, so it is much tighter than the two ppl errors."""
    d = nll - ref_nll
    ratio = math.exp(float(np.mean(d)))
    agree = float(np.mean(top1))
    return {
        "ref_ppl": math.exp(float(np.mean(ref_nll))),
        "ppl_ratio": ratio, "ppl_ratio_se": ratio * _se(d),
        "ppl_increase": ratio - 1.0,
        "kl_mean": float(np.mean(kl)), "kl_mean_se": _se(kl),
        "kl_median": float(np.median(kl)), "kl_p99": float(np.percentile(kl, 99)), "kl_max": float(np.max(kl)),
        "top1": agree, "top1_se": math.sqrt(agree * (1 - agree) / len(top1)),
    }
