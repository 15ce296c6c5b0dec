"""A bounded reader for the GGUF header: metadata and tensor infos, validated against the file size.

The `gguf` package trusts the counts it reads (a damaged file becomes a raw numpy error or a huge
allocation), so the header is parsed here: every count and length is checked against the bytes that are
left before anything is allocated, so no input makes this allocate more than the file holds. Each tensor
must lie inside the data section with the byte size its type and shape imply. Any damage is one
SourceError. The `gguf` package is still used to dequantize tensor data.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError

MAGIC = b"GGUF"
MAX_DIMS = 4
# value type -> (struct format, size); 8 = string, 9 = array
_SCALARS = {0: ("<B", 1), 1: ("<b", 1), 2: ("<H", 2), 3: ("<h", 2), 4: ("<I", 4), 5: ("<i", 4), 6: ("<f", 4),
            7: ("<?", 1), 10: ("<Q", 8), 11: ("<q", 8), 12: ("<d", 8)}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # GGUF order: ne[0] is the innermost (contiguous) dimension
    type: int
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order (outermost first): for a weight, [out, in] as in PyTorch."""
        return tuple(reversed(self.ne))


def quant_sizes() -> dict[int, tuple[int, int]]:
    """GGML type -> (elements per block, bytes per block), from the gguf package."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:
        raise SourceError("reading GGUF needs the 'gguf' package: pip install 'qwen-edge[export]'") from None
    return {int(k): (int(v[0]), int(v[1])) for k, v in GGML_QUANT_SIZES.items()}


class _Cursor:
    def __init__(self, data: Any, name: str):  # bytes or an mmap: slices copy only what is read
        self.data, self.pos, self.name = data, 0, name

    def fail(self, what: str) -> SourceError:
        return SourceError(f"corrupt or truncated GGUF file {self.name}: {what}")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"{what} runs past the end of the file (offset {self.pos})")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def scalar(self, vtype: int, what: str) -> Any:
        fmt, size = _SCALARS[vtype]
        return struct.unpack(fmt, self.take(size, what))[0]

    def u32(self, what: str) -> int:
        return self.scalar(4, what)

    def u64(self, what: str) -> int:
        return self.scalar(10, what)

    def count(self, what: str, min_item_bytes: int) -> int:
        """A u64 count, refused when its items could not fit in the bytes left (bounds every allocation)."""
        n = self.u64(what)
        if n * min_item_bytes > len(self.data) - self.pos:
            raise self.fail(f"{what} says {n}, more than the file can hold")
        return n

    def string(self, what: str) -> str:
        n = self.count(f"length of {what}", 1)
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.scalar(vtype, what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth == 0:
            itype = self.u32(f"item type of {what}")
            if itype not in _SCALARS and itype not in (_STRING, _ARRAY):
                raise self.fail(f"{what} has unknown item type {itype}")
            item = _SCALARS[itype][1] if itype in _SCALARS else 8
            n = self.count(f"length of {what}", item)
            if itype in _SCALARS:  # one unpack for the whole array
                fmt = _SCALARS[itype][0]
                return list(struct.unpack(f"<{n}{fmt[1]}", self.take(n * item, what)))
            return [self.value(itype, what, depth + 1) for _ in range(n)]
        raise self.fail(f"{what} has unknown value type {vtype}")


def read_header(path: Path) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    """(metadata by key, tensor infos by name) of a GGUF file; SourceError on any damage."""
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise SourceError(f"{path.name} is not a GGUF file (only {size} bytes)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _parse(_Cursor(mm, path.name), size, path.name)


def _parse(cur: _Cursor, size: int, name_: str) -> tuple[dict[str, Any], dict[str, TensorInfo]]:
    if cur.take(4, "the magic") != MAGIC:
        raise SourceError(f"{name_} is not a GGUF file (bad magic)")
    version = cur.u32("the version")
    if version not in (2, 3):
        raise cur.fail(f"unsupported GGUF version {version} (2 or 3)")
    n_tensors = cur.count("the tensor count", 8 + 4 + 8 + 4 + 8)
    n_kv = cur.count("the metadata count", 8 + 4)
    meta: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key {i}")
        vtype = cur.u32(f"type of {key!r}")
        meta[key] = cur.value(vtype, f"metadata {key!r}")
    infos = []
    for i in range(n_tensors):
        name = cur.string(f"tensor name {i}")
        n_dims = cur.u32(f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise cur.fail(f"tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS})")
        ne = tuple(cur.u64(f"shape of {name!r}") for _ in range(n_dims))
        ttype = cur.u32(f"type of {name!r}")
        offset = cur.u64(f"offset of {name!r}")
        infos.append((name, ne, ttype, offset))
    align = meta.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise cur.fail(f"general.alignment {align!r} is not a power of two")
    start = -(-cur.pos // align) * align
    sizes = quant_sizes()
    tensors: dict[str, TensorInfo] = {}
    for name, ne, ttype, offset in infos:
        if ttype not in sizes:
            raise cur.fail(f"tensor {name!r} has unknown type {ttype}")
        block, type_size = sizes[ttype]
        if any(d <= 0 for d in ne) or ne[0] % block:
            raise cur.fail(f"tensor {name!r} has an invalid shape {list(ne)} for its type")
        n = 1
        for d in ne:
            n *= d
        nbytes = n // block * type_size
        if start + offset + nbytes > size:
            raise cur.fail(f"tensor {name!r} ends past the end of the file")
        if name in tensors:
            raise cur.fail(f"tensor {name!r} appears twice")
        tensors[name] = TensorInfo(name, ne, ttype, start + offset, nbytes)
    return meta, tensors
