"""Model sources: a local Hugging Face folder, a hub id, or a GGUF file, behind one small interface.

`open_source` also checks the source against itself (sources/validate.py) before anything is written:
a source that opens is one the exporter can use whole.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import SourceError
from ..spec import ModelSpec
from . import hub

_LOCAL_SUFFIXES = (".gguf", ".safetensors", ".json", ".bin", ".pt", ".onnx")


@dataclass
class Source:
    spec: ModelSpec
    weights: Any  # .get(hf_name) -> float32 ndarray, .shape(name), .names(), `name in weights`
    generation_config: dict
    write_tokenizer: Callable[[Path], None]
    origin: dict = field(default_factory=dict)  # recorded in the manifest
    quantization: dict | None = None  # a GPTQ/AWQ checkpoint's quantization_config
    paths: list[Path] = field(default_factory=list)  # local files or folders read: no output may touch them
    _staged: Any = None  # the validated tokenizer files (a TemporaryDirectory kept alive with the source)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def looks_local(source: str) -> bool:
    """A path rather than a hub id: absolute or relative markers, a file suffix, or an existing first folder."""
    if source.startswith(("/", "./", "../", "~", ".\\")) or "\\" in source or source.count("/") != 1:
        return True
    if source.lower().endswith(_LOCAL_SUFFIXES):
        return True
    return Path(source.split("/")[0]).is_dir()


def local_paths(source: str) -> list[Path]:
    """The local path a source string names, when it exists (for output checks before the slow load)."""
    p = Path(source).expanduser()
    return [p] if p.exists() else []


def open_source(source: str, revision: str | None = None, snapshot_download: Callable | None = None,
                validate: bool = True) -> Source:
    p = Path(source).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise SourceError(f"{p.name}: unsupported file type; give a .gguf file, a model folder or a hub id")
        src = _gguf(p)
    elif p.is_dir():
        src = _hf_folder(p, {"kind": "hf_folder", "path": str(p.resolve())})
    elif not looks_local(source) and hub.looks_like_hub_id(source):
        folder, commit = hub.download(source, revision, snapshot_download)
        src = _hf_folder(folder, {"kind": "hub", "id": source, "revision": commit})
    else:
        raise SourceError(f"no such file or folder: {source}")
    if validate:
        check(src)
    return src


def check(src: Source) -> None:
    """Tensors against the config, then the tokenizer (staged once; the artifact gets the checked files)."""
    from .validate import check_tensors, check_tokenizer
    where = src.origin.get("path") or src.origin.get("id") or "the source"
    where = Path(where).name if src.origin.get("kind") == "gguf" else where
    check_tensors(src.spec, src.weights, where, getattr(src.weights, "unknown", ()))
    staged = tempfile.TemporaryDirectory(prefix="qwen-edge-tok-")
    src.write_tokenizer(Path(staged.name))
    check_tokenizer(Path(staged.name), src.spec, src.generation_config, where)
    src._staged = staged
    src.write_tokenizer = lambda dest: _copy_files(Path(staged.name), dest)


def _copy_files(folder: Path, dest: Path) -> None:
    for f in sorted(folder.iterdir()):
        if f.is_file():
            shutil.copyfile(f, dest / f.name)


def _gguf(path: Path) -> Source:
    from .gguf_file import GGUFSource
    g = GGUFSource(path)
    return Source(spec=g.spec(), weights=g, generation_config=g.generation_config(),
                  write_tokenizer=g.write_tokenizer_files,
                  origin={"kind": "gguf", "path": str(path.resolve()), "sha256": file_sha256(path)},
                  paths=[path])


def _hf_folder(folder: Path, origin: dict) -> Source:
    from .hf_folder import copy_tokenizer_files, load_hf_folder, read_json
    spec, cfg, weights = load_hf_folder(folder)
    if not (folder / "tokenizer.json").is_file():
        raise SourceError(f"{folder} has no tokenizer.json (the fast tokenizer file is required)")
    if cfg.get("auto_map") and cfg.get("model_type") not in ("qwen2", "qwen3"):
        raise SourceError("models that need remote code are not supported")
    gen_path = folder / "generation_config.json"
    gen = read_json(gen_path) if gen_path.is_file() else {}
    if not isinstance(gen, dict):
        raise SourceError(f"{gen_path} is not a JSON object")
    for k in ("eos_token_id", "bos_token_id", "pad_token_id"):
        if k not in gen and cfg.get(k) is not None:
            gen[k] = cfg[k]
    qcfg = cfg.get("quantization_config")
    if qcfg is not None:  # a GPTQ/AWQ checkpoint: the packed tensors stand for the float ones
        from .checkpoint import QuantizedCheckpoint
        weights = QuantizedCheckpoint(weights, qcfg, spec).weights()
    return Source(spec=spec, weights=weights, generation_config=gen,
                  write_tokenizer=lambda dest: copy_tokenizer_files(folder, dest), origin=origin,
                  quantization=qcfg, paths=[folder])


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

