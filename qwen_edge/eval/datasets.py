"""Evaluation text: a file, a folder of text or source files, `enwiki` (prose), `python` (code; both offline,
held out from calibration) or `wikitext2` (online)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data.texts import BUILTIN, path_text
from ..errors import QwenEdgeError


@dataclass(frozen=True)
class Dataset:
    name: str  # what the user gave: enwiki, python, wikitext2 or a path
    text: str


def _wikitext2() -> str:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise QwenEdgeError("--dataset wikitext2 needs the `datasets` package (pip install datasets) and internet "
                            "access; offline, use --dataset enwiki or a text file") from None
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as e:  # network, hub or cache errors all mean the same thing to the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QwenEdgeError(f"cannot load wikitext2 through `datasets` (offline?): {first}; "
                            "use --dataset enwiki or a text file") from None
    return "\n\n".join(ds["text"])  # the usual convention for wikitext perplexity


def load_dataset(spec: str) -> Dataset:
    """The text named by `spec`; an empty text or an unknown name is a QwenEdgeError."""
    if spec in BUILTIN:
        from ..data.texts import builtin_text
        text = builtin_text(spec, "evaluation")  # quantize calibrates on the other articles / modules
    elif spec == "wikitext2":
        text = _wikitext2()
    else:
        text = path_text(spec, "dataset")
        if text is None:
            raise QwenEdgeError(f"dataset '{spec}' not found: give enwiki, python, wikitext2, a text file or a "
                                "folder of text files")
    if not text.strip():
        raise QwenEdgeError(f"dataset {spec} is empty")
    return Dataset(spec, text)
