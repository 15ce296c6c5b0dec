"""What `qwen-edge run` does once its options are parsed: one prompt, or an interactive chat on stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..strict_json import dumps_report
from .generate import Result, TextStream


def run_prompt(folder: Path, load: dict[str, Any], options: dict[str, Any], *, prompt: str,
               system: str | None, raw: bool, as_json: bool, stats: bool) -> None:
    from .model import Model
    model = Model.load(folder, **load)
    if raw or model.template.source is None:
        if system is not None:
            from ..errors import QwenEdgeError
            raise QwenEdgeError("--system needs the chat template (it cannot be used with --raw)")
        p: Any = prompt
    else:
        p = ([{"role": "system", "content": system}] if system is not None else []) + \
            [{"role": "user", "content": prompt}]
    _show(model.stream(p, **options), as_json, stats)


def run_chat(folder: Path, load: dict[str, Any], options: dict[str, Any], *, system: str | None,
             first: str | None, as_json: bool, stats: bool) -> bool:
    """One user message per stdin line; /reset starts over, /exit (or end of input) quits.

    A line that cannot be sent (invalid UTF-8, a conversation that no longer fits) prints one `error:`
    line and the chat goes on; returns True when that happened (the command then exits with 2).
    """
    from ..errors import QwenEdgeError
    from .model import Model
    from .template import decode_utf8
    model = Model.load(folder, **load)
    chat = model.chat(system=system, **{k: v for k, v in options.items() if v is not None})
    tty = sys.stdin.isatty()
    pending = [first] if first else []
    refused = False
    n = 0
    while True:
        try:
            if pending:
                line = pending.pop()
            else:
                if tty:
                    print("> ", end="", file=sys.stderr, flush=True)
                raw = sys.stdin.buffer.readline()
                if not raw:
                    break
                n += 1
                line = decode_utf8(raw, f"line {n}").rstrip("\r\n")
            if not line.strip():
                continue
            if line.strip() in ("/exit", "/quit"):
                break
            if line.strip() == "/reset":
                chat.reset(system)
                continue
            _show(chat.send(line), as_json, stats)
        except QwenEdgeError as e:
            print(f"error: {e} (not sent; the chat goes on)", file=sys.stderr, flush=True)
            refused = True
    return refused


def _show(stream: TextStream, as_json: bool, stats: bool) -> Result:
    if as_json:
        stream.read()
        print(dumps_report(stream.result.to_dict(), ensure_ascii=False), flush=True)
    else:
        with stream:
            for piece in stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
    if stats:
        t = stream.result.timings
        print(f"[{t.prompt_tokens} prompt tokens in {t.prefill_s:.2f} s ({t.prefill_tps:.1f}/s), {t.new_tokens} new "
              f"at {t.decode_tps:.1f}/s, first token after {t.ttft_s * 1e3:.0f} ms, "
              f"{stream.result.finish_reason}]", file=sys.stderr)
        if t.speculative:
            sp = t.speculative
            print(f"[speculative: {sp['tokens_per_pass']:.2f} tokens a forward pass, {sp['accepted']} of "
                  f"{sp['proposed']} proposals accepted]", file=sys.stderr)
    return stream.result
