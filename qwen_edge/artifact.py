"""The artifact folder contract (docs/artifact.md): file names and the manifest, read and verified.

Imported by the runtime, so it depends on the standard library only.

Loading checks the folder against its manifest before anything runs: every listed file exists with its
recorded size (always), and its sha256 matches (by default). Hashing reads every byte (about 1 GB/s here),
so a successful full check leaves a stamp in the cache (`verified/`, keyed by the folder's real path)
holding each file's size, mtime, ctime and inode; the next load with the same stamp skips the hashing.
ctime cannot be set from user space, so any write to a file (even one that restores its mtime) voids it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from . import graph_facts
from .errors import ArtifactError

FORMAT = "qwen-edge-artifact"
FORMAT_VERSION = 1
MANIFEST = "qwen_edge.json"
MODEL = "model.onnx"
MODEL_DATA = "model.onnx.data"
GENERATION = "generation_config.json"
GENAI = "genai_config.json"
TOKENIZER = "tokenizer.json"
REQUIRED = (MODEL, TOKENIZER)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_table(folder: Path) -> tuple[dict[str, str], dict[str, int]]:
    """(sha256 by name, size by name) of every file in `folder` but the manifest: what a manifest records."""
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and p.name != MANIFEST)
    return {p.name: sha256(p) for p in files}, {p.name: p.stat().st_size for p in files}


def is_artifact(folder: Path) -> bool:
    """True for a folder holding a qwen-edge manifest (what --force may replace)."""
    try:
        m = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return Path(folder).is_dir() and isinstance(m, dict) and m.get("format") == FORMAT


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} is a file, not a model folder (give the folder that holds {MANIFEST})")
    if not folder.is_dir():
        raise ArtifactError(f"no such model folder: {folder}")
    path = folder / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{folder} is not a qwen-edge model folder (no {MANIFEST})")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"cannot read {path}: {e}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a qwen-edge manifest")
    try:
        version = int(m.get("format_version", 0))
    except (TypeError, ValueError):
        raise ArtifactError(f"{path} has an invalid format_version") from None
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{folder} has artifact format {version}; this qwen-edge reads "
                            f"up to {FORMAT_VERSION}: upgrade qwen-edge")
    if not isinstance(m.get("files"), dict) or not isinstance(m.get("model"), dict):
        raise ArtifactError(f"{path} is damaged: it lists no files or no model")
    return m


def verify(folder: str | Path) -> list[str]:
    """Names of files whose sha256 differs from the manifest (empty when the folder is intact)."""
    folder = Path(folder)
    m = read_manifest(folder)
    bad = []
    for name, digest in m["files"].items():
        p = folder / name
        if not p.is_file() or sha256(p) != digest:
            bad.append(name)
    return bad


def check(folder: str | Path, manifest: dict[str, Any] | None = None, *, verify: bool = True) -> dict[str, Any]:
    """Raise ArtifactError naming the first damaged, missing or swapped file; returns what was done.

    Sizes are always compared; with `verify` the content hashes too (skipped when a stamp from an earlier
    full check still matches every file). Returns {"hashed": bool, "seconds": float}.
    """
    t0 = time.perf_counter()
    folder = Path(folder)
    m = manifest if manifest is not None else read_manifest(folder)
    files: dict[str, str] = m["files"]
    sizes: dict[str, int] = m.get("sizes") or {}
    for name in REQUIRED:
        if name not in files:
            raise ArtifactError(f"{folder} is damaged: its manifest does not list {name}")
    stats = {}
    for name in files:
        p = folder / name
        try:
            st = p.stat()
        except OSError:
            raise ArtifactError(f"{folder} is damaged: {name} is missing (listed in {MANIFEST})") from None
        if name in sizes and st.st_size != int(sizes[name]):
            raise ArtifactError(f"{folder} is damaged: {name} has {st.st_size} bytes, its manifest says "
                                f"{sizes[name]}; re-export the model")
        stats[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    check_model(folder, m)
    if not verify:
        return {"hashed": False, "seconds": time.perf_counter() - t0}
    stamp_path = _stamp_path(folder)
    key = {"files": files, "stats": stats}
    if stamp_path is not None and _read_stamp(stamp_path) == key:
        return {"hashed": False, "seconds": time.perf_counter() - t0}
    for name, digest in files.items():
        if sha256(folder / name) != digest:
            raise ArtifactError(f"{folder} is damaged: {name} does not match its manifest (sha256); the file was "
                                "changed or swapped: re-export the model (or pass --no-verify / verify=False)")
    if stamp_path is not None:
        _write_stamp(stamp_path, key)
    return {"hashed": True, "seconds": time.perf_counter() - t0}


# Upper bounds on the model fields, far above any Qwen dense model (151,936 tokens, 28 layers at 7B,
# 128k context), so that a hand-edited manifest and graph that agree still cannot ask for absurd memory.
MODEL_LIMITS = {"vocab_size": 1 << 20, "num_layers": 512, "num_heads": 1024, "num_kv_heads": 1024,
                "head_dim": 1024, "hidden_size": 1 << 16, "intermediate_size": 1 << 18}
MAX_LENGTH_LIMIT = 1 << 20


def check_model(folder: str | Path, manifest: dict[str, Any]) -> None:
    """The manifest's model fields, which every allocation is sized from, checked against model.onnx.

    vocab_size against the logits' last dim, num_layers against the KV inputs and the attention nodes,
    num_kv_heads / head_dim against the KV inputs' shapes, num_heads against the attention nodes,
    max_length against the rotary cache's rows; each within MODEL_LIMITS. A mismatch is the same
    one-line "damaged" error as a bad hash (ArtifactError).
    """
    folder = Path(folder)
    spec = manifest.get("model") or {}

    def damaged(what: str) -> ArtifactError:
        return ArtifactError(f"{folder} is damaged: {what}; re-export the model")

    want = {}
    for name, top in (*MODEL_LIMITS.items(), ("max_length", MAX_LENGTH_LIMIT)):
        v = manifest.get(name) if name == "max_length" else spec.get(name)
        if v is None and name in ("hidden_size", "intermediate_size"):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top:
            raise damaged(f"its manifest's {name} is {v!r}, not an integer in 1..{top}")
        want[name] = v
    try:
        g = graph_facts.read(folder / MODEL)
    except (OSError, graph_facts.GraphFormatError) as e:
        raise damaged(f"{MODEL} cannot be read as an ONNX model ({e})") from None

    def mismatch(name: str, graph_value: Any, where: str) -> None:
        if graph_value != want[name]:
            raise damaged(f"its manifest says {name} {want[name]} but {MODEL} has {graph_value} ({where})")

    keys = sorted(int(k.split(".")[1]) for k in g.inputs if k.startswith("past_key_values.") and k.endswith(".key"))
    if keys != list(range(len(keys))) or not keys or "logits" not in g.outputs:
        raise damaged(f"{MODEL} does not have the graph's inputs and outputs (docs/artifact.md)")
    mismatch("num_layers", len(keys), "past_key_values inputs")
    key0 = g.inputs["past_key_values.0.key"]
    if len(key0) != 4:
        raise damaged(f"{MODEL}'s past_key_values.0.key has {len(key0)} dims, not 4")
    mismatch("num_kv_heads", key0[1], "past_key_values.0.key dim 1")
    mismatch("head_dim", key0[3], "past_key_values.0.key dim 3")
    mismatch("vocab_size", (g.outputs["logits"] or [None])[-1], "logits' last dim")
    if g.attention:
        mismatch("num_layers", len(g.attention), "GroupQueryAttention nodes")
        mismatch("num_heads", g.attention[0].get("num_heads"), "GroupQueryAttention num_heads")
        mismatch("num_kv_heads", g.attention[0].get("kv_num_heads"), "GroupQueryAttention kv_num_heads")
    cos = g.initializer_dims.get("cos_cache")
    if cos:
        mismatch("max_length", cos[0], "rows of the rotary cache cos_cache")


def _stamp_path(folder: Path) -> Path | None:
    from .cache import cache_dir
    try:
        real = str(folder.resolve())
    except OSError:
        return None
    return cache_dir() / "verified" / (hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest() + ".json")


def _read_stamp(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_stamp(path: Path, key: dict) -> None:
    """Best effort: an unwritable cache only means the next load hashes again."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(key), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
