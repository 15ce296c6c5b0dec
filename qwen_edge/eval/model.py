"""One artifact folder as a scorer: a whole window in one onnxruntime forward pass, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import artifact as A
from ..errors import QwenEdgeError
from ..ort_options import session_options

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def folder_size(folder: Path) -> int:
    """Bytes on disk of the files an app ships (every regular file in the folder)."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


class OnnxLM:
    def __init__(self, folder: str | Path, threads: int = 0, verify: bool = True):
        self.folder = Path(folder)
        self.manifest = A.read_manifest(self.folder)  # missing folder / not an artifact: QwenEdgeError
        A.check(self.folder, self.manifest, verify=verify)  # a damaged or swapped file: scored never
        from ..footprint import check_artifact
        check_artifact(self.folder, self.manifest, command="eval")
        tok_path = self.folder / "tokenizer.json"
        for p in (self.folder / A.MODEL, tok_path):
            if not p.is_file():
                raise QwenEdgeError(f"{self.folder} has no {p.name}")
        self.tokenizer_sha = A.sha256(tok_path)
        self._tok_path = tok_path
        self._threads = threads
        self._sess: Any = None
        m = self.manifest["model"]
        self.vocab_size, self.max_length = int(m["vocab_size"]), int(self.manifest["max_length"])
        self.size_bytes = folder_size(self.folder)

    @property
    def label(self) -> str:
        return self.folder.name or str(self.folder)

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer
        return Tokenizer.from_file(str(self._tok_path))

    def _session(self) -> Any:
        if self._sess is None:
            import onnxruntime as ort
            try:
                self._sess = ort.InferenceSession(str(self.folder / A.MODEL), session_options(self._threads or 0),
                                                  providers=["CPUExecutionProvider"])
            except Exception as e:  # a damaged or truncated file
                raise QwenEdgeError(f"onnxruntime cannot load {self.folder / A.MODEL}: {str(e).splitlines()[0]}") from None
            m = self.manifest["model"]
            self._empty = {}
            for i in self._sess.get_inputs():
                if i.name.startswith("past_key_values."):
                    dt = _ORT_TYPES.get(i.type)
                    if dt is None:
                        raise QwenEdgeError(f"{self.folder}: unsupported KV cache type {i.type}")
                    self._empty[i.name] = np.zeros((1, int(m["num_kv_heads"]), 0, int(m["head_dim"])), dtype=dt)
        return self._sess

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits [len(ids), vocab] float32 of one window fed from an empty cache."""
        sess = self._session()
        n = len(ids)
        feeds = {"input_ids": np.asarray(ids, dtype=np.int64).reshape(1, n),
                 "attention_mask": np.ones((1, n), dtype=np.int64), **self._empty}
        out = sess.run(["logits"], feeds)[0]
        return out[0]
