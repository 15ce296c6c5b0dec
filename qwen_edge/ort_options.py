"""The one onnxruntime SessionOptions builder: the runtime, eval and the format-cost timings run their
graphs with the same settings, so a timing or a score measures what an app gets.

Below every stage (onnxruntime and the standard library only), so quantize's timings and the runtime can
both use it without an arrow pointing backwards.
"""

from __future__ import annotations

from typing import Any

OPT_LEVELS = {"none": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
              "all": "ORT_ENABLE_ALL"}


def session_options(threads: int = 0, *, arena: bool = True, spin: bool = True, optimization: str = "all") -> Any:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.log_severity_level = 3  # silence the warning about the overridable logits_to_keep initializer
    so.intra_op_num_threads = threads  # 0: onnxruntime picks (one per physical core)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_cpu_mem_arena = bool(arena)
    # Memory patterns are cached per input shape: one more entry for every context length, a slow leak.
    so.enable_mem_pattern = False
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[optimization])
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so
