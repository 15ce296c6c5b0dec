"""One sequence on the graph: a preallocated KV cache bound in place, and the forward step.

Every buffer a step touches is allocated once here, in numpy, and bound to onnxruntime through one
IO binding: the KV cache (each layer's buffer is both `past_key_values.N.*` and `present.N.*`, so
GroupQueryAttention writes new keys and values in place), the logits of the last position, the token
ids and a row of ones that the attention mask views. A decode step then only rebinds the two small
inputs by pointer (the mask grows by one) and runs: no cache copy and nothing that grows with context.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..errors import QwenEdgeError

_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class KVCache:
    """Per layer one key and one value buffer of [1, kv_heads, max_length, head_dim].

    Zero-filled lazily by the OS (np.zeros maps fresh pages), so memory is committed as positions fill.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, max_length: int, dtype: Any):
        import onnxruntime as ort
        self.shape = (1, int(num_kv_heads), int(max_length), int(head_dim))
        self.dtype = np.dtype(dtype)
        self.arrays = [np.zeros(self.shape, self.dtype) for _ in range(2 * num_layers)]
        # OrtValues over the numpy memory (no copy on CPU); the arrays keep the memory alive.
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    def data_ptrs(self) -> list[int]:
        return [v.data_ptr() for v in self.values]


class Runner:
    """Feeds tokens to the graph for one sequence; not thread-safe (one generation at a time).

    `ids[:n]` is the sequence so far; its first `length` positions are in the cache and the rest are
    pending (fed by the next `forward`). `truncate` rewinds for free: later positions are overwritten.
    """

    def __init__(self, session: Any, spec: dict, max_length: int, prefill_chunk: int = 256):
        import onnxruntime as ort
        self.session = session
        self.max_length = int(max_length)
        self.prefill_chunk = max(1, int(prefill_chunk))
        inputs = {i.name: i for i in session.get_inputs()}
        key0 = inputs.get("past_key_values.0.key")
        if key0 is None or "input_ids" not in inputs or "attention_mask" not in inputs:
            raise QwenEdgeError("model.onnx does not follow the qwen-edge graph contract (docs/artifact.md)")
        if "logits_to_keep" not in {i.name for i in session.get_overridable_initializers()}:
            raise QwenEdgeError("model.onnx has no logits_to_keep input: re-export it with this qwen-edge")
        self.cache = KVCache(spec["num_layers"], spec["num_kv_heads"], spec["head_dim"], self.max_length,
                             _NP_TYPES.get(key0.type, np.float32))
        self.vocab_size = int(spec["vocab_size"])
        self.ids = np.zeros(self.max_length, np.int64)  # the sequence; the chunk input views it
        self.n = 0  # ids known
        self.length = 0  # positions in the cache
        self._ones = np.ones((1, self.max_length), np.int64)
        self._ids_ptr, self._ones_ptr = self.ids.ctypes.data, self._ones.ctypes.data
        self._logits = np.empty((1, 1, self.vocab_size), np.float32)
        self.run_seconds = 0.0  # time inside onnxruntime, for the overhead split
        self.runs = 0

        b = session.io_binding()
        for i in range(spec["num_layers"]):
            for j, kind in enumerate(("key", "value")):
                v = self.cache.values[2 * i + j]
                b.bind_ortvalue_input(f"past_key_values.{i}.{kind}", v)
                b.bind_ortvalue_output(f"present.{i}.{kind}", v)
        # An overridable initializer: bind_cpu_input rejects it, an OrtValue works.
        self._keep = ort.OrtValue.ortvalue_from_numpy(np.array(1, np.int64))
        b.bind_ortvalue_input("logits_to_keep", self._keep)
        self._logits_value = ort.OrtValue.ortvalue_from_numpy(self._logits)
        b.bind_ortvalue_output("logits", self._logits_value)
        self._keep_many = ort.OrtValue.ortvalue_from_numpy(np.array(1, np.int64))
        self._many: np.ndarray | None = None  # forward_last's logits, allocated on first use
        self.binding = b
        self._bind_input = _raw_bind_input(b)

    # ------------------------------------------------------------------ sequence
    @property
    def history(self) -> np.ndarray:
        """The ids so far (a view: valid until the next change)."""
        return self.ids[: self.n]

    @property
    def free(self) -> int:
        return self.max_length - self.n

    def append(self, ids: Sequence[int]) -> None:
        k = len(ids)
        if self.n + k > self.max_length:
            raise QwenEdgeError(f"the sequence needs {self.n + k} tokens but the context holds {self.max_length}")
        self.ids[self.n: self.n + k] = ids
        self.n += k

    def push(self, token: int) -> None:
        """append([token]) without the list (the decode loop's fast path)."""
        if self.n >= self.max_length:
            raise QwenEdgeError(f"the context is full ({self.max_length} tokens)")
        self.ids[self.n] = token
        self.n += 1

    def truncate(self, n: int) -> None:
        """Keep the first n ids; the cache forgets later positions (no copy)."""
        self.n = min(self.n, max(0, int(n)))
        self.length = min(self.length, self.n)

    def reset(self) -> None:
        self.n = self.length = 0

    # ------------------------------------------------------------------ compute
    def forward(self) -> np.ndarray:
        """Run the pending ids (in chunks) and return the last position's logits [vocab].

        The result is a view of the bound logits buffer: the next forward overwrites it.
        """
        if self.length >= self.n:
            raise QwenEdgeError("nothing to run: no pending tokens")
        while self.length < self.n:
            s = min(self.n - self.length, self.prefill_chunk)
            self._run(self.length, s)
            self.length += s
        return self._logits[0, 0]

    def forward_last(self, keep: int) -> np.ndarray:
        """Run the pending ids and return the logits of their last `keep` positions [keep, vocab].

        Speculative decoding's verify pass: the proposed tokens and the one before them in one run, each
        position's logits. Pending ids beyond a prefill chunk run first in chunks, as in `forward`. The result
        is a view of a buffer the next forward_last overwrites."""
        keep = int(keep)
        if not 1 <= keep <= self.n - self.length:
            raise QwenEdgeError(f"keep must be 1..{self.n - self.length} (the pending ids), got {keep}")
        if keep == 1:
            return self.forward()[None]
        while self.n - self.length > max(keep, self.prefill_chunk):  # (a long pending run: chunks first)
            s = min(self.n - self.length - keep, self.prefill_chunk)
            self._run(self.length, s)
            self.length += s
        if self._many is None or self._many.shape[1] < keep:
            self._many = np.empty((1, max(keep, 16), self.vocab_size), np.float32)
        b = self.binding
        b.bind_output("logits", "cpu", 0, np.float32, [1, keep, self.vocab_size], self._many.ctypes.data)
        self._keep_many.update_inplace(np.array(keep, np.int64))
        b.bind_ortvalue_input("logits_to_keep", self._keep_many)
        try:
            s = self.n - self.length
            self._run(self.length, s)
            self.length += s
        finally:  # back to the decode step's bindings
            b.bind_ortvalue_input("logits_to_keep", self._keep)
            b.bind_ortvalue_output("logits", self._logits_value)
        return self._many[0, :keep]

    def _run(self, start: int, s: int) -> None:
        # Both inputs are views of preallocated memory, bound by pointer: no per-step allocation.
        bind = self._bind_input
        bind("input_ids", np.int64, [1, s], self._ids_ptr + 8 * start)
        bind("attention_mask", np.int64, [1, start + s], self._ones_ptr)
        t = time.perf_counter()
        self.session.run_with_iobinding(self.binding)
        self.run_seconds += time.perf_counter() - t
        self.runs += 1


def _raw_bind_input(binding: Any) -> Any:
    """bind_input(name, type, shape, pointer) on CPU memory.

    The public IOBinding.bind_input builds an OrtDevice on every call; after a decode step has streamed
    the weights through the caches that costs ~15 us a call, so the C binding is called directly with
    one cached device when this onnxruntime has it (the public method otherwise).
    """
    try:
        from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice
        raw, device = binding._iobinding.bind_input, OrtDevice.make("cpu", 0)._get_c_device()
    except (AttributeError, ImportError, TypeError):
        raw = None
    if raw is not None:
        return lambda name, etype, shape, ptr: raw(name, device, etype, shape, ptr)
    return lambda name, etype, shape, ptr: binding.bind_input(name, "cpu", 0, etype, shape, ptr)
