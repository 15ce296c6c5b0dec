"""The OpenAI API shapes: requests checked into generation options, responses and stream chunks built.

No HTTP here. A request field we do not support is an error, never silently ignored: `n` > 1, images,
audio, ... (a value that means "off", such as n = 1, is accepted). Unknown
fields are refused too, so a client never believes a setting took effect when it did not.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..runtimes.constraint_check import MAX_JSON_DEPTH, json_depth  # noqa: F401 (request bodies: http.py)
from ..runtimes.logprobs import MAX_TOP  # the one limit the Python API applies too
from ..runtimes.template import check_text


class ApiError(Exception):
    """An error answered with the OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


SAMPLING = {"temperature": float, "top_p": float, "top_k": int, "min_p": float, "seed": int,
            "frequency_penalty": float, "presence_penalty": float, "repetition_penalty": float}
COMMON = {"model", "stream", "stream_options", "max_tokens", "stop", *SAMPLING}
# Accepted when they mean "off"; any other value is a 400 saying why (we cannot do what it asks). None: any
# value is accepted here and checked where the field is read.
ONE_CHOICE = "this server generates one choice per request"
OFF: dict[str, tuple[tuple, str] | None] = {
    "n": ((None, 1), ONE_CHOICE), "best_of": ((None, 1), ONE_CHOICE),
    "logprobs": None, "top_logprobs": None, "tools": None, "tool_choice": None, "response_format": None,
    "echo": None, "user": None, "metadata": None, "reasoning_effort": None,
    "functions": ((None, []), "the legacy 'functions' API is not supported: send 'tools'"),
    "function_call": ((None, "none", "auto"), "the legacy 'function_call' is not supported: send 'tool_choice'"),
    "parallel_tool_calls": ((None, True, False), "it is a boolean"),
    "logit_bias": ((None, {}), "constrain the output with response_format instead"),
    "store": ((None, False), "this server stores nothing"),
    "service_tier": ((None, "auto", "default"), "this server has one tier"),
    "suffix": ((None, ""), "fill-in-the-middle is not supported"),
    "modalities": ((None, ["text"]), "this server writes text only"),
}
CHAT = COMMON | {"messages", "max_completion_tokens"} | set(OFF)
COMPLETION = COMMON | {"prompt"} | set(OFF)


@dataclass
class Request:
    kind: str  # "chat" | "completion"
    prompt: Any  # messages (chat), or a list of prompts (completion: each text or token ids)
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    stop: list[str] | None = None
    sampling: dict[str, Any] = field(default_factory=dict)
    constraint: Any = None  # runtimes.constrained.ConstraintSpec from response_format
    logprobs: int | None = None  # None: off; N: each token's log-probability and N alternatives
    echo: bool = False  # completions: the prompt (and its tokens' log-probabilities) before the text
    tools: list | None = None  # chat: OpenAI's tools, checked (runtimes/tools.py)
    tool_choice: Any = None
    parallel_tool_calls: bool = True


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(v: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object", type(None): "null"}.get(type(v), type(v).__name__)


def _number(body: dict, key: str, kind: type) -> Any:
    v = body[key]
    if v is None:
        return None
    ok = isinstance(v, int) and not isinstance(v, bool) if kind is int else \
        isinstance(v, (int, float)) and not isinstance(v, bool)
    if not ok:
        raise ApiError(400, f"'{key}' must be {'an integer' if kind is int else 'a number'}, got {_type_name(v)}", key)
    return kind(v)


def parse(body: Any, kind: str, model_id: str, max_tokens_cap: int, aliases: tuple[str, ...] = ()) -> Request:
    """Check a request body (already JSON-decoded) into a Request; ApiError with the OpenAI body if not."""
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_type_name(body)}")
    allowed = CHAT if kind == "chat" else COMPLETION
    for key in body:
        if key not in allowed:
            raise ApiError(400, f"unsupported field '{key}'", key)
    for key, rule in OFF.items():
        if key in body and rule is not None and body[key] not in rule[0]:
            raise ApiError(400, f"'{key}' = {_short(body[key])} is not supported: {rule[1]}", key)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "'model' is required (a string)", "model")
    if model != model_id and model not in aliases and "*" not in aliases:
        raise ApiError(404, f"the model '{model}' does not exist; this server serves '{model_id}' (send that name, "
                            f"or start it with --alias '{model}', or --alias '*' for any name)", "model",
                       "model_not_found")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, f"'stream' must be a boolean, got {_type_name(stream)}", "stream")
    include_usage = False
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage"}:
            raise ApiError(400, "'stream_options' supports only {\"include_usage\": true|false}", "stream_options")
        include_usage = opts.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise ApiError(400, "'stream_options.include_usage' must be a boolean", "stream_options")
    limit = None
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            v = _number(body, key, int)
            if v < 1:
                raise ApiError(400, f"'{key}' must be at least 1, got {v}", key)
            if v > max_tokens_cap:
                raise ApiError(400, f"'{key}' = {v} is above this server's limit of {max_tokens_cap}", key)
            limit = v if limit is None else min(limit, v)
    sampling = {}
    for key, t in SAMPLING.items():
        if key in body and body[key] is not None:
            sampling[key] = _number(body, key, t)
    if "temperature" in sampling and not 0 <= sampling["temperature"] <= 2:
        raise ApiError(400, f"'temperature' must be between 0 and 2, got {sampling['temperature']}", "temperature")
    prompt = _messages(body) if kind == "chat" else _prompt(body)
    return Request(kind=kind, prompt=prompt, stream=bool(stream), include_usage=include_usage, max_tokens=limit,
                   stop=_stop(body.get("stop")), sampling=sampling, constraint=_response_format(body),
                   logprobs=_logprobs(body, kind), echo=_echo(body, kind), **_tools(body, kind))


def _tools(body: dict, kind: str) -> dict[str, Any]:
    from ..errors import QwenEdgeError
    from ..runtimes.tools import check_tools, choice_names
    tools, choice = body.get("tools"), body.get("tool_choice")
    if tools in (None, []):
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "'tool_choice' needs 'tools'", "tool_choice")
        return {}
    if kind != "chat":
        raise ApiError(400, "'tools' belong to the chat endpoint", "tools")
    try:
        tools = check_tools(tools)
        choice_names(tools, choice)
    except QwenEdgeError as e:
        raise ApiError(400, str(e), "tools") from None
    return {"tools": tools, "tool_choice": choice, "parallel_tool_calls": body.get("parallel_tool_calls") is not False}


def _logprobs(body: dict, kind: str) -> int | None:
    """chat: logprobs (bool) and top_logprobs (0..20); completions: logprobs (0..20, the alternatives)."""
    if kind == "chat":
        on, top = body.get("logprobs"), body.get("top_logprobs")
        if on is not None and not isinstance(on, bool):
            raise ApiError(400, f"'logprobs' must be a boolean, got {_type_name(on)}", "logprobs")
        if top is not None:
            if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
                raise ApiError(400, f"'top_logprobs' must be an integer in 0..{MAX_TOP}", "top_logprobs")
            if not on:
                raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
        return (top or 0) if on else None
    n = body.get("logprobs")
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_TOP:
        raise ApiError(400, f"'logprobs' must be an integer in 0..{MAX_TOP} (the alternatives per token)", "logprobs")
    return n


def _echo(body: dict, kind: str) -> bool:
    e = body.get("echo")
    if e is None:
        return False
    if kind == "chat" or not isinstance(e, bool):
        raise ApiError(400, "'echo' is a boolean of the completions endpoint", "echo")
    return e


def chat_logprobs(entries: list, tokenizer: Any) -> dict[str, Any]:
    from ..runtimes.logprobs import token_bytes

    def one(i: int, lp: float) -> dict[str, Any]:
        b = token_bytes(tokenizer, i)
        return {"token": b.decode("utf-8", errors="replace"), "logprob": lp, "bytes": list(b)}
    return {"content": [{**one(e.id, e.logprob), "top_logprobs": [one(i, lp) for i, lp in e.top]} for e in entries]}


def completion_logprobs(entries: list, tokenizer: Any, offset: int = 0) -> dict[str, Any]:
    """The legacy completions object; an entry of None (a prompt's first token) is given by its id in
    `entries` as ("first", id)."""
    from ..runtimes.logprobs import token_bytes
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        tid = e[1] if isinstance(e, tuple) else e.id
        t = token_bytes(tokenizer, tid).decode("utf-8", errors="replace")
        tokens.append(t)
        offsets.append(offset)
        offset += len(t)
        if isinstance(e, tuple):
            lps.append(None)
            tops.append(None)
        else:
            lps.append(e.logprob)
            tops.append({token_bytes(tokenizer, i).decode("utf-8", errors="replace"): lp for i, lp in e.top})
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


def _response_format(body: dict) -> Any:
    """OpenAI's response_format: text (no constraint), json_object, or json_schema {name, schema, strict}."""
    from ..runtimes.constrained import ConstraintSpec
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict) or not isinstance(rf.get("type"), str):
        raise ApiError(400, "'response_format' must be an object with a 'type'", "response_format")
    t = rf["type"]
    if t == "text":
        return None
    if t == "json_object":
        return ConstraintSpec("json_object")
    if t == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
            raise ApiError(400, "'response_format.json_schema' must be an object with a 'schema' object",
                           "response_format")
        return ConstraintSpec("json_schema", js.get("schema", {}))
    raise ApiError(400, f"'response_format.type' must be text, json_object or json_schema, got {t!r}",
                   "response_format")


def _stop(v: Any) -> list[str] | None:
    if v is None:
        return None
    stops = [v] if isinstance(v, str) else v
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, "'stop' must be a string or an array of strings", "stop")
    if len(stops) > 16 or any(not s for s in stops):
        raise ApiError(400, "'stop' takes at most 16 non-empty strings", "stop")
    for s in stops:
        _text(s, "stop")
    return stops or None


def _text(s: str, param: str) -> str:
    try:
        return check_text(s, f"'{param}'")
    except Exception as e:  # InputError: lone surrogates from \\ud800-style JSON escapes
        raise ApiError(400, str(e), param) from None


def _messages(body: dict) -> list[dict[str, str]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty array", "messages")
    out = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", where)
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise ApiError(400, f"{where}.role must be system, user, assistant or tool, got {role!r}", f"{where}.role")
        extra = set(m) - {"role", "content", "name", "tool_calls", "tool_call_id"}
        if extra:
            raise ApiError(400, f"{where} has unsupported field '{sorted(extra)[0]}'", where)
        content = m.get("content")
        if role == "assistant" and m.get("tool_calls"):
            calls = m["tool_calls"]
            if not isinstance(calls, list) or not all(isinstance(c, dict) and isinstance(c.get("function"), dict)
                                                      and isinstance(c["function"].get("name"), str) for c in calls):
                raise ApiError(400, f"{where}.tool_calls must be [{{'id', 'type': 'function', 'function': "
                                    "{'name', 'arguments'}}]", f"{where}.tool_calls")
            out.append({"role": "assistant", "content": _text(content, where) if isinstance(content, str) else "",
                        "tool_calls": calls})
            continue
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            parts = []
            for j, p in enumerate(content):
                if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                    raise ApiError(400, f"{where}.content[{j}]: only text parts are supported (no images or audio)",
                                   f"{where}.content")
                parts.append(p["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise ApiError(400, f"{where}.content must be a string or an array of text parts", f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": _text(content, where)})
    from ..errors import QwenEdgeError
    from ..runtimes.tools import check_tool_messages
    try:
        check_tool_messages(msgs)
    except QwenEdgeError as e:
        raise ApiError(400, str(e), "messages") from None
    return out


MAX_PROMPTS = 64  # prompts in one completions request (evaluation harnesses batch 8-32)


def _prompt(body: dict) -> list[str | list[int]]:
    """OpenAI's four prompt forms, as a list of prompts: a string, an array of strings, an array of token ids,
    an array of token-id arrays (what lm-eval's local-completions sends by default, also for one prompt)."""
    p = body.get("prompt")
    if isinstance(p, str) or _ids(p):
        prompts = [p]
    elif isinstance(p, list) and p and (all(isinstance(x, str) for x in p) or all(_ids(x) for x in p)):
        prompts = p
    else:
        raise ApiError(400, "'prompt' must be a string, an array of strings, an array of token ids or an array "
                            "of token-id arrays", "prompt")
    if len(prompts) > MAX_PROMPTS:
        raise ApiError(400, f"'prompt' has {len(prompts)} prompts; at most {MAX_PROMPTS} per request", "prompt")
    for i, x in enumerate(prompts):
        if isinstance(x, str):
            if not x:
                raise ApiError(400, "'prompt' is empty" if len(prompts) == 1 else f"'prompt'[{i}] is empty", "prompt")
            _text(x, "prompt")
    return prompts


def _ids(x: Any) -> bool:
    return isinstance(x, list) and len(x) > 0 and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


# --- responses ------------------------------------------------------------------------------------------
FINISH = {"eos": "stop", "stop": "stop", "length": "length", "cancelled": "stop", "tool_calls": "tool_calls",
          "error": "error"}  # "error": a stream that failed after its first event (after an error event)


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, cached: int,
          speculative: dict[str, Any] | None = None) -> dict[str, Any]:
    u: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens,
                         "prompt_tokens_details": {"cached_tokens": cached}}
    if speculative is not None:  # OpenAI's names for proposed tokens kept / discarded (Predicted Outputs)
        u["completion_tokens_details"] = {
            "accepted_prediction_tokens": speculative["accepted"],
            "rejected_prediction_tokens": speculative["proposed"] - speculative["accepted"]}
    return u


def response(kind: str, rid: str, model: str, text: str | None, finish: str, use: dict,
             logprobs: dict | None = None, tool_calls: list | None = None) -> dict[str, Any]:
    created = int(time.time())
    if kind == "chat":
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message["tool_calls"] = tool_calls
        choice = {"index": 0, "message": message, "logprobs": logprobs,
                  "finish_reason": "tool_calls" if tool_calls else FINISH[finish]}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": FINISH[finish]}
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": use,
            "system_fingerprint": "qwen-edge"}


def merge_choices(replies: list[dict[str, Any]]) -> dict[str, Any]:
    """Several prompts' responses (one completion request with a list of prompts) as one: choice i answers
    prompt i, and the usage is the sum."""
    if len(replies) == 1:
        return replies[0]
    out = dict(replies[0])
    out["choices"] = [{**r["choices"][0], "index": i} for i, r in enumerate(replies)]
    cached = sum(r["usage"]["prompt_tokens_details"]["cached_tokens"] for r in replies)
    out["usage"] = usage(sum(r["usage"]["prompt_tokens"] for r in replies),
                         sum(r["usage"]["completion_tokens"] for r in replies), cached)
    return out


def tool_call_delta(rid: str, model: str, event: tuple) -> dict[str, Any]:
    """OpenAI's streamed tool call: ("call", index, id, name) opens a call, ("arguments", index, text) adds to
    its arguments (runtimes/tools.py CallStream)."""
    if event[0] == "call":
        d = {"index": event[1], "id": event[2], "type": "function", "function": {"name": event[3], "arguments": ""}}
    else:
        d = {"index": event[1], "function": {"arguments": event[2]}}
    return {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "system_fingerprint": "qwen-edge",
            "choices": [{"index": 0, "delta": {"tool_calls": [d]}, "logprobs": None, "finish_reason": None}]}


def chunk(kind: str, rid: str, model: str, text: str | None, finish: str | None = None, first: bool = False,
          use: dict | None = None, logprobs: dict | None = None) -> dict[str, Any]:
    created = int(time.time())
    if use is not None:  # the usage chunk: no choices
        return {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                "created": created, "model": model, "choices": [], "usage": use}
    reason = FINISH[finish] if finish else None
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant", "content": text or ""} if first else \
            ({} if text is None else {"content": text})
        return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": "qwen-edge",
                "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": reason}]}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text or "", "logprobs": logprobs, "finish_reason": reason}]}
