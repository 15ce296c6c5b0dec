"""Named texts and a user's files, read the same way for calibration (quantize) and evaluation (eval).

Built in: `enwiki` (real prose: articles 1-60 calibrate, 61-100 evaluate) and `python` (real code: two
disjoint sets of standard-library modules, data/python_source.py). A path is a UTF-8 file, or a folder
whose text and source files (TEXT_SUFFIXES, hidden ones skipped) are joined in sorted order.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import QwenEdgeError

BUILTIN = ("enwiki", "python")
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".pyi", ".js", ".mjs", ".ts", ".java", ".c", ".h", ".cc", ".cpp",
                 ".hpp", ".go", ".rs", ".rb", ".sh", ".sql", ".html", ".css", ".json", ".jsonl", ".yaml", ".toml")


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QwenEdgeError(f"{path} is not UTF-8 text") from None
    except OSError as e:
        raise QwenEdgeError(f"cannot read {path}: {e.strerror or e}") from None


def folder_files(p: Path) -> list[Path]:
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
                  and not any(part.startswith(".") for part in f.relative_to(p).parts))


def builtin_text(name: str, split: str) -> str:
    if name == "enwiki":
        from .enwiki import enwiki_text
        return enwiki_text(split=split)
    if name == "python":
        from .python_source import python_text
        return python_text(split)
    raise ValueError(name)


def path_text(spec: str, what: str) -> str | None:
    """The text of a file or folder `spec`, or None when no such path exists."""
    p = Path(spec)
    if p.is_file():
        return read_utf8(p)
    if p.is_dir():
        files = folder_files(p)
        if not files:
            raise QwenEdgeError(f"{what} folder {p} has no text or source files ({', '.join(TEXT_SUFFIXES[:5])}, ...)")
        return "\n\n".join(read_utf8(f) for f in files)
    return None
