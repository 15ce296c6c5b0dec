"""qwen-edge: Qwen dense models to fast, small, verified ONNX models for CPUs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Model", "QwenEdgeError", "__version__"]

if TYPE_CHECKING:
    from .errors import QwenEdgeError
    from .runtimes.model import Model


def __getattr__(name: str) -> Any:
    # Lazy: `import qwen_edge` stays cheap and loads onnxruntime only when a Model is asked for.
    if name == "Model":
        from .runtimes.model import Model
        return Model
    if name == "QwenEdgeError":
        from .errors import QwenEdgeError
        return QwenEdgeError
    raise AttributeError(f"module 'qwen_edge' has no attribute {name!r}")
