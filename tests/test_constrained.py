"""Constrained decoding (llguidance): JSON schema, JSON object, regex and Lark grammar on tiny random models and
over HTTP with the official openai client; invalid constraints refused before generating."""

from __future__ import annotations

import json
import re

import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.export.writer import export
from qwen_edge.runtimes.model import Model
from tiny_models import make_tiny

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

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
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("constrained")
    _, folder = make_tiny(root / "hf", max_position_embeddings=2048)
    export(str(folder), root / "onnx", max_length=2048, progress=False)
    return Model.load(root / "onnx", threads=2)


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
    with pytest.raises(QwenEdgeError, match=words):
        tiny.stream("x", **kw)


def test_cli_json_schema_and_errors(tiny, tmp_path):
    import subprocess
    import sys
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(SCHEMA))
    p = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "run", str(tiny.folder), "-p", "hi", "--raw",
                        "--json-schema", str(f), "--max-new-tokens", "400", "--temperature", "0", "--json"],
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
    openai = pytest.importorskip("openai")
    pydantic = pytest.importorskip("pydantic")
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
        with pytest.raises(openai.BadRequestError):
            c.chat.completions.create(model=s.model, messages=msgs, max_tokens=20, response_format={"type": "xml"})
    finally:
        assert s.stop() == 0
