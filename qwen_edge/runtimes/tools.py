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

_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)
OPEN = "<tool_call>"


def check_tools(tools: Any) -> list[dict]:
    """OpenAI's tools list: [{"type": "function", "function": {"name", "description"?, "parameters"?}}]."""
    if not isinstance(tools, list) or not tools:
        raise QwenEdgeError("tools must be a non-empty list of {'type': 'function', 'function': {...}}")
    out, names = [], set()
    for i, t in enumerate(tools):
        f = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", f["name"]):
            raise QwenEdgeError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': a-z, 0-9, _ . - "
                                "(up to 64), 'description', 'parameters'}}}}")
        params = f.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict):
            raise QwenEdgeError(f"tools[{i}].function.parameters must be a JSON schema object")
        if f["name"] in names:
            raise QwenEdgeError(f"two tools are named {f['name']!r}")
        names.add(f["name"])
        out.append({"type": "function", "function": {**f, "parameters": params}})
    return out


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
