"""onnxruntime session for an artifact folder: threads, execution provider by name, memory arena.

Imports onnxruntime, numpy and the standard library only (apps ship no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import artifact as A
from ..errors import QwenEdgeError
from ..ort_options import OPT_LEVELS, session_options

# Short names accepted for the common providers (the full onnxruntime name works too, any case).
PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "azure": "AzureExecutionProvider",
}


@dataclass(frozen=True)
class SessionConfig:
    """How to run the graph.

    threads: intra-op threads (0 = onnxruntime's default, one per physical core).
    provider: execution provider by name ("cpu", "CPUExecutionProvider", "cuda", ...).
    arena: onnxruntime's CPU memory arena (off trades a little speed for a smaller peak RSS).
    spin: let idle intra-op threads spin between steps (faster decode, burns CPU while waiting).
    """

    threads: int = 0
    provider: str = "cpu"
    arena: bool = True
    spin: bool = True
    optimization: str = "all"  # all | extended | basic | none

    def __post_init__(self) -> None:
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 0:
            raise QwenEdgeError(f"threads must be an integer >= 0 (0 = all cores), got {self.threads!r}")
        if self.optimization not in _OPT_LEVELS:
            raise QwenEdgeError(f"unknown optimization level '{self.optimization}': choose one of "
                                f"{', '.join(_OPT_LEVELS)}")


_OPT_LEVELS = OPT_LEVELS


def resolve_provider(name: str) -> str:
    """The onnxruntime provider name for `name`; a clear error lists the available ones."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    key = str(name).strip()
    full = PROVIDER_ALIASES.get(key.lower())
    if full is None:
        full = next((p for p in available if p.lower() in (key.lower(), key.lower() + "executionprovider")), key)
    if full not in available:
        short = {v: k for k, v in PROVIDER_ALIASES.items()}
        names = ", ".join(f"{short[p]} ({p})" if p in short else p for p in available)
        raise QwenEdgeError(f"execution provider '{name}' is not available in this onnxruntime build; "
                            f"available: {names}")
    return full


def open_session(folder: str | Path, config: SessionConfig) -> Any:
    """An onnxruntime.InferenceSession on the folder's model.onnx."""
    import onnxruntime as ort
    path = Path(folder) / A.MODEL
    if not path.is_file():
        raise QwenEdgeError(f"{folder} has no {A.MODEL}")
    provider = resolve_provider(config.provider)
    so = session_options(config.threads, arena=config.arena, spin=config.spin, optimization=config.optimization)
    try:
        return ort.InferenceSession(str(path), so, providers=[provider])
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QwenEdgeError(f"onnxruntime cannot load {path}: {msg}") from None
