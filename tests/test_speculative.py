"""Speculative decoding on tiny random models: the target's greedy tokens, its sampling distribution, the
rollback, and refusals. (The real 0.5B, int4 drafting fp32: test_runtime_real.py.)"""

from __future__ import annotations


import numpy as np
import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.export.writer import export
from qwen_edge.runtimes.model import Model
from qwen_edge.runtimes.sampler import SamplingParams, probs
from tiny_models import make_tiny

MAX_LEN = 600
REPEATING = list(range(5, 40)) * 3  # lookup finds n-grams here
PLAIN = [7, 300, 12, 99, 5, 250, 31, 64, 18, 2 + 200]  # and not here


@pytest.fixture(scope="module")
def tinies(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    out = {}
    import torch
    for name, seed, vocab in (("a", 0, 320), ("b", 1, 320), ("c", 2, 400), ("a-noisy", 0, 320)):
        model, folder = make_tiny(root / f"hf-{name}", seed=seed, vocab_size=vocab, max_position_embeddings=MAX_LEN)
        if name == "a-noisy":  # "a" with its weights perturbed: a draft that agrees often, not always
            with torch.no_grad():
                g = torch.Generator().manual_seed(5)
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.std())
            model.save_pretrained(str(folder))
        export(str(folder), root / name, max_length=MAX_LEN, progress=False)
        out[name] = root / name
    return out


_ALWAYS = pytest.MonkeyPatch()


@pytest.fixture(autouse=True)
def _adaptive_again():
    yield
    _ALWAYS.undo()


def always_propose(patch) -> None:
    """Every speculative step proposes its most tokens (the controller's choice replaced): the verify and
    rejection paths are then exercised on every step, which the adaptive choice would often skip."""
    from qwen_edge.runtimes.speculative import Controller
    patch.setattr(Controller, "choose", lambda self, draft_cost: self.max_tokens)


def load(folder, adaptive=True, **kw):
    if not adaptive:
        always_propose(_ALWAYS)  # undone after the test
    return Model.load(folder, threads=2, **kw)


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("how", ["lookup", "draft-other", "draft-self"])
def test_greedy_tokens_equal_plain(tinies, how, adaptive):
    plain = load(tinies["a"])
    kw = {"lookup": dict(lookup=6), "draft-other": dict(draft=tinies["b"], draft_tokens=5),
          "draft-self": dict(draft=tinies["a"], draft_tokens=7)}[how]
    spec = load(tinies["a"], adaptive, **kw)
    for prompt in (REPEATING, PLAIN):
        ref = plain.complete(prompt, max_new_tokens=80, temperature=0, ignore_eos=True)
        got = spec.complete(prompt, max_new_tokens=80, temperature=0, ignore_eos=True)
        assert got.tokens == ref.tokens
        st = got.timings.speculative
        assert st is not None and st["passes"] >= 1
        if not adaptive and how == "draft-self":  # every proposal accepted: several tokens a pass
            assert st["acceptance_rate"] == 1.0 and st["tokens_per_pass"] > 3
        if not adaptive and how == "draft-other":  # a different random model: proposals made, most rejected
            assert st["proposed"] > 50 and st["acceptance_rate"] < 0.5
    if how == "lookup":  # the repeating prompt gives proposals that are all right for this model
        got = spec.complete(REPEATING, max_new_tokens=80, temperature=0, ignore_eos=True)
        assert got.timings.speculative["accepted"] > 0


def test_greedy_with_penalty_and_stop_equal_plain(tinies):
    plain = load(tinies["a"])
    spec = load(tinies["a"], False, draft=tinies["b"], draft_tokens=4)
    for kw in (dict(repetition_penalty=1.3), dict(frequency_penalty=0.5, presence_penalty=0.2)):
        ref = plain.complete(REPEATING, max_new_tokens=50, temperature=0, ignore_eos=True, **kw)
        assert spec.complete(REPEATING, max_new_tokens=50, temperature=0, ignore_eos=True, **kw).tokens == ref.tokens
    # ends where the plain run ends (an end token or max_new_tokens in the middle of a verified run)
    for n in (1, 2, 3, 17):
        ref = plain.complete(PLAIN, max_new_tokens=n, temperature=0)
        got = spec.complete(PLAIN, max_new_tokens=n, temperature=0)
        assert (got.tokens, got.finish_reason) == (ref.tokens, ref.finish_reason)


def exact_triples(model: Model, prompt: list[int], params: SamplingParams) -> dict[tuple, float]:
    """The target's exact distribution of its first three sampled tokens (small supports: top_k)."""
    r = model.new_runner()
    out: dict[tuple, float] = {}

    def dist(ids):
        r.reset()
        r.append(ids)
        return probs(r.forward().copy(), params)
    p1 = dist(prompt)
    for a in np.flatnonzero(p1):
        p2 = dist(prompt + [int(a)])
        for b in np.flatnonzero(p2):
            p3 = dist(prompt + [int(a), int(b)])
            for c in np.flatnonzero(p3):
                out[(int(a), int(b), int(c))] = p1[a] * p2[b] * p3[c]
    return out


def chi_square_p(exact: dict[tuple, float], counts: dict[tuple, int], n: int) -> float:
    """The chi-square test's p-value of observed sequence counts against their exact probabilities (bins with
    tiny expectations merged into one)."""
    from scipy.stats import chisquare
    keys = sorted(exact)
    expected = np.array([exact[k] for k in keys]) * n
    observed = np.array([counts.get(k, 0) for k in keys])
    small = expected < 5
    obs = np.append(observed[~small], observed[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(chisquare(obs, exp * obs.sum() / exp.sum()).pvalue)


@pytest.mark.parametrize("how", ["draft", "lookup"])
def test_sampling_keeps_the_target_distribution(tinies, how):
    """Over many seeded runs the first three tokens' frequencies match the target's exact distribution
    (chi-square), with proposals that are often rejected (so the residual draws are exercised)."""
    params = dict(temperature=1.0, top_k=3)
    target = load(tinies["a"])
    prompt = REPEATING[:20]
    if how == "lookup":  # the prompt repeats itself and its likely continuation, so lookup has proposals
        g = target.complete(prompt, max_new_tokens=8, temperature=0, ignore_eos=True).tokens
        prompt = prompt + g + prompt
    exact = exact_triples(target, prompt, SamplingParams(**params))
    kw = dict(draft=tinies["a-noisy"], draft_tokens=2) if how == "draft" else dict(lookup=2)
    spec = load(tinies["a"], False, **kw)
    n = 3000
    counts: dict[tuple, int] = {}
    proposed = accepted = 0
    for seed in range(n):
        r = spec.complete(prompt, max_new_tokens=3, ignore_eos=True, seed=seed, **params)
        counts[tuple(r.tokens)] = counts.get(tuple(r.tokens), 0) + 1
        proposed += r.timings.speculative["proposed"]
        accepted += r.timings.speculative["accepted"]
    assert set(counts) <= set(exact)
    assert proposed > n // 5 and 0 < accepted < proposed  # both the accept and the reject paths ran
    assert chi_square_p(exact, counts, n) > 1e-3


def test_rollback_leaves_the_cache_of_a_fresh_prefill(tinies):
    spec = load(tinies["a"], False, draft=tinies["b"], draft_tokens=6)
    s = spec.stream(PLAIN, max_new_tokens=40, temperature=0, ignore_eos=True)
    s.read()
    r = s.runner
    assert r.length == r.n - 1  # the last token pending, as after a plain generation
    fresh = spec.new_runner()
    fresh.append(r.history[: r.length].tolist())
    fresh.forward()
    for a, b in zip(r.cache.arrays, fresh.cache.arrays):
        np.testing.assert_allclose(a[:, :, : r.length], b[:, :, : r.length], atol=2e-5, rtol=1e-4)


def test_chat_turns_with_lookup_equal_plain(tinies):
    plain, spec = load(tinies["a"]), load(tinies["a"], False, lookup=5)
    # tiny models have no chat template: a chat over token ids is not possible; the Chat path is covered
    # on the real model. Here: two generations from one Model reuse its runner pool correctly.
    for _ in range(2):
        assert spec.complete(REPEATING, max_new_tokens=30, temperature=0, ignore_eos=True).tokens == \
            plain.complete(REPEATING, max_new_tokens=30, temperature=0, ignore_eos=True).tokens


def test_draft_with_a_smaller_padded_vocabulary(tinies, tmp_path):
    """Qwen2.5-7B pads its vocabulary to 152,064 rows, the 0.5B to 151,936, with the same tokenizer: such a
    draft is accepted; its proposals and q cover the first rows, the target's p all of them."""
    import shutil
    _, folder = make_tiny(tmp_path / "hf-big", seed=3, vocab_size=384, max_position_embeddings=MAX_LEN)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # the 320-token tokenizer, 384 rows of logits
        shutil.copy(tinies["a"] / f, folder / f)
    export(str(folder), tmp_path / "big", max_length=MAX_LEN, progress=False)
    plain = load(tmp_path / "big")
    spec = load(tmp_path / "big", False, draft=tinies["a"], draft_tokens=4)
    ref = plain.complete(PLAIN, max_new_tokens=40, temperature=0, ignore_eos=True)
    assert spec.complete(PLAIN, max_new_tokens=40, temperature=0, ignore_eos=True).tokens == ref.tokens
    r = spec.complete(PLAIN, max_new_tokens=40, temperature=1.0, seed=1, ignore_eos=True)
    assert len(r.tokens) == 40 and r.timings.speculative["proposed"] > 0
    # (this random target does emit padding ids: the draft, which cannot read them, then proposes nothing)
    assert any(t >= 320 for t in ref.tokens)
    with pytest.raises(QwenEdgeError, match="larger than the target"):
        Model.load(tinies["a"], draft=tmp_path / "big")


def test_refusals(tinies):
    with pytest.raises(QwenEdgeError, match="different tokenizer"):
        Model.load(tinies["a"], draft=tinies["c"])
    with pytest.raises(QwenEdgeError, match="not both"):
        Model.load(tinies["a"], draft=tinies["b"], lookup=4)
    for bad in (0, -1, 65, True, 2.5):
        with pytest.raises(QwenEdgeError, match="lookup"):
            Model.load(tinies["a"], lookup=bad)
    short = Model.load(tinies["b"], max_length=64)
    m = Model.load(tinies["a"], draft=short)
    with pytest.raises(QwenEdgeError, match="the draft .* holds 64"):
        m.complete(PLAIN, max_new_tokens=100)
    assert m.complete(PLAIN, max_new_tokens=20, temperature=0).tokens  # fits: runs


def test_cli_run_with_lookup_and_draft(tinies):
    import json
    import subprocess
    import sys
    text = "The quick brown fox jumps over the lazy dog. " * 3 + "The quick"
    outs = []
    for extra in ([], ["--lookup", "6"], ["--draft", str(tinies["b"])]):
        p = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "run", str(tinies["a"]), "-p", text, "--raw",
                            "--max-new-tokens", "40", "--temperature", "0", "--json", *extra],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        outs.append(json.loads(p.stdout))
    assert outs[0]["tokens"] == outs[1]["tokens"] == outs[2]["tokens"]
    assert outs[0]["timings"]["speculative"] is None
    for o in outs[1:]:
        sp = o["timings"]["speculative"]
        assert {"acceptance_rate", "tokens_per_pass", "proposed", "accepted", "passes"} <= set(sp)
    p = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "run", str(tinies["a"]), "-p", "x",
                        "--draft", str(tinies["c"])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error:") and "tokenizer" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "bench", str(tinies["a"]), "--lookup", "4",
                        "--prompt-tokens", "64", "--new-tokens", "16", "--runs", "1", "--warmup", "0", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    sp = json.loads(p.stdout)["speculative"]
    assert sp["lookup"] == 4 and sp["tokens_per_pass"] >= 1


# --- speculation composes with constraints, tools and log-probabilities (one loop, processors per position) --
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "n": {"type": "integer", "minimum": 0, "maximum": 999}},
          "required": ["name", "n"], "additionalProperties": False}
DOC = "The quick brown fox jumps over the lazy dog. " * 6


@pytest.mark.parametrize("how", ["lookup", "draft-other", "draft-self"])
@pytest.mark.parametrize("kw", [dict(json_schema=SCHEMA), dict(regex="[a-z ]{0,40}"),
                                dict(grammar='start: "fox" " dog"*'), dict(json_object=True),
                                dict(logprobs=4), dict(json_schema=SCHEMA, logprobs=2)],
                         ids=["schema", "regex", "grammar", "json_object", "logprobs", "schema+logprobs"])
def test_constrained_greedy_speculation_equals_plain(tinies, how, kw):
    plain = load(tinies["a"])
    spec_kw = {"lookup": dict(lookup=6), "draft-other": dict(draft=tinies["b"], draft_tokens=5),
               "draft-self": dict(draft=tinies["a"], draft_tokens=7)}[how]
    spec = load(tinies["a"], False, **spec_kw)
    want = plain.complete(DOC, temperature=0, max_new_tokens=60, **kw)
    got = spec.complete(DOC, temperature=0, max_new_tokens=60, **kw)
    assert got.tokens == want.tokens and got.finish_reason == want.finish_reason
    sp = got.timings.speculative
    assert sp is not None and sp["passes"] >= 1
    if how == "draft-self" and len(want.tokens) > 8:
        assert sp["accepted"] > 0 and sp["tokens_per_pass"] > 1.5, sp  # proposals kept under the constraint
    if "logprobs" in kw:  # the same entries as plain decoding (verify rows equal the one-row steps to ~1e-6)
        assert [e.id for e in got.logprobs] == got.tokens
        for a, b in zip(got.logprobs, want.logprobs):
            assert abs(a.logprob - b.logprob) < 1e-4 and [i for i, _ in a.top] == [i for i, _ in b.top]


def test_rejected_proposals_leave_the_constraint_where_the_kept_tokens_put_it(tinies):
    """A draft that disagrees often (a different random model), sampled under a schema over many seeds: every
    reply that ends validates, so the grammar's state always followed exactly the kept tokens."""
    import json

    import jsonschema
    spec = load(tinies["a"], False, draft=tinies["b"], draft_tokens=4)
    rejected = 0
    for seed in range(12):
        r = spec.complete(DOC, json_schema=SCHEMA, temperature=1.0, seed=seed, max_new_tokens=200)
        sp = r.timings.speculative
        rejected += sp["proposed"] - sp["accepted"]
        if r.finish_reason == "eos":
            jsonschema.validate(json.loads(r.text), SCHEMA)
    assert rejected > 20  # the reject path ran


def test_constrained_sampling_keeps_the_target_distribution(tinies):
    """The speculative sampling rule under a constraint: the first three tokens' frequencies match the
    target's exact masked distribution (chi-square), with a draft whose proposals the grammar often refuses."""
    params = dict(temperature=1.0, top_k=3)
    grammar = dict(regex="[a-z ]{40,60}")  # three tokens never finish it: every step is masked
    target = load(tinies["a"])
    prompt = REPEATING[:20]
    r = target.new_runner()
    exact: dict[tuple, float] = {}
    sp = SamplingParams(**params)

    def dist(prefix: list[int]) -> np.ndarray:
        c = target.constraint(**grammar)
        for t in prefix:
            c.advance(t)
        r.reset()
        r.append(prompt + prefix)
        return probs(c.mask(r.forward().copy()), sp)
    p1 = dist([])
    for a in np.flatnonzero(p1):
        p2 = dist([int(a)])
        for b in np.flatnonzero(p2):
            p3 = dist([int(a), int(b)])
            for c in np.flatnonzero(p3):
                exact[(int(a), int(b), int(c))] = p1[a] * p2[b] * p3[c]
    spec = load(tinies["a"], False, draft=tinies["a-noisy"], draft_tokens=2)
    n, counts, proposed, accepted = 2000, {}, 0, 0
    for seed in range(n):
        g = spec.complete(prompt, max_new_tokens=3, ignore_eos=True, seed=seed, **params, **grammar)
        counts[tuple(g.tokens)] = counts.get(tuple(g.tokens), 0) + 1
        proposed += g.timings.speculative["proposed"]
        accepted += g.timings.speculative["accepted"]
    assert set(counts) <= set(exact)
    assert 0 < accepted < proposed
    assert chi_square_p(exact, counts, n) > 1e-3


def test_tool_calls_speculate_too(tmp_path):
    """tool_choice required / a named function on a tiny model with Qwen's <tool_call> tokens: lookup gives
    plain greedy's tokens, and the calls parse."""
    from qwen_edge.runtimes.tools import check_tools
    _, hf = make_tiny(tmp_path / "hf", specials=["<tool_call>", "</tool_call>"], max_position_embeddings=MAX_LEN)
    export(str(hf), tmp_path / "onnx", max_length=MAX_LEN, progress=False)
    tools = check_tools([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "string", "maxLength": 20}}, "required": ["a"]}}},
        {"type": "function", "function": {"name": "g"}}])
    plain, spec = load(tmp_path / "onnx"), load(tmp_path / "onnx", False, lookup=6)
    for choice in ("required", {"type": "function", "function": {"name": "f"}}):
        want = plain.complete(DOC, tools=tools, tool_choice=choice, temperature=0, max_new_tokens=80)
        got = spec.complete(DOC, tools=tools, tool_choice=choice, temperature=0, max_new_tokens=80)
        assert got.tokens == want.tokens and got.tool_calls is not None
        assert got.timings.speculative["passes"] >= 1
