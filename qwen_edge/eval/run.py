"""The eval pipeline: validate everything up front, build (or load) the reference, score each model,
compute metrics, check baselines and gates. Returns the report as a dict (schema in reports.py)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from .. import __version__
from ..errors import QwenEdgeError
from . import baseline as B
from . import gates as G
from . import metrics as M
from . import reference as R
from . import windows as W
from .datasets import load_dataset
from .model import OnnxLM
from .score import TokenStats, score

DEFAULT_DATASET, DEFAULT_CTX, DEFAULT_MAX_TOKENS = "enwiki", 512, 32768  # ctx: or the shortest max_length
REPORT_SCHEMA, REPORT_VERSION = "qwen-edge-eval-report", 1


@dataclass
class EvalConfig:
    models: list[str]
    dataset: Optional[str] = None
    ctx: Optional[int] = None
    stride: Optional[int] = None
    max_tokens: Optional[int] = None     # None: the default (or the saved reference's); 0: the whole text
    reference: Optional[str] = None
    save_reference: Optional[str] = None
    top_k: int = 32
    gates: list[str] = field(default_factory=list)
    baseline: Optional[str] = None
    update_baseline: bool = False
    progress: bool = True
    threads: int = 0
    force: bool = False  # replace an existing --save-reference file (one of ours)
    verify: bool = True  # check each artifact's files against its manifest before scoring


def _labels(models: list[OnnxLM]) -> list[str]:
    names = [m.label for m in models]
    return [m.label if names.count(m.label) == 1 else str(m.folder) for m in models]


def method_text(ctx: int, stride: int) -> str:
    first = "the first token of every window after the first is not scored" if stride == ctx else \
        f"later windows give each scored token at least {ctx - stride} tokens of context"
    return (f"windows of up to {ctx} tokens starting every {stride} tokens, each run from an empty KV cache; "
            f"each token from the second on is scored once, by the first window holding it with context "
            f"({first}). Standard errors treat tokens as independent (delta method for exp).")


class _Tokens:
    """Tokenizes the text once per distinct tokenizer."""

    def __init__(self, text: str, max_tokens: Optional[int]):
        self.text, self.max_tokens, self.cache = text, max_tokens, {}

    def of(self, lm: OnnxLM) -> np.ndarray:
        if lm.tokenizer_sha not in self.cache:
            self.cache[lm.tokenizer_sha] = W.tokenize(lm.tokenizer(), self.text, self.max_tokens)
        return self.cache[lm.tokenizer_sha]


def _run_info(lm: OnnxLM, tokens: np.ndarray, wins: list[W.Window], ctx: int, stride: int,
              dataset: str) -> dict[str, Any]:
    return {"dataset": dataset, "tokens_sha256": W.fingerprint(tokens), "n_tokens": int(len(tokens)),
            "n_scored": int(sum(w.n_scored for w in wins)), "n_windows": len(wins), "ctx": ctx, "stride": stride,
            "tokenizer_sha256": lm.tokenizer_sha}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    # 1. everything that can be wrong with the input, before any model runs
    if not cfg.models:
        raise QwenEdgeError("give at least one model folder")
    if cfg.save_reference and len(cfg.models) != 1:
        raise QwenEdgeError("--save-reference takes exactly one model (the reference model)")
    if not 1 <= cfg.top_k <= 1024:
        raise QwenEdgeError(f"--top-k must be between 1 and 1024 (got {cfg.top_k})")
    if cfg.ctx is not None and cfg.ctx < 2:
        raise QwenEdgeError(f"--ctx must be at least 2 (got {cfg.ctx})")
    if cfg.stride is not None and cfg.stride < 1:
        raise QwenEdgeError(f"--stride must be at least 1 (got {cfg.stride})")
    gates = G.parse_all(cfg.gates, reference=cfg.reference is not None, baseline=cfg.baseline is not None)
    if cfg.save_reference:
        R.check_output(cfg.save_reference, force=cfg.force,
                       sources=[Path(m) for m in cfg.models] + ([Path(cfg.reference)] if cfg.reference else []))
    lms = [OnnxLM(m, cfg.threads, verify=cfg.verify) for m in cfg.models]
    ref_lm: Optional[OnnxLM] = None
    saved: Optional[R.Reference] = None
    if cfg.reference is not None:
        if Path(cfg.reference).is_dir():
            ref_lm = OnnxLM(cfg.reference, cfg.threads, verify=cfg.verify)
        else:
            saved = R.load(cfg.reference)
    need_baseline = any(G.METRICS[g.metric].needs == "baseline" for g in gates)
    base = B.load(cfg.baseline) if cfg.baseline and (need_baseline or Path(cfg.baseline).exists()) else None

    meta = saved.meta if saved else {}
    dataset = cfg.dataset or meta.get("dataset") or DEFAULT_DATASET
    all_lms = lms + ([ref_lm] if ref_lm else [])
    ctx = cfg.ctx or meta.get("ctx") or min([DEFAULT_CTX] + [lm.max_length for lm in all_lms])
    stride = cfg.stride or (meta.get("stride") if meta.get("ctx") == ctx else None) or ctx
    max_tokens = cfg.max_tokens if cfg.max_tokens is not None else meta.get("n_tokens", DEFAULT_MAX_TOKENS)
    if max_tokens is not None and max_tokens < 0:
        raise QwenEdgeError(f"--max-tokens must be positive (or 0 for the whole text); got {max_tokens}")
    for lm in all_lms:
        if ctx > lm.max_length:
            raise QwenEdgeError(f"--ctx {ctx} is longer than {lm.folder}'s max_length {lm.max_length}")
    data = load_dataset(dataset)
    toks = _Tokens(data.text, max_tokens or None)
    labels = _labels(lms)

    # 2. the reference: loaded, or computed once from a reference folder
    ref_info: Optional[dict[str, Any]] = None
    ref_stats: Optional[TokenStats] = None
    if ref_lm is not None:
        tokens = toks.of(ref_lm)
        wins = W.plan(len(tokens), ctx, stride)
        st = score(ref_lm.logits, tokens, wins, top_k=min(cfg.top_k, ref_lm.vocab_size - 1),
                   desc=f"reference {ref_lm.label}", progress=cfg.progress)
        info = _run_info(ref_lm, tokens, wins, ctx, stride, dataset)
        saved = R.Reference(st.compact, {**info, "vocab_size": ref_lm.vocab_size, "top_k": cfg.top_k,
                                         "model": str(ref_lm.folder)}, str(ref_lm.folder))
        ref_info = {"kind": "folder", "path": str(ref_lm.folder), "seconds": round(st.seconds, 2)}
        ref_stats = st
    elif saved is not None:
        ref_info = {"kind": "file", "path": str(cfg.reference), "model": saved.meta.get("model")}
    if saved is not None:
        assert ref_info is not None
        ref_info.update(top_k=int(saved.compact.ids.shape[1]), **M.perplexity(saved.compact.nll))

    # 3. every model
    results, gate_results, baseline_rows = [], [], {}
    for lm, label in zip(lms, labels):
        tokens = toks.of(lm)
        if len(tokens) < 2:
            raise QwenEdgeError(f"dataset {dataset} gives {len(tokens)} token(s) under {lm.folder}'s tokenizer; "
                                "at least 2 are needed")
        wins = W.plan(len(tokens), ctx, stride)
        info = _run_info(lm, tokens, wins, ctx, stride, dataset)
        if saved is not None:
            R.check(saved, info, lm.vocab_size, str(lm.folder))
        if ref_lm is not None and lm.folder.resolve() == ref_lm.folder.resolve():
            # the reference folder itself: the same deterministic run, already scored; its KL is 0 by definition
            n = len(ref_stats.nll)
            st = TokenStats(ref_stats.nll, np.zeros(n), np.ones(n, dtype=bool), seconds=ref_stats.seconds)
        else:
            st = score(lm.logits, tokens, wins, top_k=min(cfg.top_k, lm.vocab_size - 1) if cfg.save_reference else 0,
                       reference=saved.compact if saved else None, desc=f"eval {label}", progress=cfg.progress)
        metrics: dict[str, Any] = M.perplexity(st.nll)
        if saved is not None:
            metrics.update(M.against_reference(st.nll, saved.compact.nll, st.kl, st.top1))
        if base is not None:
            try:
                metrics.update(B.compare(base, str(cfg.baseline), info, label, metrics))
            except QwenEdgeError:
                if need_baseline:  # otherwise the comparison is shown only when it applies
                    raise
        gate_results += G.evaluate(gates, label, metrics)
        baseline_rows[label] = metrics
        results.append({
            "label": label, "path": str(lm.folder), "dtype": lm.manifest.get("dtype"),
            "quantization": lm.manifest.get("quantization"), "size_bytes": lm.size_bytes,
            "tokens_sha256": info["tokens_sha256"], "n_tokens": info["n_tokens"], "n_windows": info["n_windows"],
            "seconds": round(st.seconds, 2), "tokens_per_second": round(info["n_scored"] / st.seconds, 1)
            if st.seconds else None, "metrics": metrics})
        if cfg.save_reference:
            R.save(R.Reference(st.compact, {**info, "vocab_size": lm.vocab_size, "top_k": cfg.top_k,
                                            "model": str(lm.folder)}), cfg.save_reference, force=cfg.force)
            print(f"saved reference ({info['n_scored']} tokens, top-{cfg.top_k}) to {cfg.save_reference}",
                  file=sys.stderr)

    passed = all(r.passed for r in gate_results)
    first = results[0]
    run = {"dataset": dataset, "tokens_sha256": first["tokens_sha256"], "ctx": ctx, "stride": stride,
           "n_tokens": first["n_tokens"]}
    if cfg.update_baseline and cfg.baseline:
        if passed:
            B.write(cfg.baseline, run, baseline_rows, base)
            print(f"baseline {cfg.baseline} updated", file=sys.stderr)
        else:
            print(f"baseline {cfg.baseline} not updated: a gate failed", file=sys.stderr)
    return {
        "schema": REPORT_SCHEMA, "schema_version": REPORT_VERSION, "tool": f"qwen-edge {__version__}",
        "dataset": {"name": dataset, "chars": len(data.text), "max_tokens": max_tokens or None},
        "method": {"ctx": ctx, "stride": stride, "scoring": method_text(ctx, stride),
                   "kl": "KL(reference || model) per scored token over the reference's top-k tokens plus one bucket "
                         "for the rest (a lower bound of the full KL)"},
        "reference": ref_info,
        "models": results,
        "gates": [{"model": r.model, "gate": r.gate.text, "metric": r.gate.metric, "op": r.gate.op,
                   "threshold": r.gate.threshold, "value": r.value, "passed": r.passed, "margin": r.margin,
                   "message": r.message()} for r in gate_results],
        "passed": passed,
    }
