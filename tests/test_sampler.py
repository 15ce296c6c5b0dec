"""Sampler: exact small-vocab distributions, a brute-force reference on the real vocab
size (checks the no-sort fast paths), seeded determinism and draw frequencies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.runtimes.sampler import Sampler, SamplingParams, probs

VOCAB = 151936  # Qwen2.5 / Qwen3 logits width


def P(**kw) -> SamplingParams:
    return SamplingParams(**kw)


def log(*weights: float) -> np.ndarray:
    return np.log(np.array(weights, dtype=np.float32))


# ------------------------------------------------------------- hand-computed distributions

# logits = log([1, 2, 3, 4]) -> at temperature 1 the probabilities are [.1, .2, .3, .4].
L4 = log(1, 2, 3, 4)


def test_temperature_one_is_softmax():
    np.testing.assert_allclose(probs(L4, P()), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)


def test_temperature_sharpens_and_flattens():
    # T = 0.5 squares the weights, T = 2 takes their square root.
    np.testing.assert_allclose(probs(L4, P(temperature=0.5)), np.array([1, 4, 9, 16]) / 30, rtol=1e-6)
    r = np.sqrt([1, 2, 3, 4])
    np.testing.assert_allclose(probs(L4, P(temperature=2.0)), r / r.sum(), rtol=1e-6)


def test_top_k():
    np.testing.assert_allclose(probs(L4, P(top_k=2)), [0, 0, 3 / 7, 4 / 7], rtol=1e-6)
    np.testing.assert_allclose(probs(L4, P(top_k=1)), [0, 0, 0, 1])
    # top_k >= vocab is a no-op.
    np.testing.assert_allclose(probs(L4, P(top_k=10)), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)


def test_top_k_keeps_ties_like_hf():
    # HF keeps every logit >= the k-th largest, so a tie at the cut keeps both.
    np.testing.assert_allclose(probs(log(1, 3, 3, 4), P(top_k=2)), [0, 0.3, 0.3, 0.4], rtol=1e-6)


@pytest.mark.parametrize(
    "top_p, expected",
    [
        (0.3, [0, 0, 0, 1]),  # .4 alone already covers .3
        (0.39, [0, 0, 0, 1]),
        (0.41, [0, 0, 3 / 7, 4 / 7]),  # .4 alone is just short
        (0.65, [0, 0, 3 / 7, 4 / 7]),  # .4 + .3 = .7 >= .65
        (0.75, [0, 2 / 9, 3 / 9, 4 / 9]),  # .7 < .75, so .2 joins
        (1.0, [0.1, 0.2, 0.3, 0.4]),
    ],
)
def test_top_p(top_p, expected):
    np.testing.assert_allclose(probs(L4, P(top_p=top_p)), expected, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize(
    "min_p, expected",
    [
        (0.4, [0, 2 / 9, 3 / 9, 4 / 9]),  # threshold .16
        (0.6, [0, 0, 3 / 7, 4 / 7]),  # threshold .24
        (0.9, [0, 0, 0, 1]),  # threshold .36
        (1.0, [0, 0, 0, 1]),  # only the max survives
    ],
)
def test_min_p(min_p, expected):
    np.testing.assert_allclose(probs(L4, P(min_p=min_p)), expected, rtol=1e-6, atol=1e-12)


def test_repetition_penalty_hf_semantics():
    logits = np.array([2.0, -1.0, 0.5, 1.0], dtype=np.float32)
    # Token 0 (positive) is divided, token 1 (negative) multiplied, once each even if repeated.
    got = probs(logits, P(repetition_penalty=2.0), history=np.array([0, 1, 1, 0]))
    want = np.exp([1.0, -2.0, 0.5, 1.0])
    np.testing.assert_allclose(got, want / want.sum(), rtol=1e-6)
    # The caller's logits are not modified.
    np.testing.assert_array_equal(logits, [2.0, -1.0, 0.5, 1.0])
    # No history, or penalty 1, is a no-op.
    base = np.exp([2.0, -1.0, 0.5, 1.0])
    np.testing.assert_allclose(probs(logits, P(repetition_penalty=2.0)), base / base.sum(), rtol=1e-6)
    np.testing.assert_allclose(probs(logits, P(), history=np.array([0])), base / base.sum(), rtol=1e-6)


def test_repetition_penalty_applies_before_greedy():
    s = Sampler(P(temperature=0, repetition_penalty=2.0))
    logits = np.array([2.0, 1.5], dtype=np.float32)
    assert s.sample(logits) == 0
    assert s.sample(logits, history=np.array([0])) == 1  # 2.0 / 2 < 1.5


def test_temperature_is_applied_before_top_p():
    # T = .5 -> [1, 4, 9, 16] / 30; with top_p .8: .533 + .3 >= .8, so only two tokens.
    # (At T = 1 the nucleus would hold three: .4 + .3 < .8.)
    got = probs(L4, P(temperature=0.5, top_p=0.8))
    np.testing.assert_allclose(got, [0, 0, 9 / 25, 16 / 25], rtol=1e-6, atol=1e-12)


def test_full_pipeline_order():
    # [1, 2, 3, 4, 10] / 20; top_k 4 drops 1; top_p .8 over [2, 3, 4, 10] / 19 keeps 10, 4, 3
    # (mass above 2 is 17/19 >= .8); min_p .35 keeps weights >= 3.5 -> 4 and 10.
    got = probs(log(1, 2, 3, 4, 10), P(top_k=4, top_p=0.8, min_p=0.35))
    np.testing.assert_allclose(got, [0, 0, 0, 4 / 14, 10 / 14], rtol=1e-6, atol=1e-12)
    got = probs(log(1, 2, 3, 4, 10), P(top_k=4, top_p=0.8))
    np.testing.assert_allclose(got, [0, 0, 3 / 17, 4 / 17, 10 / 17], rtol=1e-6, atol=1e-12)


def test_greedy_is_one_hot_argmax():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.standard_normal(VOCAB).astype(np.float32) * 3
        want = int(np.argmax(logits))
        assert Sampler(P(temperature=0)).sample(logits) == want
        p = probs(logits, P(temperature=0.0, top_k=5, top_p=0.5))
        assert p[want] == 1.0 and p.sum() == 1.0
    assert P(temperature=0).greedy and not P(temperature=0.1).greedy


def test_tiny_temperature_is_argmax_not_nan():
    logits = np.array([1.0, 3.0, 2.0], dtype=np.float32)
    for t in (1e-3, 1e-20, 1e-300):
        np.testing.assert_array_equal(probs(logits, P(temperature=t)), [0, 1, 0])


def test_exact_ties_at_the_top_p_cut_are_all_kept():
    # Order among equal logits is arbitrary (HF: sort order); here ties are kept together.
    np.testing.assert_allclose(probs(np.zeros(8, np.float32), P(top_p=0.5)), np.full(8, 1 / 8))
    got = probs(log(1, 2, 2, 4), P(top_p=0.6))  # .4 + .2 >= .6, the other .2 ties
    np.testing.assert_allclose(got, [0, 0.25, 0.25, 0.5], rtol=1e-6)


def test_accepts_batch_of_one_and_float16():
    logits = L4.reshape(1, 1, 4).astype(np.float16)
    np.testing.assert_allclose(probs(logits, P()), [0.1, 0.2, 0.3, 0.4], rtol=1e-3)
    with pytest.raises(ValueError):
        probs(np.zeros((2, 4), np.float32), P())


# ------------------------------------------------- brute-force reference on the real vocab


def reference_probs(logits: np.ndarray, p: SamplingParams, history=None) -> np.ndarray:
    """Straightforward HF-style pipeline with full sorts, in float64."""
    x = logits.astype(np.float64).copy()
    if history is not None and p.repetition_penalty != 1.0:
        for t in set(int(i) for i in history):
            x[t] = x[t] / p.repetition_penalty if x[t] > 0 else x[t] * p.repetition_penalty
    if p.greedy:
        out = np.zeros_like(x)
        out[np.argmax(x)] = 1
        return out

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    x = x / p.temperature
    if p.top_k:
        kth = np.sort(x)[-min(p.top_k, x.size)]
        x[x < kth] = -np.inf
    if p.top_p < 1:
        pr = softmax(x)
        order = np.argsort(-pr, kind="stable")
        above = np.cumsum(pr[order]) - pr[order]
        drop = above >= p.top_p
        drop[0] = False
        x[order[drop]] = -np.inf
    if p.min_p > 0:
        pr = softmax(x)
        x[pr < p.min_p * pr.max()] = -np.inf
    return softmax(x)


def llm_like_logits(rng: np.random.Generator, n: int = VOCAB, peak: float = 12.0) -> np.ndarray:
    """A broad background plus a few strong candidates, like a real next-token row."""
    x = rng.standard_normal(n) * 2.0
    x[rng.choice(n, 8, replace=False)] += peak * rng.random(8) + 4
    return x.astype(np.float32)


@pytest.mark.parametrize(
    "params",
    [
        P(temperature=0.7, top_k=20, top_p=0.8),
        P(temperature=1.0, top_k=50),
        P(temperature=1.0, top_k=1000, top_p=0.95),
        P(temperature=1.2, top_k=20000, top_p=0.9),
        P(temperature=1.0, top_p=0.9),
        P(temperature=1.3, top_p=0.5),
        P(temperature=0.6, top_p=0.95, min_p=0.05),
        P(temperature=1.0, min_p=0.1),
        P(temperature=0.8, top_k=40, repetition_penalty=1.3),
        P(temperature=1.0),
    ],
    ids=repr,
)
@pytest.mark.parametrize("peak", [12.0, 0.0], ids=["peaked", "flat"])
def test_matches_reference_on_full_vocab(params, peak):
    rng = np.random.default_rng(7)
    for _ in range(3):
        logits = llm_like_logits(rng, peak=peak)
        history = rng.choice(VOCAB, 64) if params.repetition_penalty != 1.0 else None
        got = probs(logits, params, history)
        want = reference_probs(logits, params, history)
        np.testing.assert_array_equal(got > 0, want > 0)  # exactly the same support
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-12)
        assert math.isclose(got.sum(), 1.0, rel_tol=1e-9)


# ------------------------------------------------------------- draws: frequencies and seeds

def chi2_critical(df: int, z: float = 3.09) -> float:
    """Chi-square quantile by Wilson-Hilferty; z = 3.09 is p = 0.001 (within ~1% here)."""
    a = 2.0 / (9.0 * df)
    return df * (1.0 - a + z * math.sqrt(a)) ** 3


def chi_square(counts: np.ndarray, p: np.ndarray) -> tuple[float, int]:
    n = counts.sum()
    support = p > 0
    assert counts[~support].sum() == 0, "sampled a token of probability 0"
    exp = n * p[support]
    return float(((counts[support] - exp) ** 2 / exp).sum()), int(support.sum()) - 1


@pytest.mark.parametrize(
    "params",
    [P(seed=1), P(temperature=0.7, seed=2), P(top_k=6, seed=3), P(top_p=0.9, seed=4),
     P(min_p=0.1, temperature=1.5, seed=5)],
    ids=repr,
)
def test_draw_frequencies_match_probs(params):
    logits = log(1, 2, 3, 4, 5, 6, 7, 8, 9, 30)
    p = probs(logits, params)
    s = Sampler(params)
    counts = np.bincount([s.sample(logits) for _ in range(20_000)], minlength=p.size)
    stat, df = chi_square(counts, p)
    assert stat < chi2_critical(df), (stat, df, counts)


def test_draw_frequencies_full_vocab_two_level():
    # Heavy tokens spread over groups, including the ragged tail past the last full group,
    # plus a uniform background: checks the grouped inverse CDF.
    n = VOCAB + 50
    logits = np.zeros(n, dtype=np.float32)
    heavy = np.array([0, 1, 1187, 77_777, n - 1])
    logits[heavy] = np.log(np.array([2000.0, 4000.0, 6000.0, 8000.0, 10000.0]))
    p = probs(logits, P(seed=11))
    s = Sampler(P(seed=11))
    draws = np.array([s.sample(logits) for _ in range(20_000)])
    counts = np.append([np.count_nonzero(draws == h) for h in heavy], 0)
    counts[-1] = draws.size - counts.sum()
    binned = np.append(p[heavy], 1 - p[heavy].sum())
    stat, df = chi_square(counts, binned)
    assert stat < chi2_critical(df), (stat, counts, binned * draws.size)


def test_same_seed_same_tokens_different_seed_differs():
    rng = np.random.default_rng(0)
    rows = [llm_like_logits(rng, peak=2.0) for _ in range(40)]
    for base in (P(temperature=1.0), P(temperature=0.7, top_k=20, top_p=0.8), P(top_p=0.9)):
        def run(seed: int | None) -> list[int]:
            s = Sampler(SamplingParams(**{**base.__dict__, "seed": seed}))
            return [s.sample(r) for r in rows]

        assert run(42) == run(42)
        assert run(42) != run(43)


# --------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=-0.1), dict(temperature=math.nan), dict(temperature=math.inf),
        dict(temperature="hot"), dict(top_p=0.0), dict(top_p=1.01), dict(top_p=-1),
        dict(top_k=-1), dict(top_k=2.5), dict(top_k=True), dict(min_p=-0.01), dict(min_p=1.5),
        dict(repetition_penalty=0.0), dict(repetition_penalty=-1.0), dict(repetition_penalty=math.inf),
        dict(seed=-1), dict(seed=1.5),
    ],
    ids=repr,
)
def test_invalid_params(kw):
    with pytest.raises(QwenEdgeError) as e:
        SamplingParams(**kw)
    assert "\n" not in str(e.value)


def test_from_defaults():
    qwen = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20,
            "repetition_penalty": 1.05, "bos_token_id": 151643}
    p = SamplingParams.from_defaults(qwen)
    assert (p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty) == (0.7, 20, 0.8, 0.0, 1.05)
    p = SamplingParams.from_defaults(qwen, temperature=0.2, top_k=None, seed=3)
    assert (p.temperature, p.top_k, p.seed) == (0.2, 20, 3)
    # do_sample false: greedy, unless the user asks for a temperature.
    assert SamplingParams.from_defaults({"do_sample": False, "temperature": 0.7}).greedy
    assert not SamplingParams.from_defaults({"do_sample": False}, temperature=0.5).greedy
    # Missing or null keys keep this class's defaults.
    assert SamplingParams.from_defaults({"top_p": None}) == SamplingParams()
    assert SamplingParams.from_defaults(None) == SamplingParams()
    with pytest.raises(QwenEdgeError):
        SamplingParams.from_defaults({"top_p": 0})


def test_frequency_and_presence_penalties_follow_openai():
    """logit[t] -= frequency_penalty * count(t) + presence_penalty * (count(t) > 0), over generated ids."""
    from qwen_edge.runtimes.sampler import probs
    rng = np.random.default_rng(3)
    x = rng.standard_normal(50).astype(np.float32)
    gen = np.array([4, 4, 4, 9, 17, 17])
    p = probs(x, SamplingParams(temperature=1.0, frequency_penalty=0.5, presence_penalty=0.25), None, gen)
    want = x.astype(np.float64).copy()
    for t, c in ((4, 3), (9, 1), (17, 2)):
        want[t] -= 0.5 * c + 0.25
    want = np.exp(want - want.max())
    np.testing.assert_allclose(p, want / want.sum(), rtol=1e-5)
    assert np.allclose(probs(x, SamplingParams(frequency_penalty=0.5), None, None), probs(x, SamplingParams()))
    for bad in (dict(frequency_penalty=2.5), dict(presence_penalty=-3), dict(presence_penalty="x")):
        with pytest.raises(QwenEdgeError):
            SamplingParams(**bad)
