"""A small ONNX graph builder that streams initializers straight into an external data file.

The ModelProto only ever holds tensor metadata; each weight's bytes are written to disk as soon as it is
made and then dropped, so exporting a 7B model needs memory for one tensor, not for the whole model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

_ALIGN = 4096  # page-aligned offsets let onnxruntime memory-map the weights


class Graph:
    def __init__(self, data_path: Path):
        self.data_path = Path(data_path)
        self._data = open(self.data_path, "wb")
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._names: dict[str, int] = {}

    # --- weights ----------------------------------------------------------------------------------
    def weight(self, name: str, array: np.ndarray) -> str:
        """Add an initializer; arrays over 1 KiB go to the external data file, small ones inline."""
        array = np.asarray(array)
        if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn a scalar into shape [1])
            array = array.copy()
        if array.nbytes <= 1024:
            self.initializers.append(numpy_helper.from_array(array, name))
            return name
        offset = self._data.tell()
        pad = (-offset) % _ALIGN
        if pad:
            self._data.write(b"\0" * pad)
            offset += pad
        self._data.write(array.tobytes())
        t = TensorProto()
        t.name = name
        t.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
        t.dims.extend(array.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.data_path.name), ("offset", str(offset)), ("length", str(array.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        self.initializers.append(t)
        return name

    def const(self, array: Any, name: str | None = None, dtype: Any = None) -> str:
        return self.weight(self.fresh(name or "const"), np.asarray(array, dtype=dtype))

    # --- nodes ------------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        n = self._names.get(base, 0)
        self._names[base] = n + 1
        return base if n == 0 else f"{base}_{n}"

    def op(self, op_type: str, inputs: Sequence[str], name: str, n_out: int = 1,
           outputs: Sequence[str] | None = None, domain: str = "", **attrs: Any) -> Any:
        """Add one node; returns its output name (or a list of names when n_out > 1)."""
        node_name = self.fresh(name)
        outs = list(outputs) if outputs else [f"{node_name}/out{i}" if n_out > 1 else f"{node_name}/out"
                                               for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, domain=domain or None,
                                           **attrs))
        return outs if n_out > 1 else outs[0]

    def input(self, name: str, elem_type: int, shape: Sequence[Any]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[Any]) -> str:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    # --- finish -----------------------------------------------------------------------------------
    def save(self, onnx_path: Path, graph_name: str, opset: int = 21,
             overridable: Sequence[str] = (), metadata: dict[str, str] | None = None) -> None:
        """Write model.onnx; initializers named in `overridable` are also graph inputs with defaults."""
        self._data.close()
        extra_inputs = []
        for init in self.initializers:
            if init.name in overridable:
                extra_inputs.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
        graph = helper.make_graph(self.nodes, graph_name, self.inputs + extra_inputs, self.outputs,
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                        helper.make_opsetid("com.microsoft", 1)],
                                  producer_name="qwen-edge")
        model.ir_version = 10
        for k, v in (metadata or {}).items():
            model.metadata_props.add(key=k, value=v)
        onnx.save_model(model, str(onnx_path))

    def abort(self) -> None:
        if not self._data.closed:
            self._data.close()
