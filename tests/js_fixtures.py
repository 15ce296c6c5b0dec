"""Fixtures for the JavaScript package's tests: tiny Qwen2 and Qwen3 artifacts (fp32, int4; Qwen3 also fp16) and the
golden outputs the Python runtime gives on them (greedy tokens, streamed pieces, chat template renders,
a two-turn chat), so `node --test` checks the JavaScript runtime against Python's.

    python tests/js_fixtures.py js/test/.fixtures          # what `npm test` runs first (if missing)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES_VERSION = 2  # bump when the fixtures change: js/scripts/ensure-fixtures.js rebuilds older ones
# The last two outgrow the Node cache's first capacity of 256 positions: 238 prompt tokens whose reply
# crosses it while decoding, and 280 that cross it in the prompt.
PROMPTS = ["The quick brown fox", "def main():\n", "naïve café 你好 👋", [{"role": "user", "content": "Hi there"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rust is"}],
           "def main():\n    return 42\n" * 34, "def main():\n    return 42\n" * 40]
RENDERS = [[{"role": "user", "content": "hello"}],
           [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"}, {"role": "user", "content": "c <|im_start|> ünï"}]]
TURNS = ["Hello there", "def main", "the lazy dog"]


def build(out: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_models import make_tiny

    from qwen_edge import Model
    from qwen_edge.export.writer import export
    from qwen_edge.quantize.api import quantize
    out.mkdir(parents=True, exist_ok=True)
    golden = {}
    for kind in ("qwen2", "qwen3"):
        _, hf = make_tiny(out / f"hf-{kind}", kind, tie_word_embeddings=kind == "qwen3", max_position_embeddings=512)
        arts = {f"{kind}-fp32": lambda d: export(str(hf), d, max_length=512, progress=False, force=True),
                f"{kind}-int4": lambda d: quantize(str(hf), d, method="rtn", bits=4, group_size=32, token_group_size=32,
                                                   max_length=512, progress=False, force=True)}
        if kind == "qwen3":  # the browser's recommended file: fp16 weights on wasm's fp32 kernels
            arts[f"{kind}-fp16"] = lambda d: export(str(hf), d, dtype="fp16", max_length=512, progress=False, force=True)
        for name, make in arts.items():
            make(out / name)
            m = Model.load(out / name)
            g = {"generate": [], "renders": [], "chat": []}
            for p in PROMPTS:
                s = m.stream(p, max_new_tokens=24, temperature=0.0)
                pieces = list(s)
                g["generate"].append({"prompt": p, "max_new_tokens": 24, "tokens": s.result.tokens, "pieces": pieces,
                                      "text": s.result.text, "finish_reason": s.result.finish_reason,
                                      "prompt_ids": m.prompt_ids(p)})
            for msgs in RENDERS:
                g["renders"].append({"messages": msgs, "text": m.render(msgs)})
            chat = m.chat(system="Be brief.", max_new_tokens=12, temperature=0.0)
            for t in TURNS:
                reply = chat.say(t)
                g["chat"].append({"user": t, "reply": reply, "tokens": chat.last.tokens,
                                  "cached_tokens": chat.last.timings.cached_tokens})
            golden[name] = g
    (out / "golden.json").write_text(json.dumps(golden, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "VERSION").write_text(str(FIXTURES_VERSION))


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "js" / "test" / ".fixtures")
    current = (target / "VERSION").read_text().strip() if (target / "VERSION").exists() else ""
    if (target / "golden.json").exists() and current == str(FIXTURES_VERSION) and "--force" not in sys.argv:
        print(f"fixtures already in {target}")
    else:
        build(target)
        print(f"fixtures written to {target}")
