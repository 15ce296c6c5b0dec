"""End to end on the bundled example model: fetch the real Qwen2.5-Coder-0.5B-Instruct GGUF, export it to
ONNX and check the export against transformers (the full-precision reference); quantize it with the
recommended 410 MiB int4 recipe (GPTQ), run it, serve it over the OpenAI API and ask it through the official
client, gate its accuracy against the fp32 export, and benchmark both.

    python scripts/demo.py [--out out] [--recipe recipes/qwen2.5-coder-0.5b-instruct-410mib.json]

About fifteen minutes on 2 cores (GPTQ with 32 x 512 calibration tokens is most of it). `--target-size
410MiB` instead of the recipe recomputes the plan (a 4-minute sensitivity pass, and a few minutes to time
the formats on this CPU the first time): the default speed floor (as fast as the plain int4 file) gives a
more accurate, slower plan than the recipe's, which was made with `--target-speed 1.07x` (docs/quantize.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROMPT = ("The Rust programming language is known for memory safety without garbage collection. "
          "Its ownership model means that")


def sh(*args: str) -> None:
    print("$ qwen-edge " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "qwen_edge.cli", *args], check=True)


def serve_demo(folder: str) -> None:
    """Start `qwen-edge serve`, stream one chat answer through the official openai client, stop it."""
    import json
    print(f"$ qwen-edge serve {folder} --port 0 --json   (then the openai client)", flush=True)
    srv = subprocess.Popen([sys.executable, "-m", "qwen_edge.cli", "serve", folder, "--port", "0", "--json",
                            "--ctx", "4096"], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(srv.stdout.readline())
        from openai import OpenAI
        client = OpenAI(base_url=info["url"] + "/v1", api_key="none")
        for chunk in client.chat.completions.create(model=info["model"], stream=True, max_tokens=64, temperature=0,
                                                    messages=[{"role": "user", "content": "Name three uses of Rust."}]):
            if chunk.choices:
                print(chunk.choices[0].delta.content or "", end="", flush=True)
        print()
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out")
    ap.add_argument("--recipe", default=str(Path(__file__).resolve().parent.parent / "recipes" /
                                             "qwen2.5-coder-0.5b-instruct-410mib.json"))
    a = ap.parse_args()
    from qwen_edge.assets import example_gguf
    gguf = example_gguf()
    out = Path(a.out)
    sh("export", str(gguf), "-o", str(out / "fp32"), "--max-length", "4096", "--force")

    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from qwen_edge import Model

    folder = out / "fp32"
    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(PROMPT).ids
    t0 = time.perf_counter()
    ref_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0].numpy()
        ref_gen = ref_model.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32,
                                     do_sample=False)[0, len(ids):].tolist()
    sess = Model.load(folder, threads=2, max_length=512)  # the runtime's own cache and bindings
    runner = sess.new_runner()
    runner.append(ids)
    ours = runner.forward_last(len(ids)).copy()  # every prompt position's logits
    gen, logits = [], ours[-1]
    for _ in range(32):
        gen.append(int(np.argmax(logits)))
        runner.push(gen[-1])
        logits = runner.forward()
    top1 = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    print(f"\nreference check on {len(ids)} prompt tokens ({time.perf_counter() - t0:.0f} s):")
    print(f"  top-1 agreement with transformers, every position: {top1:.1%}")
    print(f"  max |logit difference|: {np.abs(ours - ref).max():.2e}")
    print(f"  32 greedy tokens identical: {gen == ref_gen}")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    print(f"  continuation: {PROMPT}{tok.decode(gen)!r}")
    if top1 < 1.0 or gen != ref_gen:
        sys.exit("demo: the export does not match the reference")
    sess.close()
    del ref_model, sess, runner

    int4 = str(out / "int4")
    sh("quantize", str(gguf), "-o", int4, "--method", "gptq", "--recipe", a.recipe, "--max-length", "4096", "--force")
    sh("run", int4, "-p", "Write a haiku about rust", "--temperature", "0", "--max-new-tokens", "48")
    serve_demo(int4)
    sh("eval", str(out / "fp32"), int4, "--reference", str(out / "fp32"), "--dataset", "enwiki", "--ctx", "512",
       "--max-tokens", "8192", "--gate", "kl_mean<=0.025", "--gate", "top1>=90%", "--force",
       "--markdown", str(out / "eval.md"), "--plot", str(out / "tradeoff.png"))
    # and on code (ten standard-library modules never calibrated on): these are Coder models
    sh("eval", int4, "--reference", str(out / "fp32"), "--dataset", "python", "--ctx", "512", "--max-tokens", "8192",
       "--gate", "kl_mean<=0.028", "--gate", "top1>=91%")
    for folder in (str(out / "fp32"), int4):
        sh("bench", folder, "--prompt-tokens", "256", "--new-tokens", "64", "--runs", "3")


if __name__ == "__main__":
    main()
