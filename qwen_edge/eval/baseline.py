"""A baseline file: the metrics of the last accepted run per model, so CI can gate on changes
(`ppl_vs_baseline<=1%`). `--update-baseline` rewrites it after a run whose gates all hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import QwenEdgeError
from ..outputs import Staged
from ..strict_json import dumps_report

SCHEMA = "qwen-edge-eval-baseline"
SCHEMA_VERSION = 1
KEPT = ("ppl", "ppl_se", "nll_mean", "kl_mean", "kl_p99", "top1", "ppl_increase")


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        b = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise QwenEdgeError(f"baseline {path} not found: run once with --update-baseline to create it") from None
    except (OSError, json.JSONDecodeError) as e:
        raise QwenEdgeError(f"cannot read baseline {path}: {e}") from None
    if not isinstance(b, dict) or b.get("schema") != SCHEMA:
        raise QwenEdgeError(f"{path} is not a qwen-edge eval baseline")
    return b


def compare(b: dict[str, Any], path: str, run: dict[str, Any], model: str, metrics: dict[str, Any]) -> dict[str, float]:
    """The *_vs_baseline metrics of `model`; errors when the baseline was made on other tokens or lacks it."""
    for key in ("tokens_sha256", "ctx", "stride"):
        if b.get("run", {}).get(key) != run.get(key):
            raise QwenEdgeError(f"baseline {path} was made with another {key} ({b.get('run', {}).get(key)!s:.12} "
                                f"vs {run.get(key)!s:.12}); refresh it with --update-baseline")
    prev = b.get("models", {}).get(model)
    if prev is None:
        raise QwenEdgeError(f"baseline {path} has no entry for model '{model}'; refresh it with --update-baseline")
    out = {"ppl_vs_baseline": metrics["ppl"] / prev["ppl"] - 1.0}
    for k in ("kl_mean", "top1"):
        if k in metrics and k in prev:
            out[f"{k}_vs_baseline"] = metrics[k] - prev[k]
    return out


def write(path: str | Path, run: dict[str, Any], models: dict[str, dict[str, Any]], old: dict | None) -> None:
    keep = {k: run[k] for k in ("dataset", "tokens_sha256", "ctx", "stride", "n_tokens")}
    entries = dict((old or {}).get("models", {})) if old and old.get("run", {}).get("tokens_sha256") == run["tokens_sha256"] else {}
    entries.update({m: {k: v[k] for k in KEPT if k in v} for m, v in models.items()})
    data = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "run": keep, "models": entries}
    # --update-baseline asked for this rewrite; it still replaces only a baseline file (or creates one)
    with Staged(path, force=True, is_ours=_is_baseline, kind="file", what="--baseline file") as tmp:
        try:
            tmp.write_text(dumps_report(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        except OSError as e:
            raise QwenEdgeError(f"cannot write baseline {path}: {e.strerror or e}") from None


def _is_baseline(path: Path) -> bool:
    try:
        load(path)
        return True
    except QwenEdgeError:
        return False
