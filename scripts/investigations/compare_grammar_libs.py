"""llguidance vs xgrammar vs outlines-core on Qwen2.5's tokenizer: setup, compile time, mask time per token, and
which JSON-schema features each compiles (docs/runtime.md). Needs `pip install llguidance xgrammar outlines-core`
and the bench's int4 folder (its tokenizer.json): python scripts/investigations/compare_grammar_libs.py"""
import json, sys, time, statistics
import numpy as np
SCHEMA = {  # tests/test_constrained.py's schema when this was measured (frozen with the figures it produced)
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
from pathlib import Path
folder = Path.home() / ".cache/qwen-edge/bench/quant/speed-410MiB"
tok_json = (folder / "tokenizer.json").read_text()
V = 151936
from tokenizers import Tokenizer
tk = Tokenizer.from_str(tok_json)
doc = {"name": "Alice", "age": 30, "score": 0.5, "role": "user", "tags": ["a", "bc"], "address": {"city": "Paris", "zip": 75001}}
text = json.dumps(doc, indent=2)
ids = tk.encode(text, add_special_tokens=False).ids
EOS = 151645
res = {}
# --- llguidance
import llguidance as l, llguidance.numpy as ln
t = time.perf_counter(); lt = l.LLTokenizer(tok_json, n_vocab=V, eos_token=EOS); tok_s = time.perf_counter() - t
t = time.perf_counter(); g = l.LLMatcher.grammar_from_json_schema(SCHEMA); m = l.LLMatcher(lt, g); comp = time.perf_counter() - t
bm = ln.allocate_token_bitmask(1, V); ts = []
for i in ids:
    t = time.perf_counter(); ln.fill_next_token_bitmask(m, bm, 0); ts.append(time.perf_counter() - t)
    assert m.consume_token(i), m.get_error()
res["llguidance"] = (tok_s, comp, statistics.median(ts), max(ts))
# --- xgrammar
import xgrammar as xg
from transformers import PreTrainedTokenizerFast
hf = PreTrainedTokenizerFast(tokenizer_object=tk)
t = time.perf_counter(); info = xg.TokenizerInfo.from_huggingface(hf, vocab_size=V, stop_token_ids=[EOS]); tok_s = time.perf_counter() - t
t = time.perf_counter(); comp_g = xg.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA)); mm = xg.GrammarMatcher(comp_g); comp = time.perf_counter() - t
bm = xg.allocate_token_bitmask(1, V); ts = []
for i in ids:
    t = time.perf_counter(); mm.fill_next_token_bitmask(bm); ts.append(time.perf_counter() - t)
    assert mm.accept_token(i)
res["xgrammar"] = (tok_s, comp, statistics.median(ts), max(ts))
# --- outlines-core
import outlines_core as oc
from outlines_core.json_schema import build_regex_from_schema
# outlines-core builds its Vocabulary from token bytes: Qwen's byte-level token strings mapped back
vocab = {}
from outlines_core import Vocabulary, Index, Guide
# GPT-2 byte-level mapping
bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
cs = bs[:]; n = 0
for b in range(256):
    if b not in bs: bs.append(b); cs.append(256 + n); n += 1
u2b = {chr(c): b for b, c in zip(bs, cs)}
for tok, i in tk.get_vocab(with_added_tokens=False).items():
    if i == EOS: continue
    try: vocab.setdefault(bytes(u2b[ch] for ch in tok), []).append(i)
    except KeyError: pass
t = time.perf_counter(); V2 = Vocabulary(EOS, {k: v for k, v in vocab.items()}); tok_s = time.perf_counter() - t
t = time.perf_counter(); rx = build_regex_from_schema(json.dumps(SCHEMA)); idx = Index(rx, V2); comp = time.perf_counter() - t
guide = Guide(idx); ts = []
compact_ids = tk.encode(json.dumps(doc, separators=(",", ":")), add_special_tokens=False).ids
ok = True
for i in compact_ids:
    t = time.perf_counter(); allowed = guide.get_tokens(); ts.append(time.perf_counter() - t)
    try: guide.advance(i)
    except Exception as e: ok = False; break
res["outlines-core"] = (tok_s, comp, statistics.median(ts), max(ts))
for k, (a, b, c, d) in res.items():
    print(f"| {k} | {a:.2f} s | {b*1e3:.0f} ms | {c*1e6:.0f} us | {d*1e3:.2f} ms |")
print("outlines pretty-printed whitespace? compact doc advanced fully:", ok)

# --- schema coverage: compiled (or refused) by each
cases = {
 "pattern": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
 "format date-time": {"type": "string", "format": "date-time"},
 "anyOf": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 3}]},
 "recursive $ref": {"$defs": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}}, "required": ["v"]}}, "$ref": "#/$defs/node"},
 "minItems/maxItems": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4},
 "uniqueItems": {"type": "array", "items": {"type": "integer"}, "uniqueItems": True},
 "multipleOf": {"type": "integer", "multipleOf": 5},
 "exclusiveMinimum": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
 "const": {"const": "fixed"},
 "allOf": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]},
 "patternProperties": {"type": "object", "patternProperties": {"^x-": {"type": "integer"}}},
 "minProperties": {"type": "object", "minProperties": 1},
}
V, EOS = 151936, 151645
import xgrammar as xg
from transformers import PreTrainedTokenizerFast
comp = xg.GrammarCompiler(xg.TokenizerInfo.from_huggingface(PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok_json)), vocab_size=V, stop_token_ids=[EOS]))
from outlines_core.json_schema import build_regex_from_schema
print("| schema feature | llguidance | xgrammar | outlines-core |\n|---|---|---|---|")
for name, sch in cases.items():
    row = []
    try:
        g = l.LLMatcher.grammar_from_json_schema(sch); e = l.LLMatcher.validate_grammar(g, lt); row.append("yes" if not e else "no")
    except Exception as ex: row.append("no")
    try: comp.compile_json_schema(json.dumps(sch)); row.append("yes")
    except Exception as ex: row.append("no")
    try: build_regex_from_schema(json.dumps(sch)); row.append("yes")
    except Exception as ex: row.append("no")
    print(f"| {name} | " + " | ".join(row) + " |")
