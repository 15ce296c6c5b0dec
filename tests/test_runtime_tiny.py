"""The runtime on tiny random Qwen models: greedy vs transformers, seeds, in-place KV, RSS, stops, threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from qwen_edge.errors import QwenEdgeError
from qwen_edge.export.writer import export
from qwen_edge.runtimes.model import Model
from tiny_models import make_tiny

MAX_LEN = 1200


def build(tmp_path_factory, name: str, **kw):
    root = tmp_path_factory.mktemp(name)
    model, folder = make_tiny(root / "hf", max_position_embeddings=MAX_LEN, **kw)
    export(str(folder), root / "onnx", max_length=MAX_LEN, progress=False)
    return model, root / "onnx"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build(tmp_path_factory, "qwen2")


@pytest.fixture(scope="module")
def model(tiny):
    return Model.load(tiny[1], threads=2)


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    """transformers' greedy decoding without end tokens (a full forward per step: tiny models only)."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(hf(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(ids):]


PROMPT = [int(t) for t in np.random.default_rng(0).integers(3, 320, size=37)]


@pytest.mark.parametrize("kind", ["qwen2", "qwen2-tied-gqa1", "qwen3"])
def test_greedy_equals_transformers(kind, tmp_path_factory):
    kw = {"qwen2": {}, "qwen2-tied-gqa1": dict(tie_word_embeddings=True, num_key_value_heads=4),
          "qwen3": dict(model_type="qwen3")}[kind]
    hf, folder = build(tmp_path_factory, kind, **kw)
    m = Model.load(folder, threads=2, prefill_chunk=16)  # 37 prompt tokens: three chunks
    r = m.complete(PROMPT, max_new_tokens=48, temperature=0.0, ignore_eos=True)
    assert r.tokens == hf_greedy(hf, PROMPT, 48)
    assert r.finish_reason == "length" and r.timings.prompt_tokens == len(PROMPT)


def test_same_seed_same_tokens(model):
    kw = dict(max_new_tokens=64, temperature=1.0, top_k=50, top_p=0.95, min_p=0.01, repetition_penalty=1.1,
              ignore_eos=True)
    a = model.complete(PROMPT, seed=7, **kw).tokens
    b = model.complete(PROMPT, seed=7, **kw).tokens
    c = model.complete(PROMPT, seed=8, **kw).tokens
    assert a == b and len(a) == 64
    assert a != c
    greedy = model.complete(PROMPT, max_new_tokens=16, temperature=0.0, ignore_eos=True).tokens
    assert model.complete(PROMPT, max_new_tokens=16, temperature=0.0, seed=3, ignore_eos=True).tokens == greedy


def test_kv_cache_is_bound_in_place(model):
    s = model.stream(PROMPT, max_new_tokens=40, temperature=0.0, ignore_eos=True)
    runner = s.runner
    ptrs = runner.cache.data_ptrs()
    assert ptrs == [a.ctypes.data for a in runner.cache.arrays]  # OrtValues over our numpy memory
    logits_ptr = runner._logits_value.data_ptr()
    seen = []
    for _ in s:
        seen.append(runner.cache.data_ptrs() == ptrs and runner._logits_value.data_ptr() == logits_ptr)
    assert all(seen) and len(s.result.tokens) == 40
    assert runner.cache.data_ptrs() == ptrs
    # The cache really holds the sequence: the last sampled token is pending, the rest is written.
    assert runner.length == len(PROMPT) + 39 and runner.n == len(PROMPT) + 40
    assert np.abs(runner.cache.arrays[0][0, 0, runner.length - 1]).sum() > 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_rss_does_not_grow_over_1000_decode_steps(model):
    prompt = (PROMPT * 2)[:64]
    s = model.stream(prompt, max_new_tokens=MAX_LEN - len(prompt), temperature=0.8, seed=1, ignore_eos=True)
    for a in s.runner.cache.arrays:  # commit the cache's pages now (numpy maps them lazily)
        a.fill(1.0)
        a.fill(0.0)
    samples, base = [], None
    for _ in s:
        n = len(s.result.tokens)
        if base is None and n >= 60:
            base = rss_bytes()
        elif base is not None and n >= 100 * (len(samples) + 1):
            samples.append(rss_bytes())
    assert s.result.finish_reason == "length" and len(s.result.tokens) == MAX_LEN - len(prompt)
    assert len(samples) >= 10
    growth = max(samples) - base
    assert growth <= 256 << 10, f"RSS grew {growth / 2**10:.0f} KiB over {len(s.result.tokens) - 60} decode steps"


def test_stop_string_spanning_tokens(model):
    kw = dict(max_new_tokens=60, temperature=1.0, seed=5, ignore_eos=True)
    free = model.complete("The quick brown fox", **kw)
    pieces = [model.decode([t]) for t in free.tokens]
    clean = [p.isascii() and p.isprintable() and p != "" for p in pieces]
    # A stop made of the end of one token and the start of the next.
    i = next(i for i in range(3, len(pieces) - 1) if clean[i] and clean[i + 1])
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    assert stop in free.text
    at = free.text.index(stop)
    s = model.stream("The quick brown fox", stop=["NEVER-THERE", stop], **kw)
    out = list(s)
    assert s.result.finish_reason == "stop" and "".join(out) == free.text[:at] == s.result.text
    assert all(stop not in p for p in out)
    assert len(s.result.tokens) <= i + 2 and s.result.tokens == free.tokens[: len(s.result.tokens)]


def test_two_threads_match_sequential(tiny, model):
    jobs = [dict(prompt=PROMPT, seed=1, temperature=0.9), dict(prompt=PROMPT[5:], seed=2, temperature=0.0),
            dict(prompt=PROMPT[:20], seed=3, temperature=1.2, top_p=0.9)]
    second = Model.load(tiny[1], threads=1)  # two models in one process as well

    def one(m, job):
        job = dict(job)
        return m.complete(job.pop("prompt"), max_new_tokens=200, ignore_eos=True, **job).tokens

    expected = [one(model, j) for j in jobs]
    results: dict[int, list[int]] = {}
    errors = []

    def worker(k, m, job):
        try:
            results[k] = one(m, job)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k, model if k % 2 == 0 else second, j))
               for k, j in enumerate(jobs + jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert [results[k] for k in range(len(jobs) * 2)] == expected + expected


def test_prompt_longer_than_context(model):
    long = (PROMPT * 40)[:MAX_LEN + 5]
    with pytest.raises(QwenEdgeError, match=r"prompt is 1205 tokens but the context holds 1200.*truncate"):
        model.stream(long)
    r = model.complete(long, max_new_tokens=10, truncate=True, temperature=0.0)
    assert r.timings.prompt_tokens == MAX_LEN - 10 and len(r.tokens) <= 10
    assert r.tokens == model.complete(long[-(MAX_LEN - 10):], max_new_tokens=10, temperature=0.0).tokens
    # A prompt that fits but leaves little room stops at the end of the context.
    r = model.complete(long[:MAX_LEN - 3], max_new_tokens=50, temperature=0.0, ignore_eos=True)
    assert r.finish_reason == "length" and len(r.tokens) == 3


def test_smaller_context_and_bad_options(tiny):
    m = Model.load(tiny[1], threads=1, max_length=64)
    assert m.kv_cache_bytes == 2 * 2 * 2 * 16 * 64 * 4
    with pytest.raises(QwenEdgeError, match="context holds 64"):
        m.stream(PROMPT * 2)
    for bad, match in [(dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
                       (dict(top_k=-2), "top_k"), (dict(max_new_tokens=0), "max_new_tokens"),
                       (dict(stop="x"), "stop type"), (dict(stop=[3]), "stop type")]:
        with pytest.raises(QwenEdgeError, match=match):
            m.complete(PROMPT, **bad)
    with pytest.raises(QwenEdgeError, match="max_length"):
        Model.load(tiny[1], max_length=5000)
    with pytest.raises(QwenEdgeError, match="outside the vocabulary"):
        m.complete([1, 2, 999])
    with pytest.raises(QwenEdgeError, match="prompt is a string"):
        m.complete(3.5)


def test_unknown_provider_lists_available(tiny):
    with pytest.raises(QwenEdgeError) as e:
        Model.load(tiny[1], provider="nosuch")
    msg = str(e.value)
    assert "'nosuch' is not available" in msg and "CPUExecutionProvider" in msg and "\n" not in msg
    Model.load(tiny[1], provider="CPUExecutionProvider", threads=1, arena=False, spin=False)


def test_no_model_folder(tmp_path):
    with pytest.raises(QwenEdgeError, match="no such model folder"):
        Model.load(tmp_path / "missing")
    with pytest.raises(QwenEdgeError, match="not a qwen-edge model folder"):
        Model.load(tmp_path)


def test_chat_on_tiny_template(model):
    c = model.chat(temperature=0.0, max_new_tokens=6, ignore_eos=True)
    c.say("Hello there")
    c.say("def main")
    assert [m["role"] for m in c.messages] == ["user", "assistant", "user", "assistant"]
    first = model.prompt_ids([{"role": "user", "content": "Hello there"}])
    assert c.tokens[: len(first)] == first
    assert c.last.timings.cached_tokens >= len(first)  # the second turn reused at least the first prompt
    assert len(c.tokens) == c.last.timings.cached_tokens + c.last.timings.prompt_tokens + 6
    c.reset()
    assert c.tokens == [] and c.messages == []


def test_fp16_artifact(tmp_path):
    _, folder = make_tiny(tmp_path / "hf")
    export(str(folder), tmp_path / "fp16", dtype="fp16", max_length=128, progress=False)
    m = Model.load(tmp_path / "fp16", threads=1)
    s = m.stream(PROMPT, max_new_tokens=8, temperature=0.0, ignore_eos=True)
    assert s.runner.cache.dtype == np.float16
    text = s.read()
    assert len(s.result.tokens) == 8 and text == m.decode(s.result.tokens)  # the stream's text is its tokens


def test_import_does_not_load_torch_or_transformers(tiny):
    code = ("import sys, qwen_edge; from qwen_edge import Model; "
            f"m = Model.load({str(tiny[1])!r}, threads=1); m.generate([5, 6, 7], max_new_tokens=3); "
            "m.chat().say('hi', max_new_tokens=2); "
            "bad = [k for k in sys.modules if k.split('.')[0] in ('torch', 'transformers', 'onnx', 'jinja2')]; "
            "print(bad)")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # jinja2 is optional (the tiny template renders with it when installed); torch/transformers/onnx never load.
    assert [k for k in eval(out.stdout.strip()) if not k.startswith("jinja2")] == []


def test_chat_busy_bad_option_truncate(tiny):
    m = Model.load(tiny[1], threads=1, max_length=96)
    c = m.chat(temperature=0.0, max_new_tokens=8, ignore_eos=True)
    s = c.send("Hello there")
    with pytest.raises(QwenEdgeError, match="still streaming"):
        c.send("again")
    s.close()
    assert c.messages[-1]["role"] == "assistant"
    with pytest.raises(QwenEdgeError, match="stop type"):
        c.say("x", stop="bad")
    with pytest.raises(QwenEdgeError, match="unknown chat option"):
        c.say("x", temprature=1.0)
    c.say("fine")
    assert [x["role"] for x in c.messages] == ["user", "assistant", "user", "assistant"]
    c.reset(system="Be brief.")
    msg = "The quick brown fox jumps over the lazy dog. " * 2
    for _ in range(6):  # each turn is ~40 tokens: the oldest turns are dropped to fit 96
        c.say(msg, truncate=True)
        assert len(c.tokens) <= 96 and c.messages[0] == {"role": "system", "content": "Be brief."}
    assert len(c.messages) < 1 + 2 * 6 and c.messages[1]["role"] == "user"
    with pytest.raises(QwenEdgeError, match="conversation is .* tokens but the context holds 96"):
        for _ in range(4):
            c.say(msg)


def test_chat_rewinds_after_a_stop_string(model):
    kw = dict(temperature=1.0, seed=4, max_new_tokens=12, ignore_eos=True)
    reply = model.chat(**kw).say("Hello there")
    i = next(i for i in range(1, len(reply) - 2) if reply[i:i + 2].isascii() and reply[i:i + 2].isprintable()
             and reply[i:i + 2] not in reply[:i + 1])
    c = model.chat(stop=[reply[i:i + 2]], **kw)
    assert c.say("Hello there") == reply[:i] and c.last.finish_reason == "stop"
    before = len(c.tokens)
    c.say("next")
    ids = model.prompt_ids(c.messages[:-1])
    assert c.tokens[: len(ids)] == ids  # the cache rewound to what the template renders
    assert c.last.timings.cached_tokens < before


def test_one_chat_from_two_threads_records_only_replies_that_were_received(model):
    """Two threads race to send on one Chat: a turn either runs (its caller gets the reply, which is then
    recorded) or fails with 'still streaming'; the history never holds a reply nobody received."""
    import threading
    chat = model.chat(max_new_tokens=4, temperature=0.0)
    received, refused = [], []
    for _ in range(20):
        gate = threading.Barrier(2)

        def turn(i):
            gate.wait()
            try:
                received.append(chat.say(f"turn {i}"))
            except QwenEdgeError as e:
                assert "still streaming" in str(e)
                refused.append(i)
        ts = [threading.Thread(target=turn, args=(i,)) for i in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    replies = [m["content"] for m in chat.messages if m["role"] == "assistant"]
    assert len(replies) == len(received) and sorted(replies) == sorted(received)
    assert len(received) + len(refused) == 40
    users = [m for m in chat.messages if m["role"] == "user"]
    assert len(users) == len(replies)


def test_one_options_object_for_stream_generate_complete_and_chat(model):
    """Issue 32: what a generation may be asked is one GenerateOptions (runtimes/options.py); keywords change
    its fields, an unknown name is one error naming the known ones, and a Chat takes the same minus tools."""
    from qwen_edge.runtimes.options import CHAT_NAMES, NAMES, GenerateOptions
    o = GenerateOptions(max_new_tokens=6, temperature=0.0)
    text = model.generate("Hello", max_new_tokens=6, temperature=0.0)
    assert model.generate("Hello", o) == text == model.complete("Hello", o).text
    assert model.generate("Hello", GenerateOptions(max_new_tokens=50), max_new_tokens=6, temperature=0.0) == text
    assert "".join(model.stream("Hello", o)) == text
    with pytest.raises(QwenEdgeError, match="unknown generation option 'max_tokens': use max_new_tokens, "):
        model.generate("Hello", max_tokens=3)
    assert set(NAMES) - set(CHAT_NAMES) == {"tools", "tool_choice", "parallel_tool_calls"}
    with pytest.raises(QwenEdgeError, match="unknown chat option 'tools'"):
        model.chat(tools=[])
    assert model.chat(max_new_tokens=6, temperature=0.0).say("Hello") == \
        model.generate([{"role": "user", "content": "Hello"}], o)
