"""Constrained decoding (llguidance): JSON schema, JSON object, regex and Lark grammar on tiny random models and
over HTTP with the official openai client; invalid constraints refused before generating."""

from __future__ import annotations

import json
import re

import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.runtimes.model import Model

import jsonschema  # the dev extra installs it and llguidance: a missing one fails, never skips
import llguidance  # noqa: F401

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "score": {"type": "number", "minimum": -1, "maximum": 1},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 3},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 5},
                                                      "zip": {"type": "integer"}},
                    "required": ["city"], "additionalProperties": False},
    },
    "required": ["name", "age", "role", "address"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny(tiny_2k):
    return tiny_2k


def test_json_schema_always_parses_and_validates(tiny):
    for seed in range(12):
        r = tiny.complete("hello", json_schema=SCHEMA, temperature=1.0, seed=seed, max_new_tokens=400)
        assert r.finish_reason == "eos", r.text
        try:
            doc = json.loads(r.text)
        except ValueError:
            raise AssertionError(f"seed {seed}: {r.text!r} {r.tokens[-12:]}") from None
        jsonschema.validate(doc, SCHEMA)
    r = tiny.complete("hello", json_schema=json.dumps(SCHEMA), temperature=1.0, seed=0, max_new_tokens=400)
    jsonschema.validate(json.loads(r.text), SCHEMA)  # the schema as JSON text works too


def test_json_object_regex_and_grammar(tiny):
    for seed in range(5):
        r = tiny.complete("x", json_object=True, temperature=1.0, seed=seed, max_new_tokens=300)
        if r.finish_reason == "eos":  # (a random model may write a long object: cut by max_new_tokens)
            assert isinstance(json.loads(r.text), dict)
        r = tiny.complete("x", regex=r"[0-9]{3}-[0-9]{4}", temperature=1.0, seed=seed, max_new_tokens=20)
        assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", r.text) and r.finish_reason == "eos"
        r = tiny.complete("x", grammar='start: "yes" | "no" | "maybe"', temperature=1.0, seed=seed)
        assert r.text in ("yes", "no", "maybe")


@pytest.mark.real
def test_greedy_unchanged_when_the_free_output_already_matches(real_fp32):
    """On the real model (a random tiny one writes invalid UTF-8, which no text grammar allows): a grammar the
    free greedy reply satisfies leaves every token, the end token included, as it was."""
    m = Model.load(real_fp32, threads=2, max_length=1024)
    for msgs, kw in (([{"role": "user", "content": "Name three colors, comma separated."}], dict(regex=r"(?s:.*)")),
                     ([{"role": "user", "content": 'Reply with only this JSON: {"name": "Ada", "age": 36}'}],
                      dict(json_schema={"type": "object", "properties": {"name": {"type": "string"},
                                                                          "age": {"type": "integer"}}}))):
        free = m.complete(msgs, temperature=0, max_new_tokens=40)
        got = m.complete(msgs, temperature=0, max_new_tokens=40, **kw)
        assert got.tokens == free.tokens, (free.text, got.text)
        assert got.finish_reason == "eos"


@pytest.mark.parametrize("kw, words", [
    (dict(json_schema={"type": "nonsense"}), "json schema"),
    (dict(json_schema="{not json"), "json schema"),
    (dict(regex="(unclosed"), "regex"),
    (dict(grammar="start: ???"), "grammar"),
    (dict(regex="a", grammar='start: "a"'), "one constraint"),
])
def test_invalid_constraints_are_refused_before_generating(tiny, kw, words):
    with pytest.raises(QwenEdgeError, match="(?i)" + words):
        tiny.stream("x", **kw)


def test_cli_json_schema_and_errors(tiny, tmp_path):
    import subprocess
    import sys
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(SCHEMA))
    p = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "run", str(tiny.folder), "-p", "hi", "--raw",
                        "--json-schema", str(f), "--max-new-tokens", "400", "--temperature", "1", "--seed", "0", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    jsonschema.validate(json.loads(json.loads(p.stdout)["text"]), SCHEMA)
    f.write_text('{"type": "nonsense"}')
    p = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "run", str(tiny.folder), "-p", "hi", "--raw",
                        "--json-schema", str(f)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith("error:") and "Traceback" not in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "run", str(tiny.folder), "-p", "hi", "--raw",
                        "--regex", "[ab]{2}", "--temperature", "0", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and re.fullmatch("[ab]{2}", json.loads(p.stdout)["text"]), p.stderr


def test_openai_client_json_schema_over_http(tiny):
    """The official client against a real server: json_schema and json_object always parse and validate over
    seeded runs, pydantic's parse() works, an invalid schema is a 400 with a JSON body."""
    import openai
    import pydantic
    from serve_process import ServerProcess
    s = ServerProcess(tiny.folder, "--ctx", "2048")
    try:
        c = s.client()
        msgs = [{"role": "user", "content": "Describe a person"}]
        for seed in range(8):
            r = c.chat.completions.create(model=s.model, messages=msgs, seed=seed, temperature=1.0, max_tokens=400,
                                          response_format={"type": "json_schema",
                                                           "json_schema": {"name": "person", "schema": SCHEMA}})
            assert r.choices[0].finish_reason == "stop"
            jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
        r = c.chat.completions.create(model=s.model, messages=msgs, max_tokens=300, temperature=0,
                                      response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":
            assert isinstance(json.loads(r.choices[0].message.content), dict)

        class Person(pydantic.BaseModel):
            name: str = pydantic.Field(max_length=6)
            age: int = pydantic.Field(ge=0, le=120)

        p = c.beta.chat.completions.parse(model=s.model, messages=msgs, response_format=Person, max_tokens=200,
                                          temperature=0)
        assert isinstance(p.choices[0].message.parsed, Person)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=s.model, messages=msgs, max_tokens=20, response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}})
        assert "json schema" in str(e.value).lower()
        bad = [dict(response_format={"type": "xml"}),
               dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
                   "type": "array", "items": {"type": "integer"}, "uniqueItems": True}}}),  # cannot be enforced
               dict(tools=[{"type": "function", "function": {"description": "no name"}}]),
               dict(tools=[{"type": "function", "function": {"name": "f"}}],
                    tool_choice={"type": "function", "function": {"name": "unknown"}})]
        for kw in bad:
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model=s.model, messages=msgs, max_tokens=20, **kw)
            assert e.value.status_code == 400 and e.value.body and e.value.body.get("message"), kw
        assert c.chat.completions.create(model=s.model, messages=msgs, max_tokens=3).choices  # still serving
    finally:
        assert s.stop() == 0


WEATHER = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
                                              "parameters": {"type": "object", "properties": {
                                                  "city": {"type": "string"},
                                                  "unit": {"enum": ["celsius", "fahrenheit"]}},
                                                  "required": ["city"]}}},
           {"type": "function", "function": {"name": "get_time", "description": "Current time in a city",
                                              "parameters": {"type": "object", "properties": {
                                                  "city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.mark.real
def test_tool_calls_api_and_openai_client(real_int4):
    """Tools on the real model through its own template: tool_choice auto / required / a named function in the
    Python API (calls parsed, arguments valid for the tool's schema, also when sampling), and with the
    official client against a server: tool_calls, streamed deltas, and a tool result sent back."""
    import openai
    from serve_process import ServerProcess
    m = Model.load(real_int4, threads=2, max_length=2048)
    msgs = [{"role": "user", "content": "What's the weather in Paris?"}]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in WEATHER}
    for choice, seed in (("auto", None), ("required", None), ("required", 1), ("required", 2),
                         ({"type": "function", "function": {"name": "get_time"}}, 3)):
        kw = dict(temperature=0) if seed is None else dict(temperature=1.0, seed=seed)
        r = m.complete(msgs, tools=WEATHER, tool_choice=choice, max_new_tokens=100, **kw)
        assert r.tool_calls, (choice, r.text)
        for c in r.tool_calls:
            jsonschema.validate(json.loads(c["function"]["arguments"]), schemas[c["function"]["name"]])
        if isinstance(choice, dict):
            assert {c["function"]["name"] for c in r.tool_calls} == {"get_time"}
    # a two-tool conversation: weather, its result, then the time, its result, then the answer
    conv = [{"role": "user", "content": "What's the weather in Paris?"}]
    for follow_up, result in (("And what time is it there?", {"temp_c": 21, "sky": "clear"}), (None, {"time": "14:05"})):
        r = m.complete(conv, tools=WEATHER, tool_choice="required", temperature=0, max_new_tokens=100)
        call = r.tool_calls[0]
        jsonschema.validate(json.loads(call["function"]["arguments"]), schemas[call["function"]["name"]])
        print("call:", call["function"]["name"], call["function"]["arguments"])
        conv += [{"role": "assistant", "content": None, "tool_calls": [call]},
                 {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)}]
        if follow_up:
            conv.append({"role": "user", "content": follow_up})
    answer = m.complete(conv, tools=WEATHER, tool_choice="none", temperature=0, max_new_tokens=60)
    print("answer:", answer.text)
    assert answer.text and not answer.tool_calls
    # a realistic extraction schema
    order = {"type": "object", "properties": {
        "order_id": {"type": "integer"}, "customer": {"type": "string"},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "items": {"type": "array", "minItems": 1, "items": {"type": "object", "properties": {
            "name": {"type": "string"}, "quantity": {"type": "integer", "minimum": 1},
            "unit_price": {"type": "number", "minimum": 0}}, "required": ["name", "quantity", "unit_price"]}},
        "currency": {"enum": ["EUR", "USD", "GBP"]}},
        "required": ["order_id", "customer", "date", "items", "currency"], "additionalProperties": False}
    text = ("Extract the order as JSON: Order #4711 placed by Jane Doe on 2024-05-01 - 3 x USB-C cable at 4.99 EUR "
            "each and 1 x charger at 19.90 EUR.")
    r = m.complete([{"role": "user", "content": text}], json_schema=order, temperature=0, max_new_tokens=200)
    doc = json.loads(r.text)
    print("extracted:", json.dumps(doc))
    jsonschema.validate(doc, order)
    assert doc["order_id"] == 4711 and doc["currency"] == "EUR" and "Jane" in doc["customer"]
    chat = m.chat(temperature=0, max_new_tokens=200)  # a chat turn under a schema, then a free one
    jsonschema.validate(json.loads(chat.say(text, json_schema=order, logprobs=1)), order)
    assert chat.last.logprobs and chat.say("Thanks! One word: which currency?", max_new_tokens=8)
    none = m.complete(msgs, tools=WEATHER, tool_choice="none", temperature=0, max_new_tokens=30)
    assert not none.tool_calls and "<tool_call>" not in none.text
    s = ServerProcess(real_int4, "--ctx", "2048", "--threads", "2")
    try:
        c = s.client()
        r = c.chat.completions.create(model=s.model, messages=msgs, tools=WEATHER, tool_choice="required",
                                      temperature=0, max_tokens=100)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.tool_calls[0].function.name == "get_weather"
        call = ch.message.tool_calls[0]
        jsonschema.validate(json.loads(call.function.arguments), schemas["get_weather"])
        parts = list(c.chat.completions.create(model=s.model, messages=msgs, tools=WEATHER, tool_choice="required",
                                               temperature=0, max_tokens=100, stream=True))
        deltas = [d for p in parts if p.choices and p.choices[0].delta.tool_calls for d in p.choices[0].delta.tool_calls]
        assert deltas[0].id and deltas[0].function.name == "get_weather"
        assert len(deltas) > 3  # the arguments arrive in pieces, as they are written
        assert json.loads("".join(d.function.arguments or "" for d in deltas)) == json.loads(call.function.arguments)
        assert [p.choices[0].finish_reason for p in parts if p.choices][-1] == "tool_calls"
        back = msgs + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                       {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21})}]
        r = c.chat.completions.create(model=s.model, messages=back, tools=WEATHER, temperature=0, max_tokens=30)
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model=s.model, messages=msgs, tools=WEATHER, max_tokens=5,
                                      tool_choice={"type": "function", "function": {"name": "nope"}})
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("step", [1, 2, 5, 100])
def test_call_stream_splits_content_and_calls_as_text_arrives(step):
    """The server's streamed tool calls (CallStream) give the same calls and content as parsing the whole
    reply, however the text is cut into pieces."""
    from qwen_edge.runtimes.tools import CallStream, parse_calls
    names = ["get_weather", "get_time"]
    for text in ['Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "x": {"a": 1}}}\n'
                 '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {"city": "Paris"}}\n</tool_call>\n',
                 '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```', "Hello there,  no calls.",
                 '<tool_call>\n{"arguments": {"city": "Rome"}, "name": "get_weather"}\n</tool_call>',
                 '{"a": 1} is json', 'a < b <tool and <tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>']:
        cs = CallStream(names)
        ev = []
        for i in range(0, len(text), step):
            ev += cs.feed(text[i:i + step])
        ev += cs.finish()
        content = "".join(e[1] for e in ev if e[0] == "content") or None
        calls: dict = {}
        for e in ev:
            if e[0] == "call":
                calls[e[1]] = [e[3], ""]
            elif e[0] == "arguments":
                calls[e[1]][1] += e[2]
        want_content, want_calls = parse_calls(text, names)
        assert [(n, json.loads(a)) for n, a in calls.values()] == \
            [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in want_calls]
        assert content == (want_content.strip() if want_content else None) or (not want_calls and content == text)
