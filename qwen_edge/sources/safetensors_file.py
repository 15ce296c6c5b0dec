"""A lazy, numpy-only safetensors reader.

Reads the JSON header, validates it against the file size and memory-maps tensors one at a time, so a
7B checkpoint never sits in memory whole. bf16 is widened to fp32 by bit shifting (numpy has no bf16).
Never unpickles anything: safetensors is data only.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import QwenEdgeError

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "I32": np.int32, "I64": np.int64,
           "I8": np.int8, "U8": np.uint8, "I16": np.int16, "F64": np.float64}


def _uint(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        bad = f"corrupt safetensors file {self.path.name}"
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise QwenEdgeError(f"{bad}: shorter than its header")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or 8 + n > size:
                raise QwenEdgeError(f"{bad}: header length {n} does not fit in {size} bytes")
            try:
                header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise QwenEdgeError(f"{bad}: header is not valid JSON") from None
        if not isinstance(header, dict):
            raise QwenEdgeError(f"{bad}: header is not a JSON object")
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, e in header.items():
            if not isinstance(e, dict) or not {"dtype", "shape", "data_offsets"} <= set(e):
                raise QwenEdgeError(f"{bad}: bad entry for tensor {name!r}")
            dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
            if not isinstance(dtype, str) or dtype not in _DTYPES:
                raise QwenEdgeError(f"{self.path.name}: tensor {name!r} has unsupported dtype {dtype!r}")
            if not isinstance(shape, list) or not all(_uint(d) for d in shape) or \
                    not isinstance(offsets, list) or len(offsets) != 2 or not all(_uint(o) for o in offsets):
                raise QwenEdgeError(f"{bad}: bad shape or offsets for tensor {name!r}")
            shape, (start, end) = tuple(shape), offsets
            n = 1
            for d in shape:  # Python ints: no overflow on absurd shapes
                n *= d
            nbytes = n * np.dtype(_DTYPES[dtype]).itemsize
            if end - start != nbytes or self._base + end > size:
                raise QwenEdgeError(f"{bad}: tensor {name!r} lies outside the file or has the wrong size")
            self._entries[name] = (dtype, shape, start, end)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def raw(self, name: str) -> np.ndarray:
        """The stored array without conversion (memory-mapped)."""
        dtype, shape, start, end = self._entries[name]
        arr = np.memmap(self.path, dtype=_DTYPES[dtype], mode="r", offset=self._base + start,
                        shape=shape if shape else (1,))
        return arr.reshape(shape)

    def get(self, name: str) -> np.ndarray:
        """The tensor as float32 if it is a float type, else as stored; a fresh in-memory array."""
        dtype = self._entries[name][0]
        arr = self.raw(name)
        if dtype == "BF16":  # widen in place in one fp32 buffer: no uint32 temporary of the same size
            out = np.empty(arr.shape, dtype=np.float32)
            bits = out.view(np.uint32)
            bits[...] = arr
            bits <<= 16
            return out
        if dtype in ("F16", "F64"):
            return arr.astype(np.float32)
        return np.array(arr)
