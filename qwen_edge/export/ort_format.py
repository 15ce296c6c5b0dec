"""The ORT-format model (`--ort`): model.ort beside model.onnx, for onnxruntime's mobile packages.

onnxruntime's minimal builds (onnxruntime-android / -ios "mobile" packages) read only this format. It is
written by an onnxruntime session that saves its optimized graph; the optimizations are the extended
level only, which are the same on every processor (the "all" level adds x86 layout changes an ARM build
cannot run). The format holds the weights inline, so it is refused above 2 GB (flatbuffers' limit).
"""

from __future__ import annotations

from pathlib import Path

from .. import artifact as A
from ..errors import InputError, QwenEdgeError

ORT_MODEL = "model.ort"
LIMIT = 2 << 30


def check_size(nbytes: int) -> None:
    if nbytes >= LIMIT:
        raise InputError(f"--ort: the weights are {nbytes / 2**30:.1f} GiB; the ORT format inlines them and holds "
                         "at most 2 GiB: quantize the model further, or use model.onnx with the full onnxruntime")


def write_ort(folder: Path) -> Path:
    import onnxruntime as ort
    folder = Path(folder)
    check_size(sum((folder / n).stat().st_size for n in (A.MODEL, A.MODEL_DATA) if (folder / n).exists()))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(folder / ORT_MODEL)
    so.add_session_config_entry("session.save_model_format", "ORT")
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(folder / A.MODEL), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise QwenEdgeError(f"--ort: onnxruntime could not write the ORT format: {str(e).splitlines()[0]}") from None
    return folder / ORT_MODEL
