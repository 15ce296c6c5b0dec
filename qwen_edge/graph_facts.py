"""What model.onnx itself says about the model's shape, read without onnx or onnxruntime.

The manifest's model fields decide every allocation the runtime makes (KV caches from layers, KV heads,
head dim and context; the logits buffer from the vocabulary), so loading checks them against the graph
(artifact.check_model). This reads just enough of the ONNX protobuf to do that: the graph's inputs and
outputs with their shapes, the GroupQueryAttention nodes' head counts and the dims of the rotary cache
(its rows are the exported context). Weights in model.onnx.data are never read; initializers embedded in
model.onnx are skipped over, not decoded. Standard library only (the runtime and the JS package port it).

Field numbers are onnx.proto's: ModelProto.graph = 7; GraphProto node 1, initializer 5, input 11,
output 12; NodeProto op_type 4, attribute 5; AttributeProto name 1, i 3; TensorProto dims 1, name 8;
ValueInfoProto name 1, type 2; TypeProto tensor_type 1; Tensor shape 2; Shape dim 1; Dim value 1, param 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

Dim = Union[int, str, None]  # a number, a symbolic name, or unknown


class GraphFormatError(ValueError):
    """model.onnx is not a protobuf this reader understands."""


@dataclass
class GraphFacts:
    inputs: dict[str, list[Dim]] = field(default_factory=dict)
    outputs: dict[str, list[Dim]] = field(default_factory=dict)
    attention: list[dict[str, int]] = field(default_factory=list)  # per GroupQueryAttention node
    initializer_dims: dict[str, list[int]] = field(default_factory=dict)  # only the names asked for
    initializer_bytes: dict[str, int] = field(default_factory=dict)  # every initializer (with sizes=True)
    initializer_rows: dict[str, int] = field(default_factory=dict)  # its first dim (with sizes=True)
    consumers: dict[str, set[str]] = field(default_factory=dict)  # input name -> op types reading it
    gathered: set[str] = field(default_factory=set)  # names read as a Gather's table (input 0)

    def bytes_per_token(self) -> int:
        """Weight bytes one decode step reads: every initializer whole, except tables read only by a
        Gather (the embedding), which cost one row per token."""
        total = 0
        for name, n in self.initializer_bytes.items():
            if name in self.gathered and self.consumers.get(name, set()) <= {"Gather", "GatherBlockQuantized"}:
                total += n // max(1, self.initializer_rows.get(name, 1))
            else:
                total += n
        return total


def _varint(b: memoryview, i: int) -> tuple[int, int]:
    shift = v = 0
    while True:
        if i >= len(b) or shift > 63:
            raise GraphFormatError("truncated varint")
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        if not c & 0x80:
            return v, i
        shift += 7


def _fields(b: memoryview) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, value): ints for varints/fixed, bytes for length-delimited."""
    i, n = 0, len(b)
    while i < n:
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(b, i)
        elif wire == 2:
            size, i = _varint(b, i)
            if i + size > n:
                raise GraphFormatError("a field runs past the end")
            v, i = b[i:i + size], i + size
        elif wire == 1:
            v, i = int.from_bytes(b[i:i + 8], "little"), i + 8
        elif wire == 5:
            v, i = int.from_bytes(b[i:i + 4], "little"), i + 4
        else:
            raise GraphFormatError(f"unsupported wire type {wire}")
        yield num, wire, v


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _value_info(b: bytes) -> tuple[str, list[Dim]]:
    name, dims = "", []
    for num, _, v in _fields(b):
        if num == 1:
            name = bytes(v).decode("utf-8", "replace")
        elif num == 2:  # TypeProto
            for tnum, _, tv in _fields(v):
                if tnum != 1:  # tensor_type
                    continue
                for snum, _, sv in _fields(tv):
                    if snum != 2:  # shape
                        continue
                    for dnum, _, dv in _fields(sv):
                        if dnum != 1:
                            continue
                        d: Dim = None
                        for xnum, _, xv in _fields(dv):
                            d = _signed(xv) if xnum == 1 else bytes(xv).decode("utf-8", "replace") if xnum == 2 else d
                        dims.append(d)
    return name, dims


_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2, 21: 1, 22: 1}


def _node(b: memoryview, inputs: list[str] | None = None,
          outputs: list[str] | None = None) -> tuple[str, dict[str, int]]:
    op, attrs = "", {}
    for num, _, v in _fields(b):
        if num == 1 and inputs is not None:
            inputs.append(bytes(v).decode("utf-8", "replace"))
        elif num == 2 and outputs is not None:
            outputs.append(bytes(v).decode("utf-8", "replace"))
        elif num == 4:
            op = bytes(v).decode("utf-8", "replace")
        elif num == 5:
            aname, ai = "", None
            for anum, _, av in _fields(v):
                if anum == 1:
                    aname = bytes(av).decode("utf-8", "replace")
                elif anum == 3:
                    ai = _signed(av)
            if ai is not None:
                attrs[aname] = ai
    return op, attrs


def _tensor(b: memoryview) -> tuple[str, list[int], int]:
    """(name, dims, stored bytes: raw, external or typed data) of a TensorProto."""
    name, dims, dtype, raw, external, typed = "", [], 0, None, None, 0
    for num, wire, v in _fields(b):
        if num == 8:
            name = bytes(v).decode("utf-8", "replace")
        elif num == 2 and wire == 0:
            dtype = v
        elif num == 9:
            raw = len(v)
        elif num == 13:  # external_data: {key, value} entries
            kv = {int(n): bytes(x).decode("utf-8", "replace") for n, _, x in _fields(v) if n in (1, 2)}
            if kv.get(1) == "length":
                external = int(kv.get(2, "0"))
        elif num in (4, 5, 6, 7, 10, 11) and wire == 2:
            typed += len(v)
        elif num == 1:
            if wire == 2:  # packed
                j = 0
                while j < len(v):
                    d, j = _varint(v, j)
                    dims.append(_signed(d))
            else:
                dims.append(_signed(v))
    count = 1
    for d in dims:
        count *= max(d, 0)
    stored = external if external is not None else raw if raw is not None else count * _ITEMSIZE.get(dtype, 4)
    return name, dims, stored


def read(path: str | Path, initializers: tuple[str, ...] = ("cos_cache",), sizes: bool = False) -> GraphFacts:
    """The facts of one model.onnx (raises GraphFormatError for a file that is not an ONNX model)."""
    data = memoryview(Path(path).read_bytes())  # slices of a memoryview copy nothing
    graph = next((v for num, wire, v in _fields(data) if num == 7 and wire == 2), None)
    if graph is None:
        raise GraphFormatError("no graph")
    facts, wanted = GraphFacts(), set(initializers)
    nodes: list[tuple[str, list[str]]] = []
    reshaped: dict[str, str] = {}  # a Reshape's output -> its data input (a gather's scales pass through one)
    for num, wire, v in _fields(graph):
        if wire != 2:
            continue
        if num == 1:
            ins: list[str] | None = [] if sizes else None
            outs: list[str] | None = [] if sizes else None
            op, attrs = _node(v, ins, outs)
            if op == "GroupQueryAttention":
                facts.attention.append(attrs)
            if op == "Reshape" and ins and outs:
                reshaped[outs[0]] = ins[0]
            elif ins is not None:
                nodes.append((op, ins))
        elif num == 5:
            name, dims, stored = _tensor(v)
            if name in wanted:
                facts.initializer_dims[name] = dims
            if sizes:
                facts.initializer_bytes[name] = stored
                facts.initializer_rows[name] = dims[0] if dims else 1
        elif num in (11, 12):
            name, dims = _value_info(v)
            (facts.inputs if num == 11 else facts.outputs)[name] = dims
    for op, ins in nodes:  # a Reshape is looked through: its data input counts as read by the reshaped use
        for j, name in enumerate(ins):
            name = reshaped.get(name, name)
            facts.consumers.setdefault(name, set()).add(op)
            if (j == 0 and op == "Gather") or (j in (0, 2, 3) and op == "GatherBlockQuantized"):  # data, scales, zeros
                facts.gathered.add(name)
    return facts
