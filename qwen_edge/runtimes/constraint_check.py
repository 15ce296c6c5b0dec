"""What a constraint must pass before llguidance sees it, and before a generation starts.

Why: llguidance compiles some constraints that no output can honour, and a user then gets an empty reply
that claims to have ended normally (measured: a `$ref` cycle a -> b -> a, a Lark `start: start`); a Python
dict that contains itself crashed the process inside llguidance (SIGSEGV); a 100,000-deep schema file hit
Python's recursion limit; a schema with 1,000 optional properties compiled and then stopped the parser at
its first token (`max_items_in_row` 2000). So, in this order, each one cheap:

1. `json_text` / `json_value`: a schema read from text is depth-checked on its raw bytes before parsing,
   and a Python object is walked iteratively (no recursion) for depth, cycles and non-JSON values; the
   depth limit is the one the server applies to request bodies (`MAX_JSON_DEPTH`).
2. `schema_unsatisfiable` / `grammar_unproductive`: the classic productivity fixpoint (a rule is
   productive when one of its alternatives is made of productive parts): a JSON schema whose required
   properties recurse through `$ref` with no way out, or a Lark rule that can never end, has no finite
   value. Anything these readers do not understand counts as productive: they refuse only what they prove.
3. `constrained.probe` then feeds llguidance's matcher its first tokens, which finds what only the parser
   knows (a row too large for its limits, a grammar that stops at once).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from ..errors import InputError

# Deepest nesting of arrays and objects accepted in a request body, a schema file or a schema object.
# Checked before parsing, so a 100,000-deep document never reaches a recursive parser. Schemas rarely pass 20.
MAX_JSON_DEPTH = 128

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in a JSON text, brackets inside strings not counted.

    No recursion and no per-byte Python loop: strings are blanked by a regex, every byte but brackets is
    dropped, and the running depth is a cumulative sum (1 MiB of '[' takes a few milliseconds)."""
    b = _JSON_STRING.sub(b'""', raw).translate(None, _BRACKETS)
    if not b:
        return 0
    a = np.frombuffer(b, np.uint8)
    steps = np.where((a == ord("[")) | (a == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


def json_text(text: str, what: str) -> Any:
    """Parse JSON text that a user gave (a schema file, a schema string): depth first, one-line errors."""
    depth = json_depth(text.encode("utf-8", "surrogatepass"))
    if depth > MAX_JSON_DEPTH:
        raise InputError(f"{what} nests {depth} levels deep; at most {MAX_JSON_DEPTH} are accepted")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{what} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:  # belt and braces: the depth check above counts brackets outside strings
        raise InputError(f"{what} nests too deeply") from None


def json_value(value: Any, what: str) -> None:
    """A Python object that stands for JSON: dicts with string keys, lists, strings, finite numbers, booleans
    and None, nested at most MAX_JSON_DEPTH deep and containing no container twice on one path (a cycle)."""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    on_path: dict[int, int] = {}  # id of a container -> its depth, while its children are walked
    exits: list[tuple[int, int]] = []
    while stack:
        v, depth, where = stack.pop()
        while exits and exits[-1][1] >= depth:  # containers whose subtree is finished
            on_path.pop(exits.pop()[0], None)
        if isinstance(v, (dict, list, tuple)):
            if id(v) in on_path:
                raise InputError(f"{what} contains itself at {where or 'the top'} (a cycle): "
                                 "a schema must be a tree; use $ref for recursion")
            if depth > MAX_JSON_DEPTH:
                raise InputError(f"{what} nests more than {MAX_JSON_DEPTH} levels deep")
            on_path[id(v)] = depth
            exits.append((id(v), depth))
            if isinstance(v, dict):
                for k, x in v.items():
                    if not isinstance(k, str):
                        raise InputError(f"{what} has a key {k!r} at {where or 'the top'}: JSON keys are strings")
                    stack.append((x, depth + 1, f"{where}/{k}"))
            else:
                stack.extend((x, depth + 1, f"{where}/{i}") for i, x in enumerate(v))
        elif isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{what} has {v} at {where or 'the top'}: JSON has no NaN or Infinity")
        elif not (v is None or isinstance(v, (str, bool, int, float))):
            raise InputError(f"{what} has a {type(v).__name__} at {where or 'the top'}: not a JSON value")


# --- JSON schema: can any finite value satisfy it? ---------------------------------------------------------
_PRIMITIVE = {"string", "number", "integer", "boolean", "null"}


def _pointer(root: Any, ref: str) -> Any:
    """The local target of a `$ref` ("#", "#/$defs/a", "#/definitions/a/properties/b"), or None."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def schema_unsatisfiable(schema: Any) -> str | None:
    """Why no finite JSON value can match `schema`, or None when one can (or this reader cannot tell).

    Only recursion is judged: a required property (or a non-empty array's items) that leads back through
    `$ref` to itself with no alternative. Value constraints that contradict each other are llguidance's."""
    refs: dict[str, Any] = {}
    todo = [schema]
    while todo:  # every $ref target in the document
        node = todo.pop()
        if isinstance(node, dict):
            r = node.get("$ref")
            if isinstance(r, str) and r not in refs:
                target = _pointer(schema, r)
                if target is not None:
                    refs[r] = target
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    known: set[str] = set()  # $refs proven to have a finite value

    def ok(s: Any, depth: int = 0) -> bool:
        if depth > 4 * MAX_JSON_DEPTH or s is True or not isinstance(s, dict):
            return s is not False
        r = s.get("$ref")
        if isinstance(r, str) and r in refs and r not in known:
            return False
        if "enum" in s:
            return isinstance(s["enum"], list) and len(s["enum"]) > 0
        if "const" in s:
            return True
        for key, need in (("allOf", all), ("anyOf", any), ("oneOf", any)):
            subs = s.get(key)
            if isinstance(subs, list) and subs and not need(ok(x, depth + 1) for x in subs):
                return False
        t = s.get("type")
        types = set(t) if isinstance(t, list) else {t} if isinstance(t, str) else None
        if types is None or types & _PRIMITIVE or types - _PRIMITIVE - {"object", "array"}:
            return True  # (an unknown type name is llguidance's to refuse)
        if "object" in types and _object_ok(s, depth):
            return True
        return "array" in types and _array_ok(s, depth)

    def _object_ok(s: dict, depth: int) -> bool:
        props = s.get("properties") if isinstance(s.get("properties"), dict) else {}
        extra = s.get("additionalProperties", True)
        for name in s.get("required") or []:
            sub = props[name] if isinstance(name, str) and name in props else extra
            if not ok(sub, depth + 1):
                return False
        return True

    def _array_ok(s: dict, depth: int) -> bool:
        n = s.get("minItems", 0)
        if not isinstance(n, int) or n <= 0:
            return True
        prefix = s.get("prefixItems") if isinstance(s.get("prefixItems"), list) else []
        if not all(ok(x, depth + 1) for x in prefix[:n]):
            return False
        return n <= len(prefix) or ok(s.get("items", True), depth + 1)

    changed = True
    while changed:
        changed = False
        for r, target in refs.items():
            if r not in known and ok(target):
                known.add(r)
                changed = True
    if ok(schema):
        return None
    stuck = sorted(r for r in refs if r not in known)
    via = f" ({', '.join(stuck[:3])} never end{'s' if len(stuck) == 1 else ''})" if stuck else ""
    return f"no finite JSON value satisfies it: its required properties recurse with no way out{via}"


# --- Lark grammar: can the start rule produce a finite string? --------------------------------------------
_LARK_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"i?)
  | (?P<regex>/(?:[^/\\\n]|\\.)+/[imslux]*)
  | (?P<special><\[[0-9,\s\-]*\]>|<[^<>\s]+>)
  | (?P<directive>%[a-z_]+)
  | (?P<range>\.\.)
  | (?P<name>[!?]?[A-Za-z_][A-Za-z0-9_]*(?:\.-?[0-9]+)?)
  | (?P<colon>:)
  | (?P<repeat>\{\s*[0-9]*\s*(?:,\s*[0-9]*\s*)?\})
  | (?P<op>[|()\[\]?*+~&])
""", re.X)


class _Unknown(Exception):
    """Lark syntax this reader does not follow: no verdict."""


def _lark_tokens(text: str) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(text):
        if text[i] == "{" and out and out[-1] == ("directive", "%json"):
            depth, j = 0, i  # the embedded JSON schema: balanced braces, strings skipped
            while j < len(text):
                c = text[j]
                if c == '"':
                    k = j + 1
                    while k < len(text) and text[k] != '"':
                        k += 2 if text[k] == "\\" else 1
                    j = k
                elif c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            out.append(("json", text[i:j + 1]))
            i = j + 1
            continue
        m = _LARK_TOKEN.match(text, i)
        if not m:
            raise _Unknown(text[i:i + 20])
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
        i = m.end()
    return out


def _lark_rules(text: str) -> dict[str, list]:
    """name -> its expansion as nested ('alt', [seq...]) / ('seq', [items]) / items, for rules (lowercase)
    and terminals (uppercase) alike; directives (%import, %ignore, %llguidance) are skipped."""
    toks = _lark_tokens(text)
    rules: dict[str, list] = {}
    i = 0
    while i < len(toks):
        kind, val = toks[i]
        if kind == "directive" and val not in ("%json", "%regex"):  # skip to the next definition
            i += 1
            while i < len(toks) and not (i + 1 < len(toks) and toks[i][0] == "name" and toks[i + 1][0] == "colon"):
                i += 1
            continue
        if kind == "name" and i + 1 < len(toks) and toks[i + 1][0] == "colon":
            name = val.lstrip("!?").split(".")[0]
            j = i + 2
            while j < len(toks) and not (toks[j][0] == "name" and j + 1 < len(toks) and toks[j + 1][0] == "colon") \
                    and not (toks[j][0] == "directive" and toks[j][1] not in ("%json", "%regex")):
                j += 1
            body, pos = _alternatives(toks[i + 2:j], 0)
            if pos != j - i - 2:
                raise _Unknown(name)
            rules.setdefault(name, []).append(body)
            i = j
            continue
        raise _Unknown(val)
    return rules


def _alternatives(toks: list, i: int) -> tuple[tuple, int]:
    alts, seq = [], []
    while i < len(toks):
        kind, val = toks[i]
        if kind == "op" and val == "|":
            alts.append(("seq", seq))
            seq, i = [], i + 1
            continue
        if kind == "op" and val in ")]":
            break
        item, i = _item(toks, i)
        seq.append(item)
    alts.append(("seq", seq))
    return ("alt", alts), i


def _item(toks: list, i: int) -> tuple[tuple, int]:
    kind, val = toks[i]
    if kind == "op" and val in "([":
        inner, j = _alternatives(toks, i + 1)
        close = ")" if val == "(" else "]"
        if j >= len(toks) or toks[j] != ("op", close):
            raise _Unknown("unbalanced")
        item: tuple = inner if val == "(" else ("maybe", inner)
        i = j + 1
    elif kind in ("string", "regex", "special", "json"):
        item, i = ("leaf", val), i + 1
        if i + 1 < len(toks) and toks[i][0] == "range" and toks[i + 1][0] == "string":
            i += 2
    elif kind == "name":
        item, i = ("ref", val.lstrip("!?")), i + 1
    elif kind == "directive" and val in ("%json", "%regex"):
        return _item(toks, i + 1) if i + 1 < len(toks) else (("leaf", val), i + 1)
    else:
        raise _Unknown(val)
    while i < len(toks):  # postfix operators
        kind, val = toks[i]
        if kind == "op" and val in "?*":
            item, i = ("maybe", item), i + 1
        elif kind == "op" and val == "+":
            i += 1
        elif kind == "repeat":
            low = val.strip("{}").split(",")[0].strip()
            if not low or int(low) == 0:
                item = ("maybe", item)
            i += 1
        elif kind == "op" and val in "~&":  # lexeme operators (negation, and): their parts are leaves
            nxt, i = _item(toks, i + 1)
            item = ("leaf", "op")
        else:
            break
    return item, i


def grammar_unproductive(text: str) -> str | None:
    """Why the Lark grammar's start rule has no finite string (every way through it recurses forever), or
    None when it has one, or when this reader does not follow the grammar's syntax (llguidance decides)."""
    try:
        rules = _lark_rules(text)
    except (_Unknown, ValueError, IndexError):
        return None
    if "start" not in rules:
        return None
    known: set[str] = set()

    def ok(node: tuple) -> bool:
        kind = node[0]
        if kind == "leaf":
            if node[1].startswith("{"):  # an embedded %json schema
                try:
                    return schema_unsatisfiable(json.loads(node[1])) is None
                except (ValueError, RecursionError):
                    return True
            return True
        if kind == "maybe":
            return True
        if kind == "ref":
            return node[1] in known or node[1] not in rules
        if kind == "seq":
            return all(ok(x) for x in node[1])
        return any(ok(x) for x in node[1])  # alt

    changed = True
    while changed:
        changed = False
        for name, bodies in rules.items():
            if name not in known and any(ok(b) for b in bodies):
                known.add(name)
                changed = True
    if "start" in known:
        return None
    stuck = sorted(n for n in rules if n not in known)
    return (f"the grammar has no finite string: rule{'s' if len(stuck) > 1 else ''} "
            f"{', '.join(repr(n) for n in stuck[:4])} never end{'s' if len(stuck) == 1 else ''} "
            "(every alternative recurses)")
