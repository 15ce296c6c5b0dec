"""Where Node's decode step loses time against Python's, on one artifact, rounds alternated.

    python scripts/investigations/bench_node_gap.py ~/.cache/qwen-edge/bench/quant/speed-410MiB --rounds 4 [--json]

Per round, each a fresh process, 512 prompt tokens then 128 greedy decode steps, 2 threads, ms per step:
  python-inplace  onnxruntime (Python) on the exported graph, the KV cache bound in place (IO binding):
                  what `qwen-edge run` does
  python-small    the same, on the graph the JS package runs in Node (js/src/small_outputs.js: the KV outputs
                  internal, GroupQueryAttention unshared), its new rows copied into the cache in numpy
  node-bare       onnxruntime-node on that graph in a bare loop (no tokenizer, no sampling)
  node-package    the package's own `complete()` (ms per token from its timings)
Same graph in both runtimes separates the runtime from the graph; bare against package separates the JS
around the session. Prints medians; numbers only, no thresholds (this machine's speed swings).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchlib import die  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "js"
PROMPT, STEPS, CHUNK = 512, 128, 256

NODE_BARE = textwrap.dedent("""
    import path from "node:path";
    const ort = (await import(path.join(process.env.JS, "node_modules/onnxruntime-node/dist/index.js"))).default;
    const [graph, folder, L, KV, HD, V, P, N, C] = process.argv.slice(2).map((x, i) => i < 2 ? x : Number(x));
    const s = await ort.InferenceSession.create(graph, { intraOpNumThreads: 2, graphOptimizationLevel: "all",
      enableMemPattern: false, logSeverityLevel: 3,
      extra: { session: { model_external_initializers_file_folder_path: folder } } });
    const CAP = Math.ceil((P + N) / 256) * 256;  // the package's growth step
    const bufs = Array.from({ length: 2 * L }, () => new ort.Tensor("float32", new Float32Array(KV * CAP * HD), [1, KV, CAP, HD]));
    let len = 0;
    async function step(ids) {
      const n = ids.length, total = len + n;
      const feeds = { input_ids: new ort.Tensor("int64", BigInt64Array.from(ids.map(BigInt)), [1, n]),
        attention_mask: new ort.Tensor("int64", new BigInt64Array(total).fill(1n), [1, total]),
        logits_to_keep: new ort.Tensor("int64", BigInt64Array.of(1n), []) };
      const fetches = ["logits"];
      for (let i = 0; i < L; i++) for (const [j, k] of [[0, "key"], [1, "value"]]) {
        feeds[`past_key_values.${i}.${k}`] = bufs[2 * i + j]; fetches.push(`present_new.${i}.${k}`);
      }
      const out = await s.run(feeds, fetches);
      for (let i = 0; i < 2 * L; i++) {
        const src = out[`present_new.${i >> 1}.${i & 1 ? "value" : "key"}`].data, dst = bufs[i].data;
        for (let h = 0; h < KV; h++) dst.set(src.subarray(h * n * HD, (h + 1) * n * HD), (h * CAP + len) * HD);
      }
      len = total;
      const lg = out.logits.data; let best = 0;
      for (let v = 1; v < V; v++) if (lg[v] > lg[best]) best = v;
      return best;
    }
    const prompt = Array.from({ length: P }, (_, i) => (1000 + (i * 37) % 5000) % V);
    let tok = 0;
    for (let i = 0; i < P; i += C) tok = await step(prompt.slice(i, i + C));
    const t0 = performance.now();
    for (let i = 0; i < N; i++) tok = await step([tok]);
    console.log(JSON.stringify({ ms: (performance.now() - t0) / N, last: tok }));
""")

NODE_PACKAGE = textwrap.dedent("""
    import path from "node:path";
    const { loadModel } = await import(path.join(process.env.JS, "src/node.js"));
    const [folder, P, N] = process.argv.slice(2).map((x, i) => i ? Number(x) : x);
    const m = await loadModel(folder, { threads: 2, verify: false, maxLength: P + N + 8 });
    const V = m.manifest?.model?.vocab_size ?? 151936;
    const ids = Array.from({ length: P }, (_, i) => (1000 + (i * 37) % 5000) % V);
    await m.complete(ids.slice(0, 16), { maxNewTokens: 4, temperature: 0 });
    const r = await m.complete(ids, { maxNewTokens: N, temperature: 0, ignoreEos: true });
    console.log(JSON.stringify({ ms: 1000 / r.timings.decodeTps }));
""")

PYTHON = textwrap.dedent("""
    import json, sys, time
    import numpy as np, onnxruntime as ort
    graph, mode, L, KV, HD, V, P, N, C = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
    so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.log_severity_level = 3
    so.enable_mem_pattern = False; so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    s = ort.InferenceSession(graph, so)
    cap = -(-(P + N) // 256) * 256
    bufs = [np.zeros((1, KV, cap, HD), np.float32) for _ in range(2 * L)]
    vals = [ort.OrtValue.ortvalue_from_numpy(b) for b in bufs]
    length = 0
    def step(ids):
        global length
        n = len(ids); total = length + n
        b = s.io_binding()
        b.bind_cpu_input("input_ids", np.array([ids], np.int64))
        b.bind_cpu_input("attention_mask", np.ones((1, total), np.int64))
        if mode == "small":
            b.bind_cpu_input("logits_to_keep", np.array(1, np.int64))
        for i in range(L):
            for j, k in enumerate(("key", "value")):
                b.bind_ortvalue_input(f"past_key_values.{i}.{k}", vals[2 * i + j])
                if mode == "small":
                    b.bind_output(f"present_new.{i}.{k}", "cpu")
                else:
                    b.bind_ortvalue_output(f"present.{i}.{k}", vals[2 * i + j])
        b.bind_output("logits", "cpu")
        s.run_with_iobinding(b)
        res = b.get_outputs()  # in binding order: the KV outputs, then logits (OrtValues: no copy)
        if mode == "small":
            for i in range(2 * L):
                bufs[i][:, :, length:total] = res[i].numpy()
        length = total
        return int(res[-1].numpy()[0, -1].argmax())
    prompt = [(1000 + (i * 37) % 5000) % V for i in range(P)]
    if mode == "small":
        for i in range(0, P, C): tok = step(prompt[i:i + C])
    else:  # the exported graph computes logits for every fed position: chunks of 64, as the runtime does
        for i in range(0, P, 64): tok = step(prompt[i:i + 64])
    t0 = time.perf_counter()
    for _ in range(N): tok = step([tok])
    ms = (time.perf_counter() - t0) / N * 1000
    print(json.dumps({"ms": ms, "last": tok}))
""")


def small_graph(folder: Path, work: Path) -> Path:
    """The graph the package runs in Node, written beside the artifact's other files."""
    code = ("import fs from 'node:fs'; import path from 'node:path';"
            "const { smallOutputGraph } = await import(path.join(process.env.JS, 'src/small_outputs.js'));"
            "const b = smallOutputGraph(fs.readFileSync(process.argv[1]), 'float32');"
            "if (!b) { console.error('error: the graph cannot be rewritten'); process.exit(2); }"
            "fs.writeFileSync(process.argv[2], b);")
    out = work / "model.onnx"
    subprocess.run(["node", "--input-type=module", "-e", code, str(folder / "model.onnx"), str(out)],
                   check=True, env={**os.environ, "JS": str(JS)})
    for f in folder.iterdir():
        if f.name != "model.onnx":  # onnxruntime refuses weights reached through a link out of the folder
            try:
                os.link(f.resolve(), work / f.name)
            except OSError:
                shutil.copyfile(f, work / f.name)
    return out


def run(cmd: list[str]) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "JS": str(JS)})
    if p.returncode != 0:
        die(f"error: {' '.join(cmd[:3])} failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=PROMPT)
    ap.add_argument("--new-tokens", type=int, default=STEPS)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    folder = a.folder.expanduser().resolve()
    if not (folder / "qwen_edge.json").is_file() or not (folder / "model.onnx").is_file():
        die(f"error: {a.folder} is not a qwen-edge model folder")
    if a.rounds < 1 or a.prompt_tokens < 1 or a.new_tokens < 1:
        die("error: --rounds, --prompt-tokens and --new-tokens must be >= 1")
    if not (JS / "node_modules" / "onnxruntime-node").is_dir():
        die("error: js/node_modules is missing: run `npm ci` in js/ (or bash scripts/test.sh)")
    spec = json.loads((folder / "qwen_edge.json").read_text())["model"]
    L, KV, HD, V = spec["num_layers"], spec["num_kv_heads"], spec["head_dim"], spec["vocab_size"]
    dims = [str(x) for x in (L, KV, HD, V)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        graph = small_graph(folder, work)
        (work / "bare.mjs").write_text(NODE_BARE)
        (work / "package.mjs").write_text(NODE_PACKAGE)
        (work / "py.py").write_text(PYTHON)
        cmds = {
            "python-inplace": [sys.executable, str(work / "py.py"), str(folder / "model.onnx"), "inplace", *dims,
                               str(a.prompt_tokens), str(a.new_tokens), str(CHUNK)],
            "python-small": [sys.executable, str(work / "py.py"), str(graph), "small", *dims,
                             str(a.prompt_tokens), str(a.new_tokens), str(CHUNK)],
            "node-bare": ["node", str(work / "bare.mjs"), str(graph), str(folder), *dims,
                          str(a.prompt_tokens), str(a.new_tokens), str(CHUNK)],
            "node-package": ["node", str(work / "package.mjs"), str(folder), str(a.prompt_tokens), str(a.new_tokens)],
        }
        ms: dict[str, list[float]] = {k: [] for k in cmds}
        last: dict[str, int] = {}  # the last greedy token: the same computation in every loop but the package's
        for r in range(a.rounds):
            for k, cmd in cmds.items():
                out = run(cmd)
                ms[k].append(out["ms"])
                if "last" in out:
                    last[k] = out["last"]
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in ms.items()),
                  file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in ms.items()}
    ratio = [p / n for p, n in zip(ms["python-inplace"], ms["node-package"])]
    res = {"folder": str(folder), "prompt_tokens": a.prompt_tokens, "steps": a.new_tokens, "rounds": a.rounds,
           "ms_per_step": ms, "median_ms": med, "last_token": last, "same_tokens": len(set(last.values())) == 1,
           "node_package_over_python": {"per_round": ratio, "median": statistics.median(ratio)},
           "when": time.strftime("%Y-%m-%d %H:%M")}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    for k, v in med.items():
        print(f"{k:15s} median {v:6.2f} ms/step ({1000 / v:5.1f} tok/s)  rounds: " + " ".join(f"{x:.2f}" for x in ms[k]))
    print("the loops' last greedy tokens: " + ", ".join(f"{k} {v}" for k, v in last.items()))
    print(f"Node package / Python decode speed: median {statistics.median(ratio):.2f}x "
          f"(rounds {min(ratio):.2f}-{max(ratio):.2f})")


if __name__ == "__main__":
    main()
