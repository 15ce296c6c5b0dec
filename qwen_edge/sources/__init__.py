"""Model sources: a local Hugging Face folder, a hub id, or a GGUF file, behind one small interface."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import QwenEdgeError
from ..spec import ModelSpec
from . import hub


@dataclass
class Source:
    spec: ModelSpec
    weights: Any  # .get(hf_name) -> float32 ndarray, `name in weights`
    generation_config: dict
    write_tokenizer: Callable[[Path], None]
    origin: dict = field(default_factory=dict)  # recorded in the manifest
    quantization: dict | None = None  # a GPTQ/AWQ checkpoint's quantization_config


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def open_source(source: str, revision: str | None = None, snapshot_download: Callable | None = None) -> Source:
    p = Path(source)
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise QwenEdgeError(f"{p.name}: unsupported file type; give a .gguf file, a model folder or a hub id")
        return _gguf(p)
    if p.is_dir():
        return _hf_folder(p, {"kind": "hf_folder", "path": str(p.resolve())})
    if hub.looks_like_hub_id(source):
        folder, commit = hub.download(source, revision, snapshot_download)
        return _hf_folder(folder, {"kind": "hub", "id": source, "revision": commit})
    raise QwenEdgeError(f"no such file or folder: {source}")


def _gguf(path: Path) -> Source:
    from .gguf_file import GGUFSource
    g = GGUFSource(path)
    return Source(spec=g.spec(), weights=g, generation_config=g.generation_config(),
                  write_tokenizer=g.write_tokenizer_files,
                  origin={"kind": "gguf", "path": str(path.resolve()), "sha256": file_sha256(path)})


def _hf_folder(folder: Path, origin: dict) -> Source:
    from .hf_folder import copy_tokenizer_files, load_hf_folder, read_json
    spec, cfg, weights = load_hf_folder(folder)
    if not (folder / "tokenizer.json").is_file():
        raise QwenEdgeError(f"{folder} has no tokenizer.json (the fast tokenizer file is required)")
    if cfg.get("auto_map") and cfg.get("model_type") not in ("qwen2", "qwen3"):
        raise QwenEdgeError("models that need remote code are not supported")
    gen_path = folder / "generation_config.json"
    gen = read_json(gen_path) if gen_path.is_file() else {}
    for k in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if k not in gen and cfg.get(k) is not None:
            gen[k] = cfg[k]
    return Source(spec=spec, weights=weights, generation_config=gen,
                  write_tokenizer=lambda dest: copy_tokenizer_files(folder, dest), origin=origin,
                  quantization=cfg.get("quantization_config"))


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
