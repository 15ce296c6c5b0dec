"""qwen-edge: Qwen dense models to fast, small, verified ONNX models for CPUs."""

__version__ = "0.1.0"
