"""Speculation under constraints on the real model: extraction into JSON (values copied from a ~1,500-token
document) and a required tool call quoting the prompt, with and without prompt lookup; fp32 drafted by int4
under the same schema; log-probabilities while speculating against plain decoding.

    python scripts/bench_structured_speculation.py --int4 out/int4 --fp32 out/fp32 [--rounds 3] [--json]

Each configuration runs alternately, `--rounds` times, in one process (this machine's speed drifts: compare
only within a run); medians of decode tokens/s (the reply's tokens over the time from the first token)
and of end-to-end seconds. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

TEAM = [("Amara Okafor", "amara.okafor@northwind.example", "lead engineer", "Lagos"),
        ("Bruno Ferreira", "bruno.ferreira@northwind.example", "data scientist", "Porto"),
        ("Chen Wei", "chen.wei@northwind.example", "site reliability engineer", "Chengdu"),
        ("Dagny Lindqvist", "dagny.lindqvist@northwind.example", "product manager", "Uppsala"),
        ("Esteban Morales", "esteban.morales@northwind.example", "frontend developer", "Valparaiso"),
        ("Farah Haddad", "farah.haddad@northwind.example", "security analyst", "Amman"),
        ("Gustav Brandt", "gustav.brandt@northwind.example", "backend developer", "Leipzig"),
        ("Hana Sato", "hana.sato@northwind.example", "designer", "Sapporo")]
FILLER = ("The migration moves the billing service from the old cluster to the new one in three stages. "
          "Each stage is rehearsed in staging first, with a rollback plan written down before anyone touches "
          "production, and the on-call rotation is doubled for the week of each cut-over. ")


def document() -> str:
    parts = ["Project memo: Northwind billing migration (project code NW-2291), due 2027-03-15.", ""]
    for i, (name, email, role, city) in enumerate(TEAM):
        parts.append(f"{name} joins as {role}, working from {city}; reach them at {email}. " + FILLER * (1 + i % 2))
    parts.append(FILLER * 4)
    return "\n".join(parts)


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["project", "code", "due", "team"],
          "properties": {"project": {"type": "string"}, "code": {"type": "string", "pattern": "^NW-[0-9]{4}$"},
                         "due": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
                         "team": {"type": "array", "minItems": 8, "maxItems": 8, "items": {
                             "type": "object", "additionalProperties": False,
                             "required": ["name", "email", "role", "city"],
                             "properties": {k: {"type": "string"} for k in ("name", "email", "role", "city")}}}}}
TOOLS = [{"type": "function", "function": {"name": "send_email", "description": "Email a team member",
                                           "parameters": {"type": "object", "additionalProperties": False,
                                                          "required": ["to", "subject", "body"],
                                                          "properties": {"to": {"type": "string"},
                                                                         "subject": {"type": "string"},
                                                                         "body": {"type": "string"}}}}}]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--int4", required=True, type=Path)
    ap.add_argument("--fp32", type=Path)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.rounds < 1:
        sys.exit("error: --rounds must be at least 1")
    import jsonschema

    from qwen_edge import Model
    from qwen_edge.errors import QwenEdgeError
    try:
        plain = Model.load(a.int4, threads=a.threads, max_length=4096)
        lookup = Model.load(a.int4, threads=a.threads, max_length=4096, lookup=8)
    except QwenEdgeError as e:
        sys.exit(f"error: {e}")
    doc = document()
    extract = [{"role": "user", "content": doc + "\n\nExtract the project, its code, the due date and every team "
                                               "member (name, email, role, city) as JSON."}]
    mail = [{"role": "user", "content": doc + "\n\nEmail Farah Haddad (farah.haddad@northwind.example) with the "
                                            "subject 'NW-2291 security review' and tell her the migration is due "
                                            "2027-03-15 and the on-call rotation is doubled."}]
    print(f"document: {len(plain.encode(doc))} tokens", file=sys.stderr)
    jobs = {"extract": dict(prompt=extract, json_schema=SCHEMA),
            "tool call": dict(prompt=mail, tools=TOOLS, tool_choice="required")}
    rows: dict[str, dict[str, list]] = {}
    texts: dict[tuple, list] = {}
    for r in range(a.rounds):
        for job, kw in jobs.items():
            for name, m in (("plain", plain), ("lookup 8", lookup)):
                kw2 = dict(kw)
                prompt = kw2.pop("prompt")
                t = time.perf_counter()
                res = m.complete(prompt, temperature=0, max_new_tokens=600, **kw2)
                secs = time.perf_counter() - t
                if job == "extract":
                    jsonschema.validate(json.loads(res.text), SCHEMA)
                else:
                    assert res.tool_calls, res.text
                    json.loads(res.tool_calls[0]["function"]["arguments"])
                d = rows.setdefault(f"{job} / {name}", {"tps": [], "secs": [], "tokens": []})
                d["tps"].append(res.timings.decode_tps)
                d["secs"].append(secs)
                d["tokens"].append(len(res.tokens))
                texts.setdefault((job, name), []).append(res.tokens)
                sp = res.timings.speculative
                print(f"round {r + 1} {job} / {name}: {len(res.tokens)} tokens, {res.timings.decode_tps:.1f} tok/s"
                      + (f", {sp['tokens_per_pass']:.2f} tokens a pass" if sp else ""), file=sys.stderr)
    out = {k: {"decode_tps": statistics.median(v["tps"]), "seconds": statistics.median(v["secs"]),
               "tokens": v["tokens"][0]} for k, v in rows.items()}
    for job in jobs:
        out[f"{job} / lookup 8"]["speedup"] = out[f"{job} / lookup 8"]["decode_tps"] / out[f"{job} / plain"]["decode_tps"]
        out[f"{job} / lookup 8"]["same_tokens_as_plain"] = texts[(job, "lookup 8")][0] == texts[(job, "plain")][0]
    if a.fp32 is not None:  # fp32 drafted by int4 under the schema: exact, and faster
        f_plain = Model.load(a.fp32, threads=a.threads, max_length=4096)
        f_spec = Model.load(a.fp32, threads=a.threads, max_length=4096, draft=plain, draft_tokens=6)
        want = f_plain.complete(extract, json_schema=SCHEMA, temperature=0, max_new_tokens=600, logprobs=2)
        got = f_spec.complete(extract, json_schema=SCHEMA, temperature=0, max_new_tokens=600, logprobs=2)
        lp = max(abs(x.logprob - y.logprob) for x, y in zip(want.logprobs, got.logprobs))
        out["fp32 extract / plain"] = {"decode_tps": want.timings.decode_tps, "tokens": len(want.tokens)}
        out["fp32 extract / int4 draft"] = {"decode_tps": got.timings.decode_tps, "tokens": len(got.tokens),
                                            "same_tokens_as_plain": got.tokens == want.tokens,
                                            "speedup": got.timings.decode_tps / want.timings.decode_tps,
                                            "max_logprob_diff": lp}
    if a.json:
        print(json.dumps(out, indent=1))
        return
    print("| run | tokens | decode tok/s (median) | speedup | same tokens as plain |")
    print("|---|---|---|---|---|")
    for k, v in out.items():
        print(f"| {k} | {v['tokens']} | {v['decode_tps']:.1f} | {v.get('speedup', 1.0):.2f}x | "
              f"{v.get('same_tokens_as_plain', '-')} |")


if __name__ == "__main__":
    main()
