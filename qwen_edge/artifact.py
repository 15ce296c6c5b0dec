"""The artifact folder contract (docs/artifact.md): file names and the manifest, read and verified.

Imported by the runtime, so it depends on the standard library only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import QwenEdgeError

FORMAT = "qwen-edge-artifact"
FORMAT_VERSION = 1
MANIFEST = "qwen_edge.json"
MODEL = "model.onnx"
MODEL_DATA = "model.onnx.data"
GENERATION = "generation_config.json"
GENAI = "genai_config.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if not folder.is_dir():
        raise QwenEdgeError(f"no such model folder: {folder}")
    path = folder / MANIFEST
    if not path.is_file():
        raise QwenEdgeError(f"{folder} is not a qwen-edge model folder (no {MANIFEST})")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise QwenEdgeError(f"cannot read {path}: {e}") from None
    if m.get("format") != FORMAT:
        raise QwenEdgeError(f"{path} is not a qwen-edge manifest")
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise QwenEdgeError(f"{folder} has artifact format {m.get('format_version')}; this qwen-edge reads "
                            f"up to {FORMAT_VERSION}: upgrade qwen-edge")
    return m


def verify(folder: str | Path) -> list[str]:
    """Names of files whose sha256 differs from the manifest (empty when the folder is intact)."""
    folder = Path(folder)
    m = read_manifest(folder)
    bad = []
    for name, digest in m.get("files", {}).items():
        p = folder / name
        if not p.is_file() or sha256(p) != digest:
            bad.append(name)
    return bad
