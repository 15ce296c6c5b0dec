"""Calibration data: texts as token ids, cut into windows, an equal share of windows from each source.

The default is `mix`: enwiki prose (articles 1-60) and Python source (thirty standard-library modules),
half the windows each. Calibrated on prose alone, GPTQ's Hessians, the sensitivity that places int8 blocks
and the refit all fit one domain; on code the 1.5B file was twice as far from fp32 as on prose while
llama.cpp's IQ4_NL + imatrix held (issue 30). These are Coder models: their users send both. A user's own
domain is `--calibration FILE_OR_FOLDER`, repeatable (each source gets an equal share).
Evaluation reads enwiki articles 61-100 and ten other modules, so a model is never scored on its calibration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.texts import BUILTIN, builtin_text, path_text
from ..errors import InputError, QwenEdgeError

DEFAULT = "mix"
MIXES = {"mix": ("enwiki", "python")}


def sources(calibration: str | Sequence[str]) -> list[str]:
    """The sources named by `calibration` (a name, a path, or several), `mix` expanded; refuses unknown ones."""
    given = [calibration] if isinstance(calibration, str) else list(calibration)
    if not given:
        raise InputError("--calibration needs at least one source")
    out: list[str] = []
    for name in given:
        for s in MIXES.get(name, (name,)):
            if s not in BUILTIN and not Path(s).exists():
                raise InputError(f"calibration must be {', '.join((*MIXES, *BUILTIN))}, a text file or a folder; "
                                 f"no such file: {s}")
            if s not in out:
                out.append(s)
    return out


def label(calibration: str | Sequence[str]) -> str:
    """How a manifest records the calibration: the names joined by '+'."""
    return "+".join(sources(calibration))


def _tokenizer(write_tokenizer: Callable[[Path], None]):
    import tempfile

    from tokenizers import Tokenizer
    with tempfile.TemporaryDirectory() as d:
        write_tokenizer(Path(d))
        return Tokenizer.from_file(str(Path(d) / "tokenizer.json"))


def calibration_text(name: str) -> str:
    """One source's calibration text (never the evaluation split of a built-in)."""
    text = builtin_text(name, "calibration") if name in BUILTIN else path_text(name, "calibration")
    if text is None:
        raise QwenEdgeError(f"calibration must be {', '.join((*MIXES, *BUILTIN))}, a text file or a folder; "
                            f"no such file: {name}")
    if not text.strip():
        raise QwenEdgeError(f"calibration source {name} has no text")
    return text


def calibration_tokens(name: str, write_tokenizer: Callable[[Path], None]) -> np.ndarray:
    return np.asarray(_tokenizer(write_tokenizer).encode(calibration_text(name)).ids, dtype=np.int64)


def calibration_windows(calibration: str | Sequence[str], write_tokenizer: Callable[[Path], None], samples: int,
                        seq_len: int, seed: int) -> np.ndarray:
    """[samples, seq_len] token ids: an equal share of windows from each source (the first ones take the
    remainder), each share chosen by `seed` from its own text."""
    names = sources(calibration)
    if samples < len(names):
        raise InputError(f"--samples {samples} is fewer than the {len(names)} calibration sources "
                         f"({', '.join(names)}): each needs a window")
    tok = _tokenizer(write_tokenizer)
    parts = []
    for i, name in enumerate(names):
        n = samples // len(names) + (i < samples % len(names))
        ids = np.asarray(tok.encode(calibration_text(name)).ids, dtype=np.int64)
        try:
            parts.append(sample_windows(ids, n, seq_len, seed))
        except QwenEdgeError as e:
            raise QwenEdgeError(f"calibration source {name}: {e}") from None
    return np.concatenate(parts)


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
