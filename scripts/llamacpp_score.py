"""Score a GGUF with llama.cpp on the exact windows and reference that `qwen-edge eval` uses.

Run by scripts/bench_quant.py with the benchmark venv's python (llama_cpp from the pinned sdist; numpy and
qwen_edge from the parent interpreter). The token ids come from our tokenizer and are fed to llama.cpp as
ids, so both families see the same tokens; every window is evaluated from an empty cache with all
positions' logits, and scored by qwen_edge.eval.score against the saved reference.

    python llamacpp_score.py MODEL.gguf REFERENCE.npz TOKENIZER.json --ctx 512 --max-tokens 16384
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("reference")
    ap.add_argument("tokenizer")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    from llama_cpp import Llama
    from tokenizers import Tokenizer

    from qwen_edge.data.enwiki import enwiki_text
    from qwen_edge.eval import metrics as M
    from qwen_edge.eval import reference as R
    from qwen_edge.eval import windows as W
    from qwen_edge.eval.score import score

    ref = R.load(a.reference)
    tokens = W.tokenize(Tokenizer.from_file(a.tokenizer), enwiki_text(split="evaluation"), a.max_tokens)
    wins = W.plan(len(tokens), a.ctx, a.ctx)
    if W.fingerprint(tokens) != ref.meta["tokens_sha256"]:
        raise SystemExit("the tokens differ from the reference's")
    llm = Llama(model_path=a.gguf, n_ctx=a.ctx, n_batch=a.ctx, n_ubatch=a.ctx, logits_all=True,
                n_threads=a.threads, n_threads_batch=a.threads, verbose=False)
    vocab = int(ref.meta["vocab_size"])

    def logits(ids: np.ndarray) -> np.ndarray:
        llm.reset()
        llm.eval([int(t) for t in ids])
        out = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        if out.shape[1] != vocab:
            raise SystemExit(f"llama.cpp returned {out.shape[1]} logits per token, the reference has {vocab}")
        return out

    t = time.perf_counter()
    st = score(logits, tokens, wins, top_k=0, reference=ref.compact, desc="llama.cpp", progress=False)
    out = {**M.perplexity(st.nll), **M.against_reference(st.nll, ref.compact.nll, st.kl, st.top1),
           "seconds": time.perf_counter() - t}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
