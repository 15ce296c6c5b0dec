"""Tool calls: OpenAI's `tools` rendered by the model's own chat template, Qwen's <tool_call> blocks parsed back.

Qwen2.5's template lists the functions in the system turn and asks for each call as
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`; tool results go back as `role: tool`
messages (the template wraps them in <tool_response>). tool_choice "required" or a named function constrains
the reply to such blocks whose JSON matches a tool's parameter schema (a Lark grammar with embedded JSON
schemas, constrained.py); "auto" lets the model choose and parses what it wrote; "none" renders no tools.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from ..errors import QwenEdgeError
from .constrained import WHITESPACE
from .constraint_check import json_value

_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)
OPEN = "<tool_call>"


def check_tools(tools: Any) -> list[dict]:
    """OpenAI's tools list: [{"type": "function", "function": {"name", "description"?, "parameters"?, "strict"?}}].

    OpenAI's rules: `parameters` is a JSON schema of type object (left out: no arguments); with
    `"strict": true` every object in it gets `additionalProperties: false` where it says nothing."""
    if not isinstance(tools, list) or not tools:
        raise QwenEdgeError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    out, names = [], set()
    for i, t in enumerate(tools):
        if not isinstance(t, dict):
            raise QwenEdgeError(f"tools[{i}] must be an object {{'type': 'function', 'function': {{...}}}}")
        if t.get("type") != "function":
            raise QwenEdgeError(f"tools[{i}].type must be 'function', got {t.get('type')!r}")
        f = t.get("function")
        if not isinstance(f, dict):
            raise QwenEdgeError(f"tools[{i}].function must be an object with a 'name'")
        name = f.get("name")
        if not isinstance(name, str):
            raise QwenEdgeError(f"tools[{i}].function needs a 'name' (a string)")
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise QwenEdgeError(f"tools[{i}].function.name {name[:80]!r} is not a function name: 1 to 64 of "
                                "a-z, A-Z, 0-9, _ . -")
        if name in names:
            raise QwenEdgeError(f"two tools are named {name!r}")
        names.add(name)
        params = _parameters(f.get("parameters"), f"tools[{i}].function.parameters")
        if f.get("strict") is True:
            params = _strict(params)
        elif f.get("strict") not in (None, False):
            raise QwenEdgeError(f"tools[{i}].function.strict must be a boolean")
        out.append({"type": "function", "function": {**f, "parameters": params}})
    return out


def _parameters(params: Any, where: str) -> dict:
    if params is None:
        return {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise QwenEdgeError(f"{where} must be a JSON schema object of type 'object'")
    json_value(params, where)  # a cycle or a 100,000-deep object is refused before anything walks it
    t = params.get("type", "object")
    if t != "object":
        raise QwenEdgeError(f"{where} must be a JSON schema of type 'object' (the arguments are a JSON object), "
                            f"got type {t!r}")
    return {"type": "object", **params}


def _strict(schema: Any) -> Any:
    """A copy of `schema` in which every object schema without additionalProperties gets `false`."""
    if isinstance(schema, list):
        return [_strict(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (schema.get("type") == "object" or "properties" in schema) and "additionalProperties" not in schema:
        out["additionalProperties"] = False
    return out


def check_tool_messages(messages: list) -> None:
    """A `role: tool` message answers a call made earlier in the conversation: its `tool_call_id`, when
    given, must be the id of an assistant's earlier tool call (OpenAI answers 400 otherwise)."""
    ids: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        calls = m.get("tool_calls") if m.get("role") == "assistant" else None
        for c in calls if isinstance(calls, list) else []:
            if isinstance(c, dict) and isinstance(c.get("id"), str):
                ids.add(c["id"])
        if m.get("role") == "tool" and m.get("tool_call_id") is not None:
            tid = m["tool_call_id"]
            if not isinstance(tid, str) or tid not in ids:
                known = f" (earlier calls: {', '.join(sorted(ids)[:4])})" if ids else " (no assistant message made a call)"
                raise QwenEdgeError(f"messages[{i}].tool_call_id {str(tid)[:60]!r} matches no earlier tool call{known}")


def policy(tools: Any, tool_choice: Any, parallel: bool, constrained: bool,
           other: str = "another constraint") -> tuple[list[dict] | None, str | None]:
    """The one rule for a request's tools, used by the Python API and HTTP alike: (the tools the template
    renders, or None; the Lark grammar the reply must match, or None). tool_choice "required" or a named
    function constrains the reply to calls (and cannot be combined with `other`, a constraint the request
    also asked for); "none" renders no tools; a tool_choice without tools is refused."""
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise QwenEdgeError("tool_choice needs tools")
        return None, None
    tools = check_tools(tools)
    names = choice_names(tools, tool_choice)
    grammar = None
    if names is not None:
        if constrained:
            raise QwenEdgeError(f"tool_choice 'required' or a named function cannot be combined with {other}")
        grammar = call_grammar(tools, names, bool(parallel))
    return (None if tool_choice == "none" else tools), grammar


def choice_names(tools: list[dict], choice: Any) -> list[str] | None:
    """The functions the reply must call (None: the model chooses, or calls none)."""
    names = [t["function"]["name"] for t in tools]
    if choice in (None, "auto", "none"):
        return None
    if choice == "required":
        return names
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise QwenEdgeError(f"tool_choice names {name!r}, which is not among the tools ({', '.join(names)})")
        return [name]
    raise QwenEdgeError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}")


def call_grammar(tools: list[dict], names: list[str], parallel: bool) -> str:
    """A Lark grammar (llguidance's dialect): one or more <tool_call> blocks, each JSON that matches one of the
    named tools' {"name": const, "arguments": parameters} schema."""
    by_name = {t["function"]["name"]: t["function"] for t in tools}
    schemas = [{"type": "object", "properties": {"name": {"const": n}, "arguments": by_name[n]["parameters"]},
                "required": ["name", "arguments"], "additionalProperties": False} for n in names]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    schema = {**schema, "x-guidance": {"whitespace_pattern": WHITESPACE}}
    rep = "+" if parallel else ""
    # <tool_call> and </tool_call> are tokens of their own in Qwen's vocabulary: referenced as tokens, not text
    return (f'start: call{rep}\ncall: <tool_call> "\\n" body "\\n" </tool_call> "\\n"?\n'
            f"body: %json {json.dumps(schema)}\n")


_FENCED = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_calls(text: str, names: list[str] | None = None) -> tuple[str | None, list[dict]]:
    """(the text outside <tool_call> blocks or None when empty, the calls in OpenAI's format).

    With the tools' `names`, a reply that is nothing but a JSON call object (or a list of them), bare or in
    a ```json fence, counts too: small Qwen models often answer a tool request that way."""
    objs = []
    for m in _CALL.finditer(text):
        try:
            objs.append(json.loads(m.group(1)))
        except ValueError:
            continue
    rest: str | None = _CALL.sub("", text).strip() if objs else text
    if not objs and names:
        f = _FENCED.match(text)
        try:
            whole = json.loads(f.group(1) if f else text)
        except ValueError:
            whole = None
        cands = whole if isinstance(whole, list) else [whole]
        if cands and all(isinstance(o, dict) and o.get("name") in names and "arguments" in o for o in cands):
            objs, rest = cands, None
    calls = []
    for obj in objs:
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", {})
        calls.append({"id": "call_" + uuid.uuid4().hex[:24], "type": "function",
                      "function": {"name": obj["name"],
                                   "arguments": args if isinstance(args, str) else json.dumps(args)}})
    return (rest or None) if calls else text, calls


def for_template(messages: list[dict]) -> list[dict]:
    """OpenAI messages as Qwen's template reads them: an assistant's tool_calls with arguments as objects."""
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                f = dict(c.get("function", c))
                if isinstance(f.get("arguments"), str):
                    try:
                        f["arguments"] = json.loads(f["arguments"])
                    except ValueError:
                        raise QwenEdgeError(f"tool call arguments are not JSON: {f['arguments'][:80]!r}") from None
                calls.append({"type": "function", "function": f})
            m = {**m, "content": m.get("content") or "", "tool_calls": calls}
        out.append(m)
    return out


_HEAD = re.compile(r'^\s*\{\s*"name"\s*:\s*"([^"\\]*)"\s*,\s*"arguments"\s*:\s*', re.S)
CLOSE = "</tool_call>"


class CallStream:
    """Turns a streamed reply into OpenAI's streamed events as the text arrives: ("content", text),
    ("call", index, id, name) and ("arguments", index, text). A <tool_call> block's arguments stream as they
    are written (the wrapper's closing brace held back until </tool_call> shows which brace it is); a reply that
    starts like a bare JSON call ("{" or a ``` fence) is held to the end and then parsed as parse_calls does."""

    def __init__(self, names: list[str]):
        self.names = names
        self.buf = ""
        self.mode = "start"  # start | text | head | args | whole
        self.calls = 0
        self.emitted = False

    def feed(self, piece: str) -> list[tuple]:
        self.buf += piece
        out: list[tuple] = []
        while True:
            before = (self.mode, len(self.buf))
            if self.mode == "start":
                s = self.buf.lstrip()
                if not s:
                    return out
                if s.startswith("{") or s.startswith("```"):
                    self.mode = "whole"
                elif len(s) < len(OPEN) and (OPEN.startswith(s) or "```".startswith(s)):
                    return out  # could still become <tool_call> or a fence
                else:
                    self.mode = "text"
            if self.mode == "whole":
                return out
            if self.mode == "text":
                i = self.buf.find(OPEN)
                if i >= 0:
                    if self.buf[:i].strip():
                        out.append(("content", self.buf[:i].rstrip()))
                    self.buf, self.mode = self.buf[i + len(OPEN):], "head"
                else:  # held back: a possible start of the tag, and trailing blank space (none between calls)
                    keep = _partial_suffix(self.buf, OPEN)
                    cut = len(self.buf[:len(self.buf) - keep].rstrip())
                    if cut > 0 and self.buf[:cut].strip():
                        out.append(("content", self.buf[:cut]))
                        self.buf = self.buf[cut:]
                    return out
            if self.mode == "head":
                m = _HEAD.match(self.buf)
                if m:
                    out.append(("call", self.calls, "call_" + uuid.uuid4().hex[:24], m.group(1)))
                    self.buf, self.mode = self.buf[m.end():], "args"
                elif CLOSE in self.buf:  # a block in another layout: parsed whole
                    block, _, self.buf = self.buf.partition(CLOSE)
                    out += self._whole_block(block)
                    self.mode = "text"
                else:
                    return out
            if self.mode == "args":
                i = self.buf.find(CLOSE)
                if i >= 0:
                    args = self.buf[:i].rstrip()
                    args = args[:-1].rstrip() if args.endswith("}") else args  # the wrapper's own brace
                    if args:
                        out.append(("arguments", self.calls, args))
                    self.calls += 1
                    self.buf, self.mode = self.buf[i + len(CLOSE):], "text"
                else:  # held back: a possible start of </tool_call>, and before it a closing brace that may be
                    # the wrapper's, with blank space
                    base = self.buf[:len(self.buf) - _partial_suffix(self.buf, CLOSE)]
                    j = re.search(r"\}?\s*$", base).start()
                    if j > 0:
                        out.append(("arguments", self.calls, self.buf[:j]))
                        self.buf = self.buf[j:]
                    return out
            if (self.mode, len(self.buf)) == before:
                return out

    def _whole_block(self, block: str) -> list[tuple]:
        _, calls = parse_calls(OPEN + block + CLOSE)
        out = []
        for c in calls:
            out += [("call", self.calls, c["id"], c["function"]["name"]),
                    ("arguments", self.calls, c["function"]["arguments"])]
            self.calls += 1
        return out

    def finish(self) -> list[tuple]:
        if self.mode == "whole":
            rest, calls = parse_calls(self.buf, self.names)
            out: list[tuple] = [("content", rest)] if rest and not calls else []
            for c in calls:
                out += [("call", self.calls, c["id"], c["function"]["name"]),
                        ("arguments", self.calls, c["function"]["arguments"])]
                self.calls += 1
            return out
        if self.mode in ("text", "start") and self.buf.strip():
            return [("content", self.buf.rstrip() if self.calls else self.buf)]
        return []


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (held back: it may become the tag)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0
