"""Greedy tokens from an artifact folder with qwen-edge's own Runner (the in-place KV cache): run on the ARM64
interpreter under qemu by tests/test_mobile.py, and on x86 for comparison. Needs onnxruntime and numpy only.

    python arm64_greedy.py FOLDER MODEL_FILE IDS(comma-separated) N
"""

import json
import platform
import sys

import numpy as np
import onnxruntime as ort

from qwen_edge.runtimes.kv import Runner

folder, model_file, ids, n = sys.argv[1], sys.argv[2], [int(t) for t in sys.argv[3].split(",")], int(sys.argv[4])
spec = json.load(open(f"{folder}/qwen_edge.json"))["model"]
so = ort.SessionOptions()
so.log_severity_level = 3
so.intra_op_num_threads = 1
session = ort.InferenceSession(f"{folder}/{model_file}", so, providers=["CPUExecutionProvider"])
r = Runner(session, spec, 256)
r.append(ids)
out, logits = [], r.forward()
for _ in range(n):
    out.append(int(np.argmax(logits)))
    r.push(out[-1])
    logits = r.forward()
print(json.dumps({"machine": platform.machine(), "onnxruntime": ort.__version__, "tokens": out,
                  "last_logits": [float(x) for x in logits[:8]]}))
