"""Chat templates: the artifact's own Jinja template when jinja2 is importable, else built-in ChatML.

jinja2 renders exactly what transformers' `apply_chat_template` renders (same sandbox settings and
helpers). Without jinja2 (an app that ships only onnxruntime, numpy and tokenizers) the built-in
renderer writes Qwen's ChatML, including the default system message the template carries (Qwen2.5:
"You are Qwen, created by Alibaba Cloud. You are a helpful assistant."), found in the template text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import InputError, QwenEdgeError

# A literal default system turn inside the template source, e.g.
# {{- '<|im_start|>system\nYou are Qwen, ...<|im_end|>\n' }}  (\n is a Jinja string escape there)
_DEFAULT_SYSTEM = re.compile(r"""<\|im_start\|>system\\n([^'"+{}]*?)<\|im_end\|>""")


def load_template(folder: str | Path) -> str | None:
    """The chat template text: tokenizer_config.json's `chat_template`, else chat_template.jinja."""
    folder = Path(folder)
    cfg = folder / "tokenizer_config.json"
    if cfg.is_file():
        t = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(t, list):  # named templates: [{"name": "default", "template": "..."}, ...]
            t = next((x.get("template") for x in t if x.get("name") == "default"), None)
        if isinstance(t, str) and t.strip():
            return t
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return None


class ChatTemplate:
    """render(messages, add_generation_prompt=True) -> the prompt text."""

    def __init__(self, source: str | None, *, use_jinja: bool | None = None):
        self.source = source
        self._jinja = None
        if source is not None and use_jinja is not False:
            self._jinja = _compile(source, required=bool(use_jinja))
        m = _DEFAULT_SYSTEM.search(source or "")
        self.default_system = _unescape(m.group(1)) if m else None

    @property
    def engine(self) -> str:
        return "jinja2" if self._jinja is not None else "chatml"

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               **kwargs: Any) -> str:
        msgs = _check(messages)
        if self._jinja is not None:
            try:
                return self._jinja.render(messages=msgs, add_generation_prompt=add_generation_prompt,
                                          tools=kwargs.pop("tools", None), documents=None, **kwargs)
            except Exception as e:  # TemplateError, raise_exception(...) in the template, ...
                raise QwenEdgeError(f"the chat template failed: {e}") from None
        return self._chatml(msgs, add_generation_prompt, **kwargs)

    def _chatml(self, msgs: list[dict], add_generation_prompt: bool, **kwargs: Any) -> str:
        if kwargs.get("tools"):
            raise QwenEdgeError("tools need the model's Jinja chat template: pip install jinja2")
        out = []
        if (not msgs or msgs[0]["role"] != "system") and self.default_system is not None:
            out.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        for m in msgs:
            if m["role"] == "tool" or m.get("tool_calls"):
                raise QwenEdgeError("tool messages need the model's Jinja chat template: pip install jinja2")
            out.append(f"<|im_start|>{m['role']}\n{m.get('content') or ''}<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)


def check_text(text: str, what: str = "the prompt") -> str:
    """`text` if it is valid Unicode; a clear error for undecodable bytes.

    Python hands undecodable argv / stdin bytes over as lone surrogates (U+DC80..U+DCFF); tokenizers
    cannot encode them. They are refused, not replaced: a silently altered prompt is a wrong answer.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        ch = ord(text[e.start])
        byte = f"byte 0x{ch - 0xDC00:02x}" if 0xDC80 <= ch <= 0xDCFF else f"U+{ch:04X}"
        raise InputError(f"{what} is not valid UTF-8 ({byte} at character {e.start})") from None
    return text


def decode_utf8(data: bytes, what: str) -> str:
    """Bytes from stdin or a socket as text; invalid UTF-8 is an error naming the offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} is not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start})") from None


def _check(messages: Sequence[Mapping[str, Any]]) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise QwenEdgeError("messages must be a list of {'role': ..., 'content': ...} dicts")
    out = []
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m:
            raise QwenEdgeError(f"a chat message must be a dict with 'role' and 'content', got {m!r}")
        if m["role"] not in ("system", "user", "assistant", "tool"):
            raise QwenEdgeError(f"unknown chat role {m['role']!r}: use system, user, assistant or tool")
        content = m.get("content")
        if content is not None and not isinstance(content, str):
            raise QwenEdgeError(f"chat message content must be a string, got {type(content).__name__}")
        if content is not None:
            check_text(content, f"a {m['role']} message")
        out.append(dict(m))
    return out


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


def _compile(source: str, required: bool) -> Any:
    """Compile like transformers does (sandboxed, trim_blocks, lstrip_blocks, its helpers)."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        if required:
            raise QwenEdgeError("use_jinja=True needs jinja2: pip install jinja2") from None
        return None

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt: str) -> str:
        from datetime import datetime
        return datetime.now().strftime(fmt)

    class Generation(jinja2.ext.Extension):  # transformers' {% generation %} block: render its body as is
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, "jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise QwenEdgeError(f"the model's chat template does not compile: {e}") from None
