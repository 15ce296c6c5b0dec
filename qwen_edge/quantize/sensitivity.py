"""How much each tensor matters: the KL that quantizing it alone would cost, predicted per format.

For a small weight change d, the model's output moves by KL(p || p_d) ~ 1/2 d^T F d per token, with F the
Fisher information of the weights. Its diagonal is measured here on calibration windows: the full model
runs forward in fp32, a label is drawn at every position from the model's own distribution, and the
gradient of those labels' log-likelihood is squared and summed (E[g g^T] = F for labels drawn from the
model; no real labels are needed, and none of the held-out text). Then for tensor t and format f,

    predicted KL_t(f) = 1/2 * sum_i F_i * (RTN_f(W) - W)_i^2 / tokens per window

in nats per token, the unit `qwen-edge eval` reports. The proxy assumes tensors add up and weights
interact only through their own variance (a diagonal F); docs/quantize.md compares it with measured KL.
GPTQ lowers each tensor's error below RTN's, so for a GPTQ file these are upper bounds used for ranking.
The whole model is held in fp32 with its gradient and the Fisher accumulator (12 bytes per weight plus one
window's activations: 11 GB for the 0.5B): up to about 1B on a 24 GB machine; footprint.py refuses a larger
model before this starts, naming a recipe or a uniform format instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..pack import rtn
from ..spec import ModelSpec
from .layer import LINEARS, DecoderLayer, rms_norm, rope_tables
from .recipe import Format

TABLE, EMBED, HEAD = "table", "embedding", "lm_head"


def fisher(spec: ModelSpec, weights: Any, windows: np.ndarray, *, samples_per_window: int = 1,
           seed: int = 0, progress: bool = True, threads: int = 0) -> tuple[dict[str, torch.Tensor], int]:
    """Diagonal Fisher (summed squared gradients) of every packed linear and the table(s), and the count
    of gradient samples it sums. Keys: exporter linear names, and "table" (tied) or "embedding"/"lm_head"."""
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    layers = [DecoderLayer(spec, weights, i) for i in range(spec.num_layers)]
    params: dict[str, torch.Tensor] = {}
    for layer in layers:
        for name in LINEARS:
            layer.w[name].requires_grad_(True)
            params[f"model.layers.{layer.i}.{name}"] = layer.w[name]
    tied = spec.tie_word_embeddings
    emb = torch.from_numpy(np.ascontiguousarray(weights.get("model.embed_tokens.weight"), dtype=np.float32))
    emb.requires_grad_(True)
    params[TABLE if tied else EMBED] = emb
    head = emb
    if not tied:
        head = torch.from_numpy(np.ascontiguousarray(weights.get("lm_head.weight"), dtype=np.float32))
        head.requires_grad_(True)
        params[HEAD] = head
    norm = torch.from_numpy(np.asarray(weights.get("model.norm.weight"), dtype=np.float32))
    acc = {k: torch.zeros_like(p, requires_grad=False) for k, p in params.items()}
    names, tensors = list(params), list(params.values())
    cos, sin = rope_tables(spec, windows.shape[1])
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for n, ids in enumerate(windows):
        with torch.enable_grad():
            x = emb[torch.from_numpy(np.asarray(ids, dtype=np.int64))][None]
            for layer in layers:
                x = layer.forward(x, cos, sin)
            logits = rms_norm(x, norm, spec.rms_norm_eps)[0] @ head.T
            logp = F.log_softmax(logits, dim=-1)
            probs = logp.detach().exp()
            for k in range(samples_per_window):
                y = torch.multinomial(probs, 1, generator=gen)[:, 0]
                ll = logp.gather(1, y[:, None]).sum()
                grads = torch.autograd.grad(ll, tensors, retain_graph=k + 1 < samples_per_window)
                for key, g in zip(names, grads):
                    acc[key].addcmul_(g, g)
        if progress:
            el = time.perf_counter() - t0
            print(f"\rsensitivity: {n + 1}/{len(windows)} windows [{el:.0f} s]", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return acc, len(windows) * samples_per_window


def predict(fish: dict[str, torch.Tensor], count: int, tokens: int, weights: Any, spec: ModelSpec,
            formats: dict[str, Iterable[Format | None]]) -> dict[str, dict[str, float]]:
    """Predicted per-token KL of each tensor in each of its candidate formats ("fp32": 0)."""
    scale = 0.5 / (count * tokens)
    out: dict[str, dict[str, float]] = {}
    for key, fmts in formats.items():
        w = _weight(key, weights, spec)
        fk = fish[key].numpy()
        out[key] = {}
        for f in fmts:
            if f is None:
                out[key]["fp32"] = 0.0
                continue
            d = rtn(w, f.bits, f.group_size).dequantize() - w
            out[key][str(f)] = float(scale * np.einsum("ij,ij,ij->", fk, d, d, dtype=np.float64))
    return out


def _weight(key: str, weights: Any, spec: ModelSpec) -> np.ndarray:
    if key in (TABLE, EMBED):
        return np.asarray(weights.get("model.embed_tokens.weight"), dtype=np.float32)
    if key == HEAD:
        return np.asarray(weights.get("lm_head.weight"), dtype=np.float32)
    layer, name = key.split(".")[2], key.split(".", 3)[3]
    p = f"model.layers.{layer}"
    parts = {"self_attn.qkv_proj": [f"{p}.self_attn.{n}_proj.weight" for n in "qkv"],
             "self_attn.o_proj": [f"{p}.self_attn.o_proj.weight"],
             "mlp.gate_up_proj": [f"{p}.mlp.gate_proj.weight", f"{p}.mlp.up_proj.weight"],
             "mlp.down_proj": [f"{p}.mlp.down_proj.weight"]}[name]
    return np.concatenate([np.asarray(weights.get(n), dtype=np.float32) for n in parts])
