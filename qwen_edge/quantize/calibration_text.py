"""Calibration data: the text (enwiki articles 1-60, or a user's file) as token ids, cut into windows.

Evaluation reads enwiki articles 61-100, so a quantized model is never scored on its calibration text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import QwenEdgeError


def _tokenizer(write_tokenizer: Callable[[Path], None]):
    import tempfile

    from tokenizers import Tokenizer
    with tempfile.TemporaryDirectory() as d:
        write_tokenizer(Path(d))
        return Tokenizer.from_file(str(Path(d) / "tokenizer.json"))


def calibration_text(name: str) -> str:
    if name == "enwiki":
        from ..data.enwiki import enwiki_text
        return enwiki_text(split="calibration")  # evaluation reads the other articles
    p = Path(name)
    if not p.is_file():
        raise QwenEdgeError(f"calibration must be 'enwiki' or a text file; no such file: {name}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QwenEdgeError(f"cannot read calibration file {p}: {e}") from None
    if not text.strip():
        raise QwenEdgeError(f"calibration file {p} has no text")
    return text


def calibration_tokens(name: str, write_tokenizer: Callable[[Path], None]) -> np.ndarray:
    return np.asarray(_tokenizer(write_tokenizer).encode(calibration_text(name)).ids, dtype=np.int64)


def sample_windows(ids: np.ndarray, samples: int, seq_len: int, seed: int) -> np.ndarray:
    """`samples` distinct, non-overlapping windows of `seq_len` tokens, chosen by `seed`: [samples, seq_len]."""
    if samples < 1 or seq_len < 2:
        raise QwenEdgeError("--samples must be >= 1 and --seq-len >= 2")
    n = len(ids) // seq_len
    if n < samples:
        raise QwenEdgeError(f"the calibration text has {len(ids)} tokens: not enough for {samples} samples of "
                            f"{seq_len} tokens; lower --samples or --seq-len")
    pick = np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))
    return ids[: n * seq_len].reshape(n, seq_len)[pick]
