"""Structured output keeps its promise: every constraint is refused before generation or honoured, every JSON
written parses in a strict parser, and a failure after the first byte still ends the stream properly.

Hypothesis fuzzes schemas, Lark grammars, tool definitions, message lists and the JSON writers; the
bad-input rows (CLI and Python API) live in test_bad_input.py, the HTTP rows in test_serve.py."""

from __future__ import annotations

import json
import math
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from qwen_edge.errors import InputError, QwenEdgeError
from qwen_edge.runtimes.constraint_check import grammar_unproductive, json_value, schema_unsatisfiable
from qwen_edge.strict_json import dumps, dumps_report
from serve_process import ServerProcess, sse_events, strict_json

BIG = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(1000)}}


def nested_big(levels: int = 8) -> dict:
    """The 1,000-property object behind a chain of required keys: the probe's few steps do not reach it, a
    generation must (each level is forced but for bounded whitespace), and then the parser stops."""
    s = BIG
    for i in range(levels):
        s = {"type": "object", "properties": {f"k{i}": s}, "required": [f"k{i}"], "additionalProperties": False}
    return s


@pytest.fixture(scope="module")
def tiny(tiny_2k):
    return tiny_2k


# --- refused before generation ----------------------------------------------------------------------------
CYCLE = {"$defs": {"a": {"type": "object", "properties": {"b": {"$ref": "#/$defs/b"}}, "required": ["b"]},
                   "b": {"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}, "required": ["a"]}},
         "$ref": "#/$defs/a"}


@pytest.mark.parametrize("kw, words", [
    (dict(json_schema=CYCLE), "no finite JSON value satisfies it"),
    (dict(json_schema={"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}), "no finite JSON"),
    (dict(json_schema={"type": "array", "minItems": 1, "items": {"$ref": "#"}}), "no finite JSON"),
    (dict(grammar="start: start"), "the grammar has no finite string"),
    (dict(grammar='start: "a" start'), "the grammar has no finite string"),
    (dict(grammar='start: x\nx: "(" x ")"'), "rules 'start', 'x' never end"),
    (dict(json_schema=BIG), "too complex for the constraint parser (llguidance: Current row has"),
    (dict(json_schema="[" * 100_000), "nests 100000 levels deep; at most 128"),
])
def test_constraints_that_cannot_be_honoured_are_refused_before_generation(tiny, kw, words):
    with pytest.raises(InputError) as e:
        tiny.complete("hi", max_new_tokens=5, **kw)
    assert words in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_satisfiable_recursion_is_accepted(tiny):
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer", "minimum": 0, "maximum": 9},
        "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}, "required": ["v", "kids"],
        "additionalProperties": False}}, "$ref": "#/$defs/node"}
    ended = 0
    for seed in range(4):
        r = tiny.complete("hi", json_schema=tree, temperature=1.0, seed=seed, max_new_tokens=600)
        if r.finish_reason == "eos":
            jsonschema.validate(json.loads(r.text), tree)
            ended += 1
    assert ended, "no reply ended: nothing was validated"
    assert tiny.complete("x", grammar='start: "a" start | "b"', temperature=0, max_new_tokens=40).text.endswith("b")


def test_a_schema_object_that_contains_itself_is_refused_not_a_crash(tiny):
    d: dict = {"type": "object"}
    d["properties"] = {"self": d}
    with pytest.raises(InputError, match="contains itself at /properties/self"):
        tiny.generate("hi", json_schema=d)
    deep: object = {"type": "integer"}
    for _ in range(200):
        deep = {"anyOf": [deep]}
    with pytest.raises(InputError, match="more than 128 levels"):
        tiny.generate("hi", json_schema=deep)
    with pytest.raises(InputError, match="JSON has no NaN"):
        tiny.generate("hi", json_schema={"type": "number", "maximum": float("inf")})


def test_a_closed_model_says_so_on_every_method(tiny_2k):
    from qwen_edge import Model
    m = Model.load(tiny_2k.folder, threads=1)
    m.close()
    for call in (lambda: m.generate("hi"), lambda: m.stream("hi"), lambda: m.complete("hi"),
                 lambda: m.encode("hi"), lambda: m.decode([1]), lambda: m.prompt_logprobs("hi"),
                 lambda: m.chat().say("hi"), lambda: m.render([{"role": "user", "content": "x"}]),
                 lambda: m.constraint(regex="a"), lambda: m.sampling(), lambda: m.kv_cache_bytes):
        with pytest.raises(QwenEdgeError, match="is closed: load it again"):
            call()
    m.close()  # twice is fine


def test_tool_definitions_follow_openais_rules():
    from qwen_edge.runtimes.tools import call_grammar, check_tool_messages, check_tools
    t = check_tools([{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}}}}}}}])
    p = t[0]["function"]["parameters"]
    assert p["additionalProperties"] is False and p["properties"]["a"]["additionalProperties"] is False
    assert check_tools([{"type": "function", "function": {"name": "g"}}])[0]["function"]["parameters"] == \
        {"type": "object", "properties": {}}
    for bad, words in (({"type": "string"}, "of type 'object'"), ([1], "must be a JSON schema object"),
                       ({"type": "object", "properties": {"x": {"const": float("nan")}}}, "NaN")):
        with pytest.raises(QwenEdgeError, match=re.escape(words)):
            check_tools([{"type": "function", "function": {"name": "f", "parameters": bad}}])
    # the call grammar's JSON takes the same whitespace as json_schema: none, one space, or a newline + spaces
    assert '"whitespace_pattern": "(\\\\n {0,16}| )?"' in call_grammar(t, ["f"], False)
    check_tool_messages([{"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "f"}}]},
                         {"role": "tool", "tool_call_id": "c1", "content": "x"}])
    with pytest.raises(QwenEdgeError, match="matches no earlier tool call"):
        check_tool_messages([{"role": "tool", "tool_call_id": "c1", "content": "x"}])


def test_tool_call_grammar_refuses_tabs_and_carriage_returns(tmp_path):
    """On a tiny model whose vocabulary has Qwen's <tool_call> tokens: the call grammar accepts compact and
    indented JSON and refuses `\\r\\n` + tabs between tokens (what a tiny model wrote until it ran out)."""
    import llguidance as llg
    from qwen_edge.export.writer import export
    from qwen_edge.runtimes.model import Model
    from qwen_edge.runtimes.tools import call_grammar, check_tools
    from tiny_models import make_tiny
    _, hf = make_tiny(tmp_path / "hf", specials=["<tool_call>", "</tool_call>"])
    export(str(hf), tmp_path / "onnx", max_length=256, progress=False)
    m = Model.load(tmp_path / "onnx", threads=1)
    tools = check_tools([{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}])
    m.constraint(grammar=call_grammar(tools, ["f"], False))  # compiles and passes the probe
    compiled = m._grammars.compile(_spec(call_grammar(tools, ["f"], False)))

    def accepts(text: str) -> bool:
        mt = llg.LLMatcher(m._grammars.tokenizer, compiled, log_level=0)
        ids = m.encode(text, add_special_tokens=False)
        return all(mt.consume_token(i) for i in ids) and not mt.is_error()
    assert accepts('<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>')
    assert accepts('<tool_call>\n{\n  "name": "f",\n  "arguments": {"a": 1}\n}\n</tool_call>')
    assert not accepts('<tool_call>\n{\r\n\t\t"name": "f", "arguments": {"a": 1}}\n</tool_call>')
    assert not accepts('<tool_call>\n{   "name": "f", "arguments": {"a": 1}}\n</tool_call>')
    closed = 0
    for seed in range(8):  # sampled calls close within a modest budget and parse (extra keys may run long)
        r = m.complete("call f", tools=tools, tool_choice="required", temperature=1.0, seed=seed, max_new_tokens=120,
                       parallel_tool_calls=False)
        if r.finish_reason == "eos":
            assert json.loads(r.tool_calls[0]["function"]["arguments"])["a"] is not None
            closed += 1
    assert closed >= 2, "fewer than two of eight sampled calls closed within 120 tokens"


def _spec(grammar: str):
    from qwen_edge.runtimes.constrained import ConstraintSpec
    return ConstraintSpec("grammar", grammar)


# --- strict JSON ------------------------------------------------------------------------------------------
def test_masked_alternatives_are_left_out_of_logprobs(tiny):
    r = tiny.complete("hi", regex="[0-9]{3}", logprobs=20, temperature=0, max_new_tokens=8)
    for e in r.logprobs:
        assert math.isfinite(e.logprob) and all(math.isfinite(lp) for _, lp in e.top)
        # only digit tokens (and the end token) have a probability under this constraint; top=20 asks for more
        assert 0 < len(e.top) < 20 and all(re.fullmatch("[0-9]*", tiny.decode([i])) for i, _ in e.top), e.top
    dumps({"x": [e.logprob for e in r.logprobs]})  # allow_nan=False: would raise on -inf


@given(st.recursive(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=False) | st.integers() | st.text(max_size=5) |
                    st.none() | st.booleans(),
                    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4),
                    max_leaves=20))
@settings(max_examples=200, deadline=None)
def test_the_report_writer_never_writes_nan_or_infinity(obj):
    text = dumps_report(obj)
    strict_json(text)  # no NaN / Infinity tokens
    if isinstance(obj, float) and not math.isfinite(obj):
        assert text == "null"
    with pytest.raises(ValueError):
        dumps(float("nan"))


# --- over HTTP: strict bodies, and a failure after the first byte ------------------------------------------
@pytest.fixture(scope="module")
def server(tiny_2k):
    s = ServerProcess(tiny_2k.folder, "--ctx", "2048", "--max-tokens", "1000")
    yield s
    assert s.stop() == 0


def _post(s: ServerProcess, path: str, body: dict):
    import http.client
    c = http.client.HTTPConnection(s.host, int(s.port), timeout=120)
    c.request("POST", path, json.dumps({"model": s.model, **body}), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()  # a cut connection raises here (IncompleteRead): the stream must end properly
    c.close()
    return r.status, data


def test_logprobs_under_constraints_parse_strictly_on_every_endpoint(server):
    msgs = [{"role": "user", "content": "hi"}]
    for path, body in (
            ("/v1/chat/completions", dict(messages=msgs, logprobs=True, top_logprobs=20,
                                          response_format={"type": "json_object"})),
            ("/v1/chat/completions", dict(messages=msgs, logprobs=True, top_logprobs=20, stream=True,
                                          response_format={"type": "json_schema", "json_schema": {
                                              "name": "n", "schema": {"type": "integer"}}})),
            ("/v1/completions", dict(prompt="hi", logprobs=20, echo=True, response_format=None))):
        body = {k: v for k, v in body.items() if v is not None}
        status, data = _post(server, path, {**body, "max_tokens": 20, "temperature": 0})
        assert status == 200, data[:300]
        if body.get("stream"):
            ev = sse_events(data)
            assert ev[-1] == "[DONE]"
            tops = [t for e in ev[:-1] if e["choices"] and e["choices"][0]["logprobs"]
                    for c in e["choices"][0]["logprobs"]["content"] for t in c["top_logprobs"]]
        else:
            doc = strict_json(data)
            lp = doc["choices"][0]["logprobs"]
            tops = [t for c in lp["content"] for t in c["top_logprobs"]] if "content" in lp else \
                [v for d in lp["top_logprobs"] if d for v in d.values()]
        assert tops  # alternatives are there, all finite (strict_json would have refused -Infinity)


def test_a_parser_failure_mid_generation_ends_with_an_error_body_or_event(server):
    msgs = [{"role": "user", "content": "hi"}]
    rf = {"type": "json_schema", "json_schema": {"name": "deep", "schema": nested_big()}}
    status, data = _post(server, "/v1/chat/completions", dict(messages=msgs, max_tokens=900, temperature=0,
                                                              response_format=rf))
    assert status == 400, data[:300]
    err = strict_json(data)["error"]
    assert err["code"] == "constraint_failed" and "Current row has" in err["message"], err
    status, data = _post(server, "/v1/chat/completions", dict(messages=msgs, max_tokens=900, temperature=0,
                                                              response_format=rf, stream=True))
    assert status == 200 and data.endswith(b"data: [DONE]\n\n"), data[-300:]
    ev = sse_events(data)
    assert ev[-3]["error"]["code"] == "constraint_failed"
    assert ev[-2]["choices"][0]["finish_reason"] == "error"
    import openai  # the official client raises the error event as an APIError
    c = server.client()
    with pytest.raises(openai.APIError, match="constrained decoding stopped"):
        for _ in c.chat.completions.create(model=server.model, messages=msgs, max_tokens=900, temperature=0,
                                           response_format=rf, stream=True):
            pass
    assert _post(server, "/v1/chat/completions", dict(messages=msgs, max_tokens=3))[0] == 200  # still serving


# --- property tests: random schemas, grammars, tools, messages ----------------------------------------------
def _schemas():
    leaf = st.one_of(
        st.builds(lambda lo, n: {"type": "integer", "minimum": lo, "maximum": lo + n},
                  st.integers(-50, 50), st.integers(0, 100)),
        st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(0, 6)),
        st.just({"type": "boolean"}), st.just({"type": "null"}),
        st.builds(lambda xs: {"enum": xs}, st.lists(st.sampled_from(["a", "b", 1, 2.5, None, True]), min_size=1,
                                                    max_size=3, unique=True)))

    def grow(kids):
        # "$ref": "#" only inside a container: a left-recursive anyOf sends jsonschema's validator into
        # infinite recursion (llguidance handles it)
        inner = kids | st.just({"$ref": "#"})
        return st.one_of(
            st.builds(lambda it, n: {"type": "array", "items": it, "maxItems": n, "minItems": min(n, 1)},
                      inner, st.integers(0, 2)),
            st.builds(lambda props, req, extra: {"type": "object", "properties": props,
                                                 "required": sorted(set(req) & set(props)),
                                                 "additionalProperties": extra},
                      st.dictionaries(st.sampled_from(["a", "b", "c"]), inner, max_size=3),
                      st.lists(st.sampled_from(["a", "b", "c"]), max_size=3), st.just(False)),
            st.builds(lambda xs: {"anyOf": xs}, st.lists(kids, min_size=1, max_size=2)))
    return st.recursive(leaf, grow, max_leaves=6)


@given(_schemas(), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
def test_random_schemas_are_refused_up_front_or_validated(tiny, schema, seed):
    try:
        r = tiny.complete("x", json_schema=schema, temperature=1.0, seed=seed, max_new_tokens=200)
    except InputError as e:
        assert "\n" not in str(e)
        return
    if r.finish_reason == "eos":
        jsonschema.validate(json.loads(r.text), schema)
    else:
        assert r.finish_reason == "length" and len(r.tokens) == 200, r.finish_reason


@given(_schemas())
@settings(max_examples=300, deadline=None)
def test_the_satisfiability_check_never_refuses_a_schema_with_a_finite_instance(schema):
    """A schema the check refuses has no instance; one it accepts may still be refused by llguidance. Checked
    by building the smallest instance where one exists (nothing but recursion makes these schemas empty)."""
    why = schema_unsatisfiable(schema)
    inst = _smallest(schema, schema, 0)
    if inst is not _NONE:
        jsonschema.validate(inst, schema)
        assert why is None, (schema, inst)
    else:
        assert why is not None, schema


_NONE = object()


def _smallest(s, root, depth):
    if depth > 12:
        return _NONE
    if "$ref" in s:
        return _smallest(root, root, depth + 1)
    if "enum" in s:
        return s["enum"][0]
    if "anyOf" in s:
        for x in s["anyOf"]:
            v = _smallest(x, root, depth + 1)
            if v is not _NONE:
                return v
        return _NONE
    t = s["type"]
    if t == "integer":
        return s["minimum"]
    if t in ("string", "boolean", "null"):
        return {"string": "", "boolean": True, "null": None}[t]
    if t == "array":
        if s["minItems"] == 0:
            return []
        v = _smallest(s["items"], root, depth + 1)
        return _NONE if v is _NONE else [v]
    out = {}
    for k in s["required"]:
        v = _smallest(s["properties"][k], root, depth + 1)
        if v is _NONE:
            return _NONE
        out[k] = v
    return out


_PIECES = st.sampled_from(['"a"', '"b"', "x", "y", "start", '/[0-9]/', "(x | \"c\")", "[y]", "x*", "y+"])


@given(st.lists(st.lists(_PIECES, min_size=1, max_size=3), min_size=1, max_size=3),
       st.lists(st.lists(_PIECES, min_size=1, max_size=3), min_size=1, max_size=2),
       st.lists(st.lists(_PIECES, min_size=1, max_size=3), min_size=1, max_size=2))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_grammars_are_refused_or_end(tiny, start, x, y):
    text = "\n".join(f"{name}: " + " | ".join(" ".join(alt) for alt in alts)
                     for name, alts in (("start", start), ("x", x), ("y", y)))
    try:
        r = tiny.complete("x", grammar=text, temperature=1.0, seed=0, max_new_tokens=60)
    except QwenEdgeError as e:
        assert "\n" not in str(e), str(e)
        return
    assert grammar_unproductive(text) is None
    assert r.finish_reason in ("eos", "length"), r.finish_reason


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=6),
                    lambda k: st.lists(k, max_size=3) | st.dictionaries(
                        st.sampled_from(["type", "function", "name", "parameters", "strict", "properties"]), k,
                        max_size=4), max_leaves=12))
@settings(max_examples=300, deadline=None)
def test_random_tool_lists_are_checked_or_refused_with_one_line(tools):
    from qwen_edge.runtimes.tools import check_tools
    try:
        out = check_tools(tools if isinstance(tools, list) else [tools])
    except QwenEdgeError as e:
        assert "\n" not in str(e)
        return
    for t in out:
        assert t["type"] == "function" and t["function"]["parameters"]["type"] == "object"
        json_value(t, "a tool")


@given(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "tool", "system"]),
                                       "content": st.text(max_size=8)},
                                      optional={"tool_call_id": st.sampled_from(["c1", "c2", 3]),
                                                "tool_calls": st.just([{"id": "c1", "type": "function", "function": {
                                                    "name": "f", "arguments": "{}"}}])}),
                min_size=1, max_size=4))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_random_message_lists_render_or_are_refused_with_one_line(tiny, msgs):
    try:
        ids = tiny.prompt_ids(msgs)
    except QwenEdgeError as e:
        assert "\n" not in str(e)
        return
    assert ids


def test_a_client_that_resets_mid_request_leaves_no_traceback(server):
    """An ordinary disconnect (a reset while the server reads the headers) is not an error worth a traceback."""
    import socket
    import struct
    import time
    for _ in range(3):
        sock = socket.create_connection((server.host, int(server.port)), timeout=10)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Le")
        time.sleep(0.1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a RST
        sock.close()
    time.sleep(0.5)
    assert _post(server, "/v1/chat/completions", dict(messages=[{"role": "user", "content": "x"}], max_tokens=2))[0] == 200
    assert not any("Traceback" in ln for ln in server.log), "".join(server.log)


@given(_schemas(), st.integers(0, 2**16), st.booleans())
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
def test_random_schemas_over_http_are_a_400_or_a_reply_that_validates(server, schema, seed, stream):
    """The same property through the server: a 400 with a JSON error body before anything is generated, or a
    reply that validates; every body and event parses in a strict parser (logprobs on, so masked alternatives
    would show up as -Infinity)."""
    body = dict(messages=[{"role": "user", "content": "x"}], max_tokens=200, temperature=1.0, seed=seed,
                stream=stream, logprobs=True, top_logprobs=5,
                response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}})
    status, data = _post(server, "/v1/chat/completions", body)
    if status == 400:
        assert "\n" not in strict_json(data)["error"]["message"]
        return
    assert status == 200, data[:300]
    if stream:
        ev = sse_events(data)
        assert ev[-1] == "[DONE]"
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in ev[:-1] if e.get("choices"))
        reason = [e["choices"][0]["finish_reason"] for e in ev[:-1] if e.get("choices")][-1]
    else:
        doc = strict_json(data)
        text, reason = doc["choices"][0]["message"]["content"], doc["choices"][0]["finish_reason"]
    if reason == "stop":
        jsonschema.validate(json.loads(text), schema)
    else:
        assert reason == "length", reason
