"""Token log-probabilities: the Python API, and over HTTP with the official openai client (chat, streaming,
completions with echo, as evaluation harnesses ask)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qwen_edge.errors import QwenEdgeError


@pytest.fixture(scope="module")
def tiny(tiny_2k):
    return tiny_2k


def test_generated_logprobs_equal_scoring_the_same_text(tiny):
    """Greedy: each token is its distribution's most likely (top[0]), and its log-probability equals what
    prompt_logprobs gives for the same token after the same text (one pass over many positions)."""
    prompt = [5, 6, 7, 8, 9, 10]
    r = tiny.complete(prompt, max_new_tokens=12, temperature=0, logprobs=4, ignore_eos=True)
    assert len(r.logprobs) == len(r.tokens) == 12
    for e, t in zip(r.logprobs, r.tokens):
        assert e.id == t and e.top[0][0] == t and len(e.top) == 4
        assert all(a[1] >= b[1] for a, b in zip(e.top, e.top[1:]))
        assert sum(math.exp(lp) for _, lp in e.top) <= 1 + 1e-6
    scored = tiny.prompt_logprobs(prompt + r.tokens, top=1)
    assert scored[0] is None and len(scored) == len(prompt) + 12
    np.testing.assert_allclose([e.logprob for e in r.logprobs], [e.logprob for e in scored[len(prompt):]], atol=2e-4)
    # sampling at a temperature: the log-probability under the tempered distribution the draw came from
    s = tiny.complete(prompt, max_new_tokens=8, temperature=0.5, seed=3, logprobs=0, ignore_eos=True)
    assert all(e.top == [] and e.logprob <= 0 for e in s.logprobs)
    with pytest.raises(QwenEdgeError, match="logprobs"):
        tiny.complete(prompt, logprobs=21)


def test_openai_client_logprobs_over_http(tiny):
    from serve_process import ServerProcess
    s = ServerProcess(tiny.folder, "--ctx", "2048")
    try:
        c = s.client()
        msgs = [{"role": "user", "content": "hi"}]
        want = tiny.complete(msgs, max_new_tokens=8, temperature=0, logprobs=3)
        r = c.chat.completions.create(model=s.model, messages=msgs, max_tokens=8, temperature=0, logprobs=True,
                                      top_logprobs=3)
        got = r.choices[0].logprobs.content
        keep = [e for e in want.logprobs if e.id not in tiny.stop_token_ids]
        np.testing.assert_allclose([x.logprob for x in got], [e.logprob for e in keep], atol=1e-6)
        assert all(len(x.top_logprobs) == 3 and x.bytes is not None for x in got)
        parts = list(c.chat.completions.create(model=s.model, messages=msgs, max_tokens=8, temperature=0,
                                               logprobs=True, top_logprobs=1, stream=True))
        streamed = [x.logprob for p in parts if p.choices and p.choices[0].logprobs
                    for x in p.choices[0].logprobs.content]
        np.testing.assert_allclose(streamed, [e.logprob for e in keep], atol=1e-6)
        # completions with echo: the prompt's tokens scored (the first has none), then the generated one
        t = c.completions.create(model=s.model, prompt="The quick brown", max_tokens=1, temperature=0, logprobs=2,
                                 echo=True)
        L = t.choices[0].logprobs
        scored = tiny.prompt_logprobs("The quick brown", 2)
        n = len(scored)
        assert t.choices[0].text.startswith("The quick brown") and len(L.tokens) == n + 1
        assert L.token_logprobs[0] is None
        np.testing.assert_allclose(L.token_logprobs[1:n], [e.logprob for e in scored[1:]], atol=1e-6)
        assert "".join(L.tokens) == t.choices[0].text and L.text_offset[1] == len(L.tokens[0])
        # what `qwen-edge eval` scores: its per-token NLL of the same text is minus the echoed log-probabilities
        from qwen_edge.eval.model import OnnxLM
        from qwen_edge.eval.score import score
        from qwen_edge.eval.windows import Window
        ids = np.array(tiny.prompt_ids("The quick brown"), np.int64)
        stats = score(OnnxLM(tiny.folder).logits, ids, [Window(0, len(ids), 1)], progress=False)
        np.testing.assert_allclose(L.token_logprobs[1:n], -stats.nll, atol=1e-4)
        # logprobs against the Python API's own distribution: ordering and a total below 1
        r = c.chat.completions.create(model=s.model, messages=msgs, max_tokens=6, temperature=0.8, seed=5,
                                      logprobs=True, top_logprobs=5)
        for x in r.choices[0].logprobs.content:
            tops = [y.logprob for y in x.top_logprobs]
            assert tops == sorted(tops, reverse=True) and sum(math.exp(v) for v in tops) <= 1 + 1e-6
            assert x.logprob <= tops[0] + 1e-9
        same = tiny.complete(msgs, max_new_tokens=6, temperature=0.8, seed=5, logprobs=5)
        np.testing.assert_allclose([x.logprob for x in r.choices[0].logprobs.content],
                                   [e.logprob for e in same.logprobs if e.id not in tiny.stop_token_ids], atol=1e-6)
        import openai
        for bad in (dict(top_logprobs=3), dict(logprobs=True, top_logprobs=21), dict(logprobs="yes")):
            with pytest.raises(openai.BadRequestError):
                c.chat.completions.create(model=s.model, messages=msgs, max_tokens=2, **bad)
    finally:
        assert s.stop() == 0
