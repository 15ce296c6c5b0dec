"""Why a verify pass (several rows) and a decode step (one row) give different logits on quantized files.

Speculative decoding is exact for greedy decoding only when a position's logits do not depend on how many
positions ran with it. This measures, on onnxruntime's CPU provider:

1. MatMulNBits alone at the 0.5B's shapes: one row at a time against several rows in one run;
2. inside a real artifact, every node of layers 0-1 and the last layer: the last position of one run of
   all tokens against one decode step after the others (the first node whose output differs while its
   inputs were equal is the source; the growth after it is amplification);
3. whole models: logits of plain decoding (prefill then one token a step) against runs of 5 positions.

    python scripts/investigations/batch_invariance.py ~/.cache/qwen-edge/bench/quant/{fp32,rtn-int4g32,speed-410MiB}
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

TEXT = ("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"
        "    return fibonacci(n - 1) + fibonacci(n - 2)\n\nclass Stack:\n    def __init__(self):\n"
        "        self.items = []\n    def push(self, x):\n        self.items.append(x)\n")


def _session(model_bytes_or_path, threads=2):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes_or_path, so)


def kernels() -> None:
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    print("1. MatMulNBits (accuracy level 4, zero points), max |one row - same row of 5| / max |y|")
    for K, N, bits, bs in [(896, 1152, 4, 16), (896, 1152, 4, 32), (896, 1152, 4, 64), (896, 9728, 4, 128),
                           (4864, 896, 8, 32), (896, 896, 8, 128), (896, 151936, 8, 64)]:
        nb = K // bs
        w = rng.integers(0, 256, size=(N, nb, bs * bits // 8), dtype=np.uint8)
        scales = (rng.random(N * nb, dtype=np.float32) * 0.02).astype(np.float32)
        zp = rng.integers(0, 256, size=(N * ((nb * bits + 7) // 8),), dtype=np.uint8)
        node = helper.make_node("MatMulNBits", ["X", "W", "S", "Z"], ["Y"], domain="com.microsoft", K=K, N=N,
                                bits=bits, block_size=bs, accuracy_level=4)
        g = helper.make_graph([node], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", K])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", N])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(scales, "S"),
                               numpy_helper.from_array(zp, "Z")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
        s = _session(m.SerializeToString())
        X = rng.standard_normal((5, K)).astype(np.float32)
        one = np.concatenate([s.run(None, {"X": X[i:i + 1]})[0] for i in range(5)])
        many = s.run(None, {"X": X})[0]
        print(f"   int{bits}g{bs:<4} {K:>5} -> {N:<6} {np.abs(one - many).max() / np.abs(one).max():.2e}")


def nodes(folder: Path, ids: np.ndarray) -> None:
    import onnx
    m = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    watch = [o for n in m.graph.node if any(t in n.name for t in (".layers.0.", "layers.0/", ".layers.1.", "embed"))
             for o in n.output if o and not o.startswith("present")]
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=o) for o in watch if o not in have)
    # Beside model.onnx so the external weights resolve; removed once the session holds it.
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
    os.close(fd)
    try:
        onnx.save(m, tmp)
        s = _session(tmp)
    finally:
        os.remove(tmp)
    names = [o.name for o in s.get_outputs()]
    layers = sum(1 for i in s.get_inputs() if i.name.startswith("past_key_values") and i.name.endswith(".key"))
    k0 = next(i for i in s.get_inputs() if i.name == "past_key_values.0.key").shape
    empty = {f"past_key_values.{i}.{kind}": np.zeros((1, k0[1], 0, k0[3]), np.float32)
             for i in range(layers) for kind in ("key", "value")}
    T = ids.shape[1]
    all_rows = dict(zip(names, s.run(None, {"input_ids": ids, "attention_mask": np.ones((1, T), np.int64), **empty})))
    first = dict(zip(names, s.run(None, {"input_ids": ids[:, :-1], "attention_mask": np.ones((1, T - 1), np.int64),
                                         **empty})))
    past = {f"past_key_values.{i}.{kind}": first[f"present.{i}.{kind}"] for i in range(layers) for kind in ("key", "value")}
    step = dict(zip(names, s.run(None, {"input_ids": ids[:, -1:], "attention_mask": np.ones((1, T), np.int64), **past})))
    print(f"2. {folder.name}: last position, one run of {T} tokens against a decode step (max |difference|)")
    for o in watch + ["logits"]:
        a, b = all_rows[o], step[o]
        if a.ndim >= 2 and a.shape[1] == T and b.shape[1] == 1:
            print(f"   {np.abs(a[:, -1] - b[:, 0]).max():9.2e}  {o}")


def whole(folder: Path, ids: list[int]) -> None:
    from qwen_edge import Model
    m = Model.load(str(folder), threads=2, max_length=1024)
    P = 20
    r = m.new_runner()
    r.append(ids[:P])
    plain = [r.forward().copy()]
    for t in ids[P:]:
        r.push(t)
        plain.append(r.forward().copy())
    r = m.new_runner()
    r.append(ids[:P])
    runs = [r.forward().copy()]
    i = P
    while i < len(ids):
        k = min(5, len(ids) - i)
        r.append(ids[i:i + k])
        runs.extend(r.forward_last(k).copy())
        i += k
    d = np.abs(np.array(plain) - np.array(runs)).max(axis=1)
    print(f"3. {folder.name}: plain decoding against runs of 5, {d.size} positions: "
          f"max {d.max():.3g}, median {np.median(d):.3g} (logits)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="*", type=Path, help="artifact folders")
    a = ap.parse_args()
    kernels()
    for f in a.folders:
        from tokenizers import Tokenizer
        ids = Tokenizer.from_file(str(f / "tokenizer.json")).encode(TEXT).ids
        nodes(f, np.array([ids[:14]], np.int64))
        whole(f, ids)


if __name__ == "__main__":
    main()
