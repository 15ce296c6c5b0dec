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

Two passes compute the same numbers. `fisher` + `predict` hold the whole model in fp32 with its gradient
and the Fisher accumulator (12 bytes per weight: 11 GB for the 0.5B); kept as the reference the tests
compare against. `predicted_kl_by_layer`, what `quantize` runs, streams the model one decoder layer at a
time: a forward pass over every window saves each layer's input (to disk), the head samples the labels
and starts the gradient, then each layer from the last to the first is loaded, recomputed from its saved
input and back-propagated; its squared weight gradients are summed over the windows and turned into
predicted KL at once, and the layer is dropped. It holds one layer, the token table(s) and one window's
logits (2.2 GB for the 0.5B; ~10 GB for a 7B), at the cost of one more forward pass.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from ..pack import rtn
from ..spec import ModelSpec, packed_sources
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
    return {key: _predict_one(fish[key], count, tokens, _weight(key, weights, spec), fmts)
            for key, fmts in formats.items()}


METHOD_VERSION = 1  # bump when the numbers this module computes change: cached sensitivities are keyed on it
ROWS = 8192  # rows of a table per RTN pass: blocks run along a row, so row chunks give the same errors


def _predict_one(fk: torch.Tensor, count: int, tokens: int, w: np.ndarray,
                 fmts: Iterable[Format | None]) -> dict[str, float]:
    scale = 0.5 / (count * tokens)
    fk = fk.numpy() if isinstance(fk, torch.Tensor) else fk
    out: dict[str, float] = {}
    for f in fmts:
        if f is None:
            out["fp32"] = 0.0
            continue
        total = 0.0
        for r in range(0, w.shape[0], ROWS):
            wr = w[r:r + ROWS]
            d = rtn(wr, f.bits, f.group_size).dequantize() - wr
            total += float(np.einsum("ij,ij,ij->", fk[r:r + ROWS], d, d, dtype=np.float64))
        out[str(f)] = scale * total
    return out


def predicted_kl_by_layer(spec: ModelSpec, weights: Any, windows: np.ndarray,
                          formats: dict[str, Iterable[Format | None]], *, samples_per_window: int = 1,
                          seed: int = 0, progress: bool = True, threads: int = 0,
                          workdir: str | None = None) -> dict[str, dict[str, float]]:
    """predict(fisher(...)) in bounded memory: one decoder layer at a time (module docstring). Layer inputs
    are kept in files under `workdir` (a temporary folder by default), removed on return."""
    import tempfile
    from pathlib import Path
    if threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    L, K = spec.num_layers, samples_per_window
    tied = spec.tie_word_embeddings
    count, seq = len(windows) * K, windows.shape[1]
    cos, sin = rope_tables(spec, seq)
    ids = [torch.from_numpy(np.asarray(w, dtype=np.int64)) for w in windows]
    t0 = time.perf_counter()
    steps, done = 3 + 2 * L, 0

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        if progress:
            el = time.perf_counter() - t0
            print(f"\rsensitivity (layer by layer): {done}/{steps} {what} [{el:.0f} s]", end="", file=sys.stderr,
                  flush=True)

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="qwen-edge-sensitivity-", dir=workdir) as tmp:
        saved = Path(tmp)

        def save(i: int, xs: list[torch.Tensor]) -> None:
            np.save(saved / f"x{i}.npy", torch.stack(xs).numpy())

        def load(i: int) -> list[torch.Tensor]:
            return list(torch.from_numpy(np.load(saved / f"x{i}.npy")))

        # forward, layer by layer over every window; each layer's input saved
        emb_w = np.asarray(weights.get("model.embed_tokens.weight"), dtype=np.float32)
        xs = [torch.from_numpy(emb_w[t.numpy()])[None] for t in ids]
        if not tied:
            del emb_w
        tick("embedding")
        with torch.no_grad():
            for i in range(L):
                save(i, xs)
                layer = DecoderLayer(spec, weights, i)
                xs = [layer.forward(x, cos, sin) for x in xs]
                del layer
                tick(f"forward {i}")
        # the head: labels drawn from the model's own distribution (the generator as fisher() draws them),
        # its Fisher, and the gradient at the last layer's output per (window, sample)
        head = torch.from_numpy(emb_w if tied else np.ascontiguousarray(weights.get("lm_head.weight"),
                                                                        dtype=np.float32))
        head.requires_grad_(True)
        norm = torch.from_numpy(np.asarray(weights.get("model.norm.weight"), dtype=np.float32))
        head_acc = torch.zeros_like(head, requires_grad=False)
        head_rows: list[torch.Tensor] = []  # tied: the head's gradient on the rows each window's tokens embed
        gen = torch.Generator().manual_seed(seed)
        dxs: list[torch.Tensor] = []
        for n, x in enumerate(xs):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logp = F.log_softmax(rms_norm(x, norm, spec.rms_norm_eps)[0] @ head.T, dim=-1)
                probs = logp.detach().exp()
                for k in range(K):
                    y = torch.multinomial(probs, 1, generator=gen)[:, 0]
                    ll = logp.gather(1, y[:, None]).sum()
                    gh, gx = torch.autograd.grad(ll, [head, x], retain_graph=k + 1 < K)
                    head_acc.addcmul_(gh, gh)
                    if tied:
                        head_rows.append(gh[ids[n]].clone())
                    dxs.append(gx)
            del logp, probs
        head.requires_grad_(False)
        del xs
        tick("head")
        if not tied:
            out[HEAD] = _predict_one(head_acc, count, seq, head.numpy(), formats[HEAD])
            del head, head_acc
        # backward, layer by layer: recompute from the saved input, back-propagate, sum squared gradients
        for i in reversed(range(L)):
            layer = DecoderLayer(spec, weights, i)
            ws = [layer.w[name].requires_grad_(True) for name in LINEARS]
            acc = [torch.zeros_like(w) for w in ws]
            inputs = load(i)
            new_dxs = []
            for j, dx in enumerate(dxs):
                x = inputs[j // K].detach().requires_grad_(True)
                with torch.enable_grad():
                    y = layer.forward(x, cos, sin)
                    gx, *gw = torch.autograd.grad(y, [x, *ws], grad_outputs=dx)
                for a, g in zip(acc, gw):
                    a.addcmul_(g, g)
                new_dxs.append(gx)
            dxs = new_dxs
            del inputs
            for name, a, w in zip(LINEARS, acc, ws):
                key = f"model.layers.{i}.{name}"
                out[key] = _predict_one(a, count, seq, w.detach().numpy(), formats[key])
            del layer, ws, acc
            (saved / f"x{i}.npy").unlink()
            tick(f"backward {i}")
        # the embedding: each window's gradient lands on the rows of its tokens
        key = TABLE if tied else EMBED
        table_acc = head_acc if tied else torch.zeros(spec.vocab_size, spec.hidden_size)
        for j, dx in enumerate(dxs):
            t = ids[j // K]
            rows, inv = torch.unique(t, return_inverse=True)
            ge = torch.zeros(len(rows), spec.hidden_size).index_add_(0, inv, dx[0])
            if tied:  # (g_head + g_emb)^2 = g_head^2 (summed above) + 2 g_head g_emb + g_emb^2, on these rows
                gh = torch.zeros(len(rows), spec.hidden_size)
                gh[inv] = head_rows[j]
                table_acc[rows] += 2 * gh * ge + ge * ge
            else:
                table_acc[rows] += ge * ge
        out[key] = _predict_one(table_acc, count, seq, emb_w if tied else
                                np.asarray(weights.get("model.embed_tokens.weight"), dtype=np.float32), formats[key])
        tick("embedding")
    if progress:
        print(file=sys.stderr)
    return {k: out[k] for k in formats}


def _weight(key: str, weights: Any, spec: ModelSpec) -> np.ndarray:
    if key in (TABLE, EMBED):
        return np.asarray(weights.get("model.embed_tokens.weight"), dtype=np.float32)
    if key == HEAD:
        return np.asarray(weights.get("lm_head.weight"), dtype=np.float32)
    layer, name = key.split(".")[2], key.split(".", 3)[3]
    return np.concatenate([np.asarray(weights.get(n), dtype=np.float32)
                           for n in packed_sources(int(layer), name)])
