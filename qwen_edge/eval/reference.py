"""Saved reference logits: a compact .npz (top-k log-probs as float32 + int32 ids, the log of the remaining
mass, the target's log-prob) with what it belongs to: dataset tokens, window plan and tokenizer."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QwenEdgeError
from ..outputs import Staged, check_target
from .score import Compact

SCHEMA = "qwen-edge-eval-reference"
SCHEMA_VERSION = 1
_ARRAYS = ("ids", "logp", "rest", "nll")

# What must match between a reference and a run, with the words used in the error.
MATCH = (("tokenizer_sha256", "tokenizer (tokenizer.json sha256)"), ("ctx", "window (--ctx)"),
         ("stride", "stride (--stride)"), ("n_tokens", "number of tokens (--max-tokens)"),
         ("tokens_sha256", "dataset tokens (--dataset)"), ("n_scored", "number of scored tokens"))


@dataclass
class Reference:
    compact: Compact
    meta: dict[str, Any]  # dataset, tokens_sha256, n_tokens, n_scored, ctx, stride, tokenizer_sha256, vocab_size, top_k, model
    source: str = ""      # where it came from, for messages


def is_reference(path: Path) -> bool:
    """A file that --save-reference wrote (what --force may replace)."""
    try:
        load(path)
        return True
    except QwenEdgeError:
        return False


def check_output(path: str | Path, *, force: bool, sources: list[Path]) -> None:
    check_target(Path(path), force=force, is_ours=is_reference, sources=sources, what="--save-reference file")


def save(ref: Reference, path: str | Path, *, force: bool = False) -> Path:
    path = Path(path)
    meta = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **ref.meta}
    c = ref.compact
    with Staged(path, force=force, is_ours=is_reference, kind="file", what="--save-reference file") as tmp:
        try:
            with open(tmp, "wb") as f:  # a file object keeps the name as given (np.savez would append .npz)
                np.savez_compressed(f, ids=c.ids.astype(np.int32), logp=c.logp.astype(np.float32),
                                    rest=c.rest.astype(np.float32), nll=c.nll.astype(np.float32),
                                    meta=np.array(json.dumps(meta, sort_keys=True)))
        except OSError as e:
            raise QwenEdgeError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def load(path: str | Path) -> Reference:
    path = Path(path)
    if not path.is_file():
        raise QwenEdgeError(f"reference {path} not found (give an artifact folder or a file from --save-reference)")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in _ARRAYS}
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError, EOFError, zipfile.BadZipFile) as e:
        raise QwenEdgeError(f"{path} is not a qwen-edge reference file ({type(e).__name__})") from None
    if meta.get("schema") != SCHEMA:
        raise QwenEdgeError(f"{path} is not a qwen-edge reference file")
    if int(meta.get("schema_version", 0)) > SCHEMA_VERSION:
        raise QwenEdgeError(f"{path} has reference format {meta['schema_version']}; this qwen-edge reads up to "
                            f"{SCHEMA_VERSION}: upgrade qwen-edge")
    n = len(arrays["nll"])
    if not (arrays["ids"].shape == arrays["logp"].shape and arrays["ids"].shape[0] == n == len(arrays["rest"])
            and n == int(meta.get("n_scored", -1))):
        raise QwenEdgeError(f"{path} is damaged: its arrays do not agree in length")
    c = Compact(arrays["ids"].astype(np.int32), arrays["logp"].astype(np.float32), arrays["rest"].astype(np.float32),
                arrays["nll"].astype(np.float64))
    return Reference(c, meta, str(path))


def check(ref: Reference, run: dict[str, Any], vocab_size: int, model: str) -> None:
    """A clear QwenEdgeError when `ref` was not made for this run's tokens, windows and tokenizer."""
    for key, words in MATCH:
        if ref.meta.get(key) != run.get(key):
            a, b = ref.meta.get(key), run.get(key)
            if key.endswith("sha256"):
                a, b = str(a)[:12], str(b)[:12]
            raise QwenEdgeError(f"reference {ref.source} does not match {model}: its {words} is {a}, "
                                f"this run's is {b}")
    if int(ref.compact.ids.max(initial=0)) >= vocab_size:
        raise QwenEdgeError(f"reference {ref.source} has token ids beyond {model}'s vocabulary ({vocab_size})")
