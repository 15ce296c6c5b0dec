"""The runtime on the real Qwen2.5-Coder-0.5B-Instruct export: greedy vs transformers, chat, streaming."""

from __future__ import annotations

import pytest
import torch

from qwen_edge.runtimes.model import Model
from qwen_edge.runtimes.template import ChatTemplate, load_template

PROMPT = ("Anarchism is a political philosophy and movement that is skeptical of all justifications for "
          "authority and seeks to abolish the institutions it claims maintain unnecessary coercion and "
          "hierarchy, typically including the state and capitalism. The history of")

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Write a haiku about rust"}],
    [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And\n\ntimes 3? 你好 🦀"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": "  spaces  "},
     {"role": "assistant", "content": "ok\n"}, {"role": "user", "content": "again"},
     {"role": "assistant", "content": "sure"}, {"role": "user", "content": "x"}],
]


@pytest.fixture(scope="module")
def qm(real_fp32):
    return Model.load(real_fp32, threads=2, max_length=2048)


@pytest.fixture(scope="module")
def hf_tok(real_fp32):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(real_fp32))


def test_greedy_64_tokens_equal_transformers(qm, real_hf):
    ids = qm.encode(PROMPT)
    r = qm.complete(PROMPT, max_new_tokens=64, temperature=0.0)
    with torch.no_grad():
        ref = real_hf.generate(torch.tensor([ids]), max_new_tokens=64, do_sample=False)[0, len(ids):].tolist()
    assert len(ref) == 64 and r.finish_reason == "length"
    assert r.tokens == ref
    assert r.text == qm.decode(ref)


@pytest.mark.parametrize("k", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(real_fp32, hf_tok, qm, k, gen):
    conv = CONVERSATIONS[k]
    ref = hf_tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
    source = load_template(real_fp32)
    jinja, builtin = ChatTemplate(source, use_jinja=True), ChatTemplate(source, use_jinja=False)
    assert jinja.engine == "jinja2" and builtin.engine == "chatml"
    assert builtin.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    assert jinja.render(conv, add_generation_prompt=gen) == ref
    assert builtin.render(conv, add_generation_prompt=gen) == ref
    if gen:
        assert qm.prompt_ids(conv) == hf_tok.encode(ref, add_special_tokens=False)


def test_three_turn_chat_equals_one_prefill(qm):
    chat = qm.chat(temperature=0.0, max_new_tokens=24)
    turns = ["What is Rust? One sentence.", "Give one example of its syntax.", "Thanks! Now say goodbye in French."]
    history_before = []
    for t in turns:
        history_before.append(len(chat.tokens))
        chat.say(t)
    last = chat.last
    whole = chat.messages[:-1]  # u1 a1 u2 a2 u3: the conversation the third reply answers
    ids = qm.prompt_ids(whole)
    assert chat.tokens[: len(ids)] == ids  # the cache holds exactly the template's rendering
    # Turn 3 prefilled only its new tokens (and the previous reply's end token, sampled but not yet fed).
    assert last.timings.cached_tokens == history_before[-1] - 1 > 0
    assert last.timings.cached_tokens + last.timings.prompt_tokens == len(ids)
    fresh = qm.complete(whole, temperature=0.0, max_new_tokens=24)  # one prefill of the whole conversation
    assert fresh.tokens == last.tokens and fresh.text == chat.messages[-1]["content"]


LINE = "魑魅魍魉 뷁 🦀🫠\n"  # rare Chinese characters, Hangul and emoji: Qwen splits each over 2-4 tokens


def test_streaming_multilingual_text(qm):
    s = qm.stream(LINE * 3, temperature=0.0, max_new_tokens=40)
    pieces = list(s)
    assert s.result.finish_reason == "length"
    assert "".join(pieces) == s.result.text == qm.decode(s.result.tokens)
    assert s.result.text.startswith(LINE * 2)
    # Characters really were split across tokens, yet no piece but the flushed tail (cut by
    # max_new_tokens mid-character) holds a broken one.
    assert sum("\ufffd" in qm.decode([t]) for t in s.result.tokens) >= 10
    assert all(p and "\ufffd" not in p for p in pieces[:-1])
    assert len(pieces) < len(s.result.tokens)


def test_stop_string_spanning_multibyte_tokens(qm):
    s = qm.stream(LINE * 3, temperature=0.0, max_new_tokens=40, stop=["🫠\n魑"])
    pieces = list(s)
    assert s.result.finish_reason == "stop" and "".join(pieces) == "魑魅魍魉 뷁 🦀"
    assert all("\ufffd" not in p for p in pieces)


def test_chat_ends_on_the_end_token(qm):
    r = qm.complete([{"role": "user", "content": "Reply with just the word: yes"}], temperature=0.0,
                    max_new_tokens=32)
    assert r.finish_reason == "eos" and r.tokens[-1] == qm.tokenizer.token_to_id("<|im_end|>")
    assert "<|im_end|>" not in r.text and r.text.strip().lower().startswith("yes")


CODE_EDIT = [{"role": "user", "content": "Add type hints to this function. Reply with the function only.\n\n```python\n"
              "def total(prices, tax):\n    s = 0\n    for p in prices:\n        s += p * (1 + tax)\n"
              "    return round(s, 2)\n```"}]


def test_speculative_greedy_equals_plain(qm, real_fp32, real_int4, monkeypatch):
    """int4 drafting fp32, and prompt lookup: token for token fp32's own greedy output (issue 20), with
    proposals made and most of the draft's accepted; a chat with a draft keeps the draft's cache."""
    for prompt in (CODE_EDIT, PROMPT):
        want = qm.complete(prompt, temperature=0.0, max_new_tokens=48)
        for kw in (dict(draft=real_int4), dict(lookup=8)):
            from qwen_edge.runtimes.speculative import Controller
            monkeypatch.setattr(Controller, "choose", lambda self, cost: self.max_tokens)  # every step proposes
            m = Model.load(real_fp32, threads=2, max_length=2048, **kw)
            got = m.complete(prompt, temperature=0.0, max_new_tokens=48)
            assert got.tokens == want.tokens, kw
            sp = got.timings.speculative
            if "draft" in kw:
                assert sp["acceptance_rate"] > 0.5 and sp["tokens_per_pass"] > 1.5, sp
            m.close()
    m = Model.load(real_fp32, threads=2, max_length=2048, draft=real_int4)
    chats = [m.chat(temperature=0.0, max_new_tokens=16), qm.chat(temperature=0.0, max_new_tokens=16)]
    for turn in ("What is Rust? One sentence.", "And Go?"):
        assert chats[0].say(turn) == chats[1].say(turn)
        assert chats[0].last.tokens == chats[1].last.tokens
    assert chats[0].last.timings.cached_tokens > 0 and chats[0].last.timings.speculative["passes"] > 0
    m.close()
