"""Real code text: Python source from the running interpreter's standard library, no download needed.

These are Coder models, and every quality figure used to be measured on prose alone: GPTQ fitted to
enwiki, the sensitivity measured on it, and the int8 blocks placed where prose needs them left a 1.5B
file twice as far from fp32 on Python source as on prose (issue 30). Every Python ships its standard
library as source, so code text is as available offline as the enwiki wheel.

Two disjoint sets of modules, as with enwiki's articles 1-60 / 61-100:
- "evaluation": the ten modules of the measurement that showed the gap (textwrap, json.decoder, functools,
  collections, argparse, dataclasses, pathlib, string, heapq, fractions), the first EVAL_CHARS
  characters of each (cut at a line end) so that the default 8k scored tokens cover all ten, not the
  first two;
- "calibration": thirty other modules, whole (about 400k tokens: far more than calibration samples).

The text is the installed Python's: figures are comparable between machines with the same Python
minor version (`version()` says which; reports record it).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from ..errors import QwenEdgeError

EVAL_MODULES = ("textwrap", "json.decoder", "functools", "collections", "argparse", "dataclasses", "pathlib",
                "string", "heapq", "fractions")
EVAL_CHARS = 3600  # ~900 tokens a module: the ten fill the default 8,192 evaluation tokens
CALIBRATION_MODULES = ("csv", "shutil", "tempfile", "inspect", "difflib", "enum", "logging", "subprocess",
                       "typing", "ast", "calendar", "statistics", "copy", "contextlib", "pprint", "zipfile",
                       "tarfile", "configparser", "gettext", "locale", "queue", "random", "datetime", "tokenize",
                       "threading", "bisect", "base64", "ipaddress", "fnmatch", "glob")
SPLITS = ("calibration", "evaluation")


def version() -> str:
    return f"Python {sys.version_info.major}.{sys.version_info.minor} standard library"


def module_source(name: str) -> str:
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    if not origin or not origin.endswith(".py"):
        raise QwenEdgeError(f"this Python has no source for the standard-library module {name}")
    return Path(origin).read_text(encoding="utf-8")


def _head(text: str, chars: int) -> str:
    cut = text.rfind("\n", 0, chars)
    return text[: cut if cut > 0 else chars]


def python_text(split: str) -> str:
    """The modules of `split` joined by a blank line."""
    if split not in SPLITS:
        raise ValueError(f"unknown python split {split!r}")
    if split == "evaluation":
        return "\n\n".join(_head(module_source(m), EVAL_CHARS) for m in EVAL_MODULES)
    return "\n\n".join(module_source(m) for m in CALIBRATION_MODULES)
