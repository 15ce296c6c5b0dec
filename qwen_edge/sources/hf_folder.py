"""A local Hugging Face folder: config.json, safetensors shards and tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import QwenEdgeError, SourceError
from ..spec import ModelSpec, spec_from_hf_config
from .safetensors_file import SafetensorsFile

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QwenEdgeError(f"cannot read {path.name}: {e}") from None


class HFFolderWeights:
    """Tensors by their Hugging Face names, read lazily from every safetensors shard in a folder."""

    def __init__(self, folder: Path):
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
            hint = f" (found {', '.join(pickled)}: pickled weights are never loaded)" if pickled else ""
            raise QwenEdgeError(f"no .safetensors weights in {folder}{hint}")
        self._where: dict[str, SafetensorsFile] = {}
        for f in files:
            st = SafetensorsFile(f)
            for k in st.keys():
                self._where[k] = st

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file(name).shape(name)

    def raw(self, name: str) -> np.ndarray:
        return self._file(name).raw(name)

    def get(self, name: str) -> np.ndarray:
        return self._file(name).get(name)

    def _file(self, name: str) -> SafetensorsFile:
        try:
            return self._where[name]
        except KeyError:
            raise QwenEdgeError(f"checkpoint is missing tensor {name!r}") from None


def load_hf_folder(folder: Path) -> tuple[ModelSpec, dict, HFFolderWeights]:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise QwenEdgeError(f"{folder} has no config.json: not a Hugging Face model folder")
    cfg = read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise SourceError(f"{cfg_path} is not a JSON object")
    spec = spec_from_hf_config(cfg)
    return spec, cfg, HFFolderWeights(folder)


def copy_tokenizer_files(folder: Path, dest: Path) -> None:
    """Copy tokenizer files; make sure tokenizer_config.json carries the chat template.

    transformers 5 saves the template beside the config as chat_template.jinja; apps read it from
    tokenizer_config.json, so it is folded in there.
    """
    if not (folder / "tokenizer.json").is_file():
        raise QwenEdgeError(f"{folder} has no tokenizer.json (the fast tokenizer file is required)")
    for name in _TOKENIZER_FILES:
        if (folder / name).is_file():
            (dest / name).write_bytes((folder / name).read_bytes())
    tc_path = dest / "tokenizer_config.json"
    tc = read_json(tc_path) if tc_path.is_file() else {}
    if "chat_template" not in tc and (folder / "chat_template.jinja").is_file():
        tc["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False), encoding="utf-8")
