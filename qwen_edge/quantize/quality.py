"""Quality of a quantized folder against its fp32 export on held-out enwiki text: perplexity, KL
divergence (mean, p99) and top-1 agreement, each window one onnxruntime forward (empty past, every
position's logits). Used by the real-model tests and scripts/bench_quant.py.

The text is the enwiki evaluation split: articles that calibration never reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np



def eval_windows(folder: Path, n_windows: int, seq_len: int) -> np.ndarray:
    from tokenizers import Tokenizer

    from ..data.enwiki import enwiki_text
    ids = np.asarray(Tokenizer.from_file(str(Path(folder) / "tokenizer.json")).encode(enwiki_text(split="evaluation")).ids,
                     np.int64)
    n = len(ids) // seq_len
    if n < n_windows:
        raise ValueError(f"only {n} held-out windows of {seq_len} tokens")
    return ids[: n_windows * seq_len].reshape(n_windows, seq_len)


class _Model:
    def __init__(self, folder: Path, threads: int):
        import json

        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(str(Path(folder) / "model.onnx"), so, providers=["CPUExecutionProvider"])
        self.spec = json.loads((Path(folder) / "qwen_edge.json").read_text())["model"]

    def logits(self, ids: np.ndarray) -> np.ndarray:
        s = self.spec
        feeds = {"input_ids": ids[None], "attention_mask": np.ones((1, len(ids)), np.int64)}
        empty = np.zeros((1, s["num_kv_heads"], 0, s["head_dim"]), np.float32)
        for i in range(s["num_layers"]):
            feeds[f"past_key_values.{i}.key"] = feeds[f"past_key_values.{i}.value"] = empty
        return self.sess.run(["logits"], feeds)[0][0]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare(reference: Path, folders: list[Path], windows: np.ndarray, threads: int = 2) -> list[dict]:
    """Per folder: ppl, ref_ppl, ppl_increase (ratio - 1), kl_mean, kl_p99, top1, tokens."""
    ref = _Model(reference, threads)
    models = [_Model(f, threads) for f in folders]
    ref_nll: list[np.ndarray] = []
    stats = [{"nll": [], "kl": [], "top1": []} for _ in folders]
    for w in windows:
        lp = _log_softmax(ref.logits(w)[:-1])
        tgt = w[1:]
        ref_nll.append(-lp[np.arange(len(tgt)), tgt])
        p = np.exp(lp)
        top = lp.argmax(-1)
        for m, st in zip(models, stats):
            lq = _log_softmax(m.logits(w)[:-1])
            st["nll"].append(-lq[np.arange(len(tgt)), tgt])
            st["kl"].append((p * (lp - lq)).sum(-1))
            st["top1"].append(lq.argmax(-1) == top)
            del lq
    rn = np.concatenate(ref_nll)
    out = []
    for st in stats:
        nll, kl, top1 = (np.concatenate(st[k]) for k in ("nll", "kl", "top1"))
        out.append({"tokens": int(len(nll)), "ref_ppl": float(np.exp(rn.mean())), "ppl": float(np.exp(nll.mean())),
                    "ppl_increase": float(np.exp(nll.mean() - rn.mean()) - 1), "kl_mean": float(kl.mean()),
                    "kl_p99": float(np.percentile(kl, 99)), "top1": float(top1.mean())})
    return out
