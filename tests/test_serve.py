"""`qwen-edge serve` against a real server process on 127.0.0.1, driven by the official `openai` client
(and raw HTTP for what a client library would refuse to send)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serve_process import ServerProcess
from tiny_models import make_tiny

openai = pytest.importorskip("openai")  # the dev extra installs it; .ci/run installs the dev extra


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from qwen_edge.export.writer import export
    root = tmp_path_factory.mktemp("serve")
    _, hf = make_tiny(root / "hf", max_position_embeddings=32768)
    export(str(hf), root / "tiny", progress=False)  # 32k context: a greedy stream here runs for seconds
    return root / "tiny"


@pytest.fixture(scope="module")
def server(tiny):
    s = ServerProcess(tiny, "--parallel", "2", "--queue", "8", "--ctx", "32768", "--max-tokens", "30000")
    yield s
    assert s.stop() == 0  # SIGTERM is a clean stop


@pytest.fixture(scope="module")
def model(tiny):
    from qwen_edge import Model
    return Model.load(tiny)


MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "The quick brown fox"}]


def test_chat_and_completions_match_model_generate(server, model):
    c = server.client()
    r = c.chat.completions.create(model=server.model, messages=MSGS, max_tokens=12, temperature=0)
    want = model.complete(MSGS, max_new_tokens=12, temperature=0.0)
    assert r.choices[0].message.content == want.text and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(model.prompt_ids(MSGS)) and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    parts = list(c.chat.completions.create(model=server.model, messages=MSGS, max_tokens=12, temperature=0,
                                           stream=True, stream_options={"include_usage": True}))
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices) == want.text
    assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "length"
    assert parts[-1].choices == [] and parts[-1].usage.completion_tokens == 12
    t = c.completions.create(model=server.model, prompt="def main", max_tokens=9, temperature=0)
    assert t.choices[0].text == model.generate("def main", max_new_tokens=9, temperature=0.0)
    s = "".join(x.choices[0].text for x in c.completions.create(model=server.model, prompt="def main", max_tokens=9,
                                                                 temperature=0, stream=True))
    assert s == t.choices[0].text
    assert [m.id for m in c.models.list().data] == [server.model]


def test_stop_max_tokens_and_seed(server, model):
    c = server.client()
    full = model.generate("hello world", max_new_tokens=40, temperature=0.0)
    stop = full[10:14]
    r = c.completions.create(model=server.model, prompt="hello world", max_tokens=40, temperature=0, stop=[stop, "zzz"])
    assert r.choices[0].text == full[: full.index(stop)] and r.choices[0].finish_reason == "stop"
    a = c.completions.create(model=server.model, prompt="hello", max_tokens=20, temperature=1.0, seed=7)
    b = c.completions.create(model=server.model, prompt="hello", max_tokens=20, temperature=1.0, seed=7)
    d = c.completions.create(model=server.model, prompt="hello", max_tokens=20, temperature=1.0, seed=8)
    assert a.choices[0].text == b.choices[0].text != d.choices[0].text
    assert a.choices[0].text == model.generate("hello", max_new_tokens=20, temperature=1.0, seed=7)
    r = c.chat.completions.create(model=server.model, messages=MSGS, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_second_turn_prefills_only_new_tokens(server, model):
    c = server.client()
    first = [{"role": "user", "content": "Rust is a language empowering everyone"}]
    r1 = c.chat.completions.create(model=server.model, messages=first, max_tokens=8, temperature=0)
    second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                      {"role": "user", "content": "def main"}]
    r2 = c.chat.completions.create(model=server.model, messages=second, max_tokens=8, temperature=0)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    # the cache held the first prompt and the reply (its last token still pending): the new prompt reuses
    # exactly their common prefix (a reply whose text re-tokenizes differently ends the match early)
    held = model.prompt_ids(first) + model.complete(first, max_new_tokens=8, temperature=0.0).tokens[:-1]
    new = model.prompt_ids(second)
    common = next((i for i, (a, b) in enumerate(zip(held, new)) if a != b), min(len(held), len(new) - 1))
    assert cached == common >= r1.usage.prompt_tokens
    assert r2.usage.prompt_tokens == len(new) and r2.usage.prompt_tokens - cached < len(new) - r1.usage.prompt_tokens + 1


BAD = [  # (what, method, path, body, headers, status, words)
    ("not json", "POST", "/v1/chat/completions", b"{nope", {}, 400, "not valid JSON"),
    ("not utf-8", "POST", "/v1/chat/completions", b'{"model": "\xff"}', {}, 400, "not UTF-8"),
    ("array body", "POST", "/v1/chat/completions", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("no model", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, {}, 400,
     "'model' is required"),
    ("unknown model", "POST", "/v1/chat/completions", {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
     {}, 404, "does not exist"),
    ("n=2", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}], "n": 2},
     {}, 400, "'n' = 2 is not supported"),
    ("tools", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                               "tools": [{"type": "function"}]}, {}, 400,
     "tools[0].function must be an object with a 'name'"),
    ("tool type", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                   "tools": [{"type": "fn", "function": {"name": "f"}}]}, {}, 400,
     "tools[0].type must be 'function', got 'fn'"),
    ("tool name", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                   "tools": [{"type": "function", "function": {"name": "a b"}}]}, {},
     400, "tools[0].function.name 'a b' is not a function name"),
    ("tool parameters not an object", "POST", "/v1/chat/completions", {
        "model": "M", "messages": [{"role": "user", "content": "x"}], "tool_choice": "required",
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}, {}, 400,
     "must be a JSON schema of type 'object'"),
    ("tool_call_id matches no call", "POST", "/v1/chat/completions", {"model": "M", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_2", "content": "42"}]}, {}, 400,
     "messages[2].tool_call_id 'call_2' matches no earlier tool call (earlier calls: call_1)"),
    ("logit_bias", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                    "logit_bias": {"1": 5}}, {}, 400,
     "'logit_bias' = {'1': 5} is not supported: constrain the output with response_format instead"),
    ("best_of", "POST", "/v1/completions", {"model": "M", "prompt": "x", "best_of": 3}, {}, 400,
     "'best_of' = 3 is not supported: this server generates one choice per request"),
    ("parallel_tool_calls", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                             "parallel_tool_calls": "yes"}, {}, 400,
     "'parallel_tool_calls' = 'yes' is not supported: it is a boolean"),
    ("schema with a $ref cycle", "POST", "/v1/chat/completions", {
        "model": "M", "messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}, "required": ["b"]},
                          "b": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}},
                "$ref": "#/$defs/a"}}}}, {}, 400, "no finite JSON value satisfies it"),
    ("schema too complex", "POST", "/v1/chat/completions", {
        "model": "M", "messages": [{"role": "user", "content": "x"}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}}}}}, {}, 400,
     "too complex for the constraint parser (llguidance: Current row has"),
    ("schema too complex, streamed", "POST", "/v1/chat/completions", {
        "model": "M", "messages": [{"role": "user", "content": "x"}], "stream": True, "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}}}}}, {}, 400,
     "too complex for the constraint parser"),
    ("image", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, {}, 400, "only text parts"),
    ("unknown field", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                       "temprature": 0}, {}, 400, "unsupported field 'temprature'"),
    ("wrong type", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                    "max_tokens": "5"}, {}, 400, "'max_tokens' must be an integer"),
    ("bool temperature", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                          "temperature": True}, {}, 400, "'temperature' must be a number"),
    ("bad temperature", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                         "temperature": 5}, {}, 400, "between 0 and 2"),
    ("bad top_p", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                   "top_p": 3}, {}, 400, "top_p must be in (0, 1]"),
    ("bad penalty", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                     "presence_penalty": 9}, {}, 400, "between -2 and 2"),
    ("huge max_tokens", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                         "max_tokens": 10**9}, {}, 400, "above this server's limit"),
    ("no messages", "POST", "/v1/chat/completions", {"model": "M", "messages": []}, {}, 400, "non-empty array"),
    ("bad role", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "wizard", "content": "x"}]},
     {}, 400, "role must be"),
    ("bad stop", "POST", "/v1/chat/completions", {"model": "M", "messages": [{"role": "user", "content": "x"}],
                                                  "stop": [1]}, {}, 400, "'stop' must be"),
    ("lone surrogate", "POST", "/v1/completions", b'{"model": "M", "prompt": "\\udcff"}', {}, 400, "not valid UTF-8"),
    ("two prompts streamed", "POST", "/v1/completions", {"model": "M", "prompt": ["a", "b"], "stream": True}, {}, 400,
     "a streamed completion takes one prompt"),
    ("prompt of mixed kinds", "POST", "/v1/completions", {"model": "M", "prompt": ["a", [1, 2]]}, {}, 400,
     "'prompt' must be a string, an array of strings"),
    ("bad token id", "POST", "/v1/completions", {"model": "M", "prompt": [1, 99999]}, {}, 400, "outside the vocabulary"),
    ("prompt too long", "POST", "/v1/completions", {"model": "M", "prompt": list(range(3, 300)) * 120}, {}, 400,
     "context holds"),
    ("huge body", "POST", "/v1/completions", b"x" * (2 << 20), {}, 413, "at most"),
    ("wrong method", "GET", "/v1/chat/completions", None, {}, 405, "is not supported"),
    ("no route", "GET", "/v2/nothing", None, {}, 404, "no route"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_openai_errors_and_the_server_lives(server, case):
    what, method, path, body, headers, status, words = case
    if isinstance(body, dict):
        body = json.dumps({**body, "model": server.model} if body.get("model") == "M" else body).encode()
    elif body is not None:
        body = body.replace(b'"model": "M"', f'"model": "{server.model}"'.encode())
    got, reply, _ = server.raw(method, path, body, headers)
    assert got == status, reply
    err = reply["error"]
    assert words in err["message"] and set(err) == {"message", "type", "param", "code"}, err
    assert server.raw("GET", "/health")[0] == 200  # still answering


def test_api_key_is_checked_on_every_request(tiny):
    s = ServerProcess(tiny, "--api-key", "s3cret")
    try:
        for path in ("/health", "/v1/models"):
            status, body, headers = s.raw("GET", path)
            assert status == 401 and body["error"]["code"] == "invalid_api_key" and "WWW-Authenticate" in headers
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        r = s.client("s3cret").chat.completions.create(model=s.model, messages=MSGS, max_tokens=2)
        assert r.usage.completion_tokens == 2
    finally:
        s.stop()


def _stream_then_hang_up(s: ServerProcess, max_tokens: int = 25000) -> None:
    """Start a long stream, read its first event, then close the socket without reading the rest."""
    sock = socket.create_connection((s.host, int(s.port)))
    body = json.dumps({"model": s.model, "prompt": "The quick brown fox", "max_tokens": max_tokens,
                       "temperature": 0, "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    while b"data: " not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    sock.close()


def _wait_idle(s: ServerProcess, limit: float = 60) -> dict:
    t = time.time()
    while time.time() - t < limit:
        h = s.raw("GET", "/health")[1]
        if h["active"] == 0 and h["queued"] == 0:
            return h
        time.sleep(0.05)
    raise AssertionError(f"still busy: {h}")


def test_disconnect_frees_the_slot_and_a_full_queue_is_503(tiny):
    s = ServerProcess(tiny, "--parallel", "1", "--queue", "1", "--ctx", "32768", "--max-tokens", "30000")
    try:
        _stream_then_hang_up(s)
        _wait_idle(s)  # the abandoned generation stopped (a 25k-token stream would run for several seconds)
        time.sleep(0.3)
        line = next(ln for ln in s.log if "/v1/completions 499" in ln)
        assert int(line.split("completion=")[1].split()[0]) < 25000, line
        # one running, one queued, the third refused with Retry-After
        hold = [threading.Thread(target=_stream_then_hang_up_late, args=(s,)) for _ in range(2)]
        for t in hold:
            t.start()
            time.sleep(0.5)
        status, body, headers = s.raw("POST", "/v1/completions",
                                      json.dumps({"model": s.model, "prompt": "x", "max_tokens": 2}).encode())
        assert status == 503 and headers.get("Retry-After") == "1" and body["error"]["code"] == "server_busy"
        for t in hold:
            t.join()
        _wait_idle(s)
        r = s.client().completions.create(model=s.model, prompt="x", max_tokens=2)
        assert r.usage.completion_tokens == 2
    finally:
        s.stop()


def _stream_then_hang_up_late(s: ServerProcess) -> None:
    """Hold a slot (or a queue place) for ~2 s, then hang up."""
    sock = socket.create_connection((s.host, int(s.port)))
    body = json.dumps({"model": s.model, "prompt": "def main", "max_tokens": 25000, "temperature": 0,
                       "stream": True}).encode()
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    time.sleep(2.0)
    sock.close()


def test_load_every_request_complete_or_503_none_mixed_rss_flat(server, model):
    """8 client threads x 25 requests on --parallel 2 --queue 8: each answer is the one its prompt gives."""
    prompts = [f"word{i} the fox" for i in range(8)]
    want = {p: model.generate(p, max_new_tokens=24, temperature=0.0) for p in prompts}
    c = server.client(timeout=120)
    results: list[tuple[str, str | None]] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(25):
            p = prompts[(i + j) % len(prompts)]
            try:
                text = c.completions.create(model=server.model, prompt=p, max_tokens=24, temperature=0).choices[0].text
            except openai.APIStatusError as e:
                assert e.status_code == 503
                text = None
            with lock:
                results.append((p, text))

    def run() -> None:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    run()  # warm: the prompt cache fills up to its bound
    rss_warm = server.rss_mib()
    results.clear()
    run()
    rss_after = server.rss_mib()
    assert len(results) == 200
    answered = [(p, t) for p, t in results if t is not None]
    assert answered and all(t == want[p] for p, t in answered)  # nothing lost, nothing mixed
    assert rss_after < rss_warm * 1.1 + 20, (rss_warm, rss_after)
    h = _wait_idle(server)
    assert h["kv_caches"] <= 2 + 4  # parallel + cache


@pytest.mark.real
def test_real_int4_over_http_matches_model_generate(real_int4):
    """The real int4 0.5B through the official client: greedy chat text equals Model.generate's."""
    from qwen_edge import Model
    msgs = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    want = Model.load(real_int4).generate(msgs, max_new_tokens=48, temperature=0.0)
    s = ServerProcess(real_int4, "--ctx", "1024", "--threads", "2")
    try:
        got = "".join(p.choices[0].delta.content or "" for p in s.client().chat.completions.create(
            model=s.model, messages=msgs, max_tokens=48, temperature=0, stream=True) if p.choices)
        assert got == want and "def" in got
        # a real second turn: the first prompt and the whole reply come from the prompt cache
        first = s.client().chat.completions.create(model=s.model, messages=msgs, max_tokens=48, temperature=0)
        second = msgs + [{"role": "assistant", "content": got}, {"role": "user", "content": "Now in Rust."}]
        r = s.client().chat.completions.create(model=s.model, messages=second, max_tokens=8, temperature=0)
        # The cache holds the ids the model generated; the second prompt re-tokenizes the reply's text, and the
        # two agree only up to the first token the model split differently from the tokenizer (the 410 MiB
        # recipe of 2026-12-04 does so at its fifth reply token). Everything before that point is reused.
        assert r.usage.prompt_tokens_details.cached_tokens > first.usage.prompt_tokens
    finally:
        s.stop()


def test_speculative_server_same_text_usage_and_log(tiny, tmp_path, model):
    """serve --draft (a different random model of the same tokenizer) and --lookup: the same greedy text as
    the plain model, proposals counted in usage (OpenAI's accepted / rejected prediction tokens) and in the
    log line; a second turn reuses the slot's prompt cache, the draft's with it."""
    from qwen_edge.export.writer import export
    _, hf = make_tiny(tmp_path / "hf-draft", seed=1, max_position_embeddings=4096)
    export(str(hf), tmp_path / "draft", max_length=4096, progress=False)
    for extra in (["--draft", str(tmp_path / "draft"), "--draft-tokens", "4"], ["--lookup", "6"]):
        s = ServerProcess(tiny, "--ctx", "4096", *extra)
        try:
            c = s.client()
            first = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. The quick brown fox"}]
            r1 = c.chat.completions.create(model=s.model, messages=first, max_tokens=40, temperature=0)
            assert r1.choices[0].message.content == model.generate(first, max_new_tokens=40, temperature=0.0)
            d = r1.usage.completion_tokens_details
            proposed = d.accepted_prediction_tokens + d.rejected_prediction_tokens
            assert proposed > 0 and d.accepted_prediction_tokens <= r1.usage.completion_tokens, d
            second = first + [{"role": "assistant", "content": r1.choices[0].message.content},
                              {"role": "user", "content": "again"}]
            r2 = c.chat.completions.create(model=s.model, messages=second, max_tokens=20, temperature=0)
            assert r2.choices[0].message.content == model.generate(second, max_new_tokens=20, temperature=0.0)
            assert r2.usage.prompt_tokens_details.cached_tokens > r1.usage.prompt_tokens // 2
            t = c.completions.create(model=s.model, prompt="def main", max_tokens=12, temperature=0)
            assert t.choices[0].text == model.generate("def main", max_new_tokens=12, temperature=0.0)
        finally:
            assert s.stop() == 0
        assert any("accepted=" in line and "tokens_per_pass=" in line for line in s.log), s.log[-5:]


def test_alias_accepts_other_model_names(tiny):
    """--alias NAME (repeatable) or '*': apps that hard-code a model name work; otherwise the 404 names the
    model to use and the option."""
    import openai
    s = ServerProcess(tiny, "--alias", "gpt-4o-mini")
    try:
        c = s.client()
        r = c.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=3, temperature=0)
        assert r.choices[0].message.content and r.model == s.model
        with pytest.raises(openai.NotFoundError) as e:
            c.chat.completions.create(model="gpt-4", messages=MSGS, max_tokens=3)
        assert s.model in str(e.value) and "--alias" in str(e.value)
    finally:
        assert s.stop() == 0
    s = ServerProcess(tiny, "--alias", "*")
    try:
        assert s.client().completions.create(model="anything", prompt="x", max_tokens=2).choices[0].text is not None
    finally:
        assert s.stop() == 0
