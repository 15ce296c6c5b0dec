"""Evaluation text: a text file, a folder of text files, `enwiki` (offline, pinned) or `wikitext2` (online)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import QwenEdgeError

TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Dataset:
    name: str  # what the user gave: enwiki, wikitext2 or a path
    text: str


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QwenEdgeError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise QwenEdgeError(f"cannot read {path}: {e.strerror or e}") from None


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
    if spec == "enwiki":
        from ..data.enwiki import enwiki_text
        text = enwiki_text(split="evaluation")  # quantize calibrates on the other articles
    elif spec == "wikitext2":
        text = _wikitext2()
    else:
        p = Path(spec)
        if p.is_file():
            text = _read(p)
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))
            if not files:
                raise QwenEdgeError(f"dataset folder {p} has no {' or '.join(TEXT_SUFFIXES)} files")
            text = "\n\n".join(_read(f) for f in files)
        else:
            raise QwenEdgeError(f"dataset '{spec}' not found: give enwiki, wikitext2, a text file or a folder "
                                "of text files")
    if not text.strip():
        raise QwenEdgeError(f"dataset {spec} is empty")
    return Dataset(spec, text)
