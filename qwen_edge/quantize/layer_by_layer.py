"""The layer-by-layer driver for GPTQ and AWQ, each linear in the format its plan gives it.

Each decoder layer is loaded alone in fp32. GPTQ is true-sequential inside the layer: q/k/v are quantized
on the Hessian of the layer's input; o_proj's Hessian is then taken from the attention output computed
with the quantized q/k/v, gate/up's from the MLP input after the quantized o_proj, down's from the
activations of the quantized gate/up. So every linear is fitted to the inputs it will really see, and the
layer's output with all four quantized feeds the next layer. Memory holds one layer's float weights, the
packed results and a few hidden-state buffers [samples, seq_len, hidden].
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..pack import NBits, QWeight, to_matmulnbits
from ..spec import ModelSpec
from .awq import awq_quantize, search_scale, token_error
from .gptq import Hessian, damped, gptq_quantize, inverse_factor, refit_scales
from .layer import LINEARS, DecoderLayer, rms_norm, rope_tables
from .recipe import Format


@dataclass
class Options:
    method: str
    bits: int = 4  # the format of every linear unless `formats` names it
    group_size: int = 128
    formats: dict[str, Format] = field(default_factory=dict)  # model.layers.N.<linear> -> format
    sym: bool = False
    act_order: bool = False
    damp: float = 0.01
    refit: bool = True  # GPTQ: least-squares refit of the group scales under the Hessian
    true_sequential: bool = True  # GPTQ: each linear's Hessian from the already-quantized ones before it
    asymmetric: bool = False  # GPTQ: fit the float layer's outputs from the quantized inputs, within each layer
    batch: int = 8  # samples per forward
    awq_tokens: int = 2048  # token rows kept per linear for AWQ's scale search (512 of them for clipping)
    awq_attn_tokens: int = 4096  # whole sequences (this many tokens) scoring AWQ's q/k/v scales
    awq_mlp_tokens: int = 1024  # token rows scoring AWQ's gate/up scales by the MLP's output
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)

    def fmt(self, layer: int, name: str) -> Format:
        return self.formats.get(f"model.layers.{layer}.{name}", Format(self.bits, self.group_size))


@dataclass
class Result:
    linears: dict[str, NBits]  # exporter names, e.g. model.layers.3.self_attn.qkv_proj
    overrides: dict[str, np.ndarray]  # float weights changed by the method (AWQ's folded norm scales)
    seconds: float = 0.0
    per_layer_error: list[float] = field(default_factory=list)  # each layer's RMS relative error per token
    refit_gain: list[float] = field(default_factory=list)  # GPTQ: H-weighted error after / before the refit


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="layer", file=sys.stderr,
                bar_format="{desc}: {n_fmt}/{total_fmt} layers [{elapsed}<{remaining}, {rate_fmt}]")


@torch.no_grad()
def calibrate(spec: ModelSpec, weights, windows: np.ndarray, opts: Options,
              embed_dequant: np.ndarray | None = None, progress: bool = True, checkpoint=None) -> Result:
    """Quantize every decoder linear with GPTQ or AWQ, layer by layer.

    `embed_dequant`: the embedding as the exported graph will see it (dequantized int8, say), or only the
    rows the windows use with `windows` indexing into them; None = the float table.
    `checkpoint`: a resume.Checkpoint; finished layers are read from it and each new one saved to it.
    """
    torch.set_num_threads(max(1, opts.threads))
    torch.set_flush_denormal(True)  # subnormal intermediates make the CPU kernels many times slower
    t0 = time.perf_counter()
    n, L = windows.shape
    emb = embed_dequant if embed_dequant is not None else weights.get("model.embed_tokens.weight")
    h = torch.from_numpy(np.ascontiguousarray(np.asarray(emb, dtype=np.float32)[windows]))
    del emb
    cos, sin = rope_tables(spec, L)
    rows = None
    if opts.method == "awq":
        g = torch.Generator().manual_seed(1234)
        rows = torch.sort(torch.randperm(n * L, generator=g)[: opts.awq_tokens]).values
    result = Result(linears={}, overrides={})
    start = checkpoint.done if checkpoint is not None else 0
    if start:
        for i in range(start):  # the finished layers' packed linears stay on disk (SavedLinears, below)
            result.overrides.update(checkpoint.load_layer(i)[1])
        result.per_layer_error = list(checkpoint.figures.get("per_layer_error", []))
        result.refit_gain = list(checkpoint.figures.get("refit_gain", []))
        h = torch.from_numpy(checkpoint.hidden())
        if progress:
            print(f"{opts.method}: resuming after layer {start} of {spec.num_layers} ({checkpoint.folder})",
                  file=sys.stderr, flush=True)
    bar = _progress(spec.num_layers, f"{opts.method}", progress)
    if bar is not None and start:
        bar.update(start)
    try:
        for i in range(start, spec.num_layers):
            overridden = set(result.overrides)
            layer = DecoderLayer(spec, weights, i)
            ref = layer.forward(h[: opts.batch], cos, sin)  # float output of one batch: the layer's error
            if opts.method == "gptq" and opts.true_sequential:
                # asymmetric: within the layer only (a float stream across layers diverges from the quantized
                # one on the attention-sink tokens and made the fit far worse: KL 0.39 against 0.028, measured)
                q, out, _ = _gptq_layer(layer, h, cos, sin, opts, result, h if opts.asymmetric else None)
            elif opts.method == "gptq":
                q, out = _gptq_layer_one_pass(layer, h, cos, sin, opts, result)
            else:
                q = _awq_layer(layer, h, cos, sin, opts, rows)
                for key in ("input_layernorm", "post_attention_layernorm"):
                    result.overrides[layer.hf_name(key)] = layer.norm[key].numpy().copy()
                out = _forward_all(layer, h, cos, sin, opts.batch)
            for name in LINEARS:
                result.linears[f"model.layers.{i}.{name}"] = to_matmulnbits(q[name])
            # per token, so the attention-sink tokens (100x the others' norm) do not stand for the layer
            result.per_layer_error.append(token_error(out[: opts.batch], ref) ** 0.5)
            del ref, layer
            h = out
            if checkpoint is not None:
                mine = {k: result.linears.pop(k) for k in list(result.linears) if k.startswith(f"model.layers.{i}.")}
                checkpoint.save_layer(i, mine, {k: v for k, v in result.overrides.items() if k not in overridden},
                                      h.numpy(), {"per_layer_error": result.per_layer_error,
                                                  "refit_gain": result.refit_gain})
                del mine
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if checkpoint is not None:
        result.linears = checkpoint.saved_linears(spec.num_layers, LINEARS)
    result.seconds = time.perf_counter() - t0
    return result


def _forward_all(layer: DecoderLayer, h: torch.Tensor, cos, sin, batch: int) -> torch.Tensor:
    out = torch.empty_like(h)
    for b0 in range(0, len(h), batch):
        out[b0:b0 + batch] = layer.forward(h[b0:b0 + batch], cos, sin)
    return out


class _Stats:
    """H = 2/n X^T X of a linear's (quantized-stream) inputs and, for the asymmetric fit, C = 2/n Xf^T X
    with Xf the same inputs in the float stream."""

    def __init__(self, k: int, asym: bool):
        self.h, self.c = Hessian(k), (Hessian(k) if asym else None)

    def add(self, x: torch.Tensor, xf: torch.Tensor | None) -> None:
        self.h.add(x)
        if self.c is not None:
            a, b = x.reshape(-1, x.shape[-1]), xf.reshape(-1, x.shape[-1])
            c = self.c
            m = a.shape[0]
            c.H.mul_(c.n / (c.n + m))
            c.n += m
            c.H.addmm_(b.T, a, alpha=2.0 / c.n)

    def target(self, w: torch.Tensor, hinv: torch.Tensor) -> torch.Tensor:
        """The weight whose GPTQ fit reproduces the float stream's outputs: W C H^-1 (W itself if symmetric).

        Written as the correction W + W (C - H) H^-1 with only the correction damped: damping W C H^-1 as a
        whole would shrink W along every low-energy input direction (ridge shrinkage) even where the two
        streams agree exactly (measured: KL 0.30 against 0.03)."""
        if self.c is None:
            return w
        # hinv = U with U^T U = damped H^-1 (GPTQ's own factor): B H^-1 = (B U^T) U, no second factorization
        return w + ((w @ (self.c.H - self.h.H)) @ hinv.T) @ hinv


def _gptq_layer(layer: DecoderLayer, h: torch.Tensor, cos, sin, opts: Options, result: Result,
                hf: torch.Tensor | None = None) -> tuple[dict[str, QWeight], torch.Tensor, torch.Tensor | None]:
    """True-sequential GPTQ of one layer; returns the quantized linears, the layer's quantized output and
    (with `hf`, the float model's input to this layer) the float output.

    With `hf` (asymmetric): each linear is fitted to reproduce the float model's output of that linear
    from the inputs the quantized model gives it, min ||W Xf - W_q X||, so errors upstream (earlier layers,
    and q/k/v for o_proj, ...) are corrected where possible; without it, min ||(W - W_q) X|| on X."""
    eps, B, i = layer.spec.rms_norm_eps, opts.batch, layer.i
    ln1, ln2 = layer.norm["input_layernorm"], layer.norm["post_attention_layernorm"]
    batches = [slice(b0, b0 + B) for b0 in range(0, len(h), B)]
    asym = hf is not None
    wf = dict(layer.w)  # float weights (quantization replaces entries, never edits them)
    q: dict[str, QWeight] = {}

    def quantize(name: str, st: _Stats) -> None:
        f = opts.fmt(i, name)
        # one factorization of the damped Hessian serves the asymmetric target and GPTQ
        # (act_order permutes the Hessian: GPTQ factors its own)
        needed = st.c is not None or not opts.act_order
        hinv = inverse_factor(damped(st.h.H, opts.damp)) if needed else None
        w = st.target(wf[name], hinv)
        qw = gptq_quantize(w, st.h.H, f.bits, f.group_size, opts.sym, opts.damp, opts.act_order,
                           hinv=None if opts.act_order else hinv)
        del hinv
        if opts.refit:
            qw, before, after = refit_scales(w, qw, st.h.H)
            result.refit_gain.append(after / before if before > 0 else 1.0)
        q[name] = qw
        layer.w[name] = torch.from_numpy(qw.dequantize())

    st = _Stats(h.shape[-1], asym)
    for sl in batches:
        st.add(rms_norm(h[sl], ln1, eps), rms_norm(hf[sl], ln1, eps) if asym else None)
    quantize("self_attn.qkv_proj", st)
    qd = wf["self_attn.o_proj"].shape[1]
    core = torch.empty(h.shape[0], h.shape[1], qd)
    core_f = torch.empty_like(core) if asym else None
    st = _Stats(qd, asym)
    for sl in batches:
        core[sl] = layer.attention_core(rms_norm(h[sl], ln1, eps), cos, sin)
        if asym:
            core_f[sl] = layer.attention_core(rms_norm(hf[sl], ln1, eps), cos, sin, qkv_w=wf["self_attn.qkv_proj"])
        st.add(core[sl], core_f[sl] if asym else None)
    quantize("self_attn.o_proj", st)
    mid = torch.empty_like(h)
    mid_f = torch.empty_like(h) if asym else None
    st = _Stats(h.shape[-1], asym)
    for sl in batches:
        mid[sl] = h[sl] + layer._lin("self_attn.o_proj", core[sl], None)
        if asym:
            mid_f[sl] = hf[sl] + layer._lin("self_attn.o_proj", core_f[sl], None, wf["self_attn.o_proj"])
        st.add(rms_norm(mid[sl], ln2, eps), rms_norm(mid_f[sl], ln2, eps) if asym else None)
    del core, core_f
    quantize("mlp.gate_up_proj", st)
    st = _Stats(wf["mlp.down_proj"].shape[1], asym)
    for sl in batches:
        x = layer.mlp_act(rms_norm(mid[sl], ln2, eps))
        xf = layer.mlp_act(rms_norm(mid_f[sl], ln2, eps), gate_up_w=wf["mlp.gate_up_proj"]) if asym else None
        st.add(x, xf)
    quantize("mlp.down_proj", st)
    del st
    for sl in batches:  # in place: mid becomes the layer's output (and mid_f the float one)
        mid[sl] += layer.mlp(rms_norm(mid[sl], ln2, eps))
        if asym:
            xf = layer.mlp_act(rms_norm(mid_f[sl], ln2, eps), gate_up_w=wf["mlp.gate_up_proj"])
            mid_f[sl] += layer._lin("mlp.down_proj", xf, None, wf["mlp.down_proj"])
    return q, mid, mid_f


def _gptq_layer_one_pass(layer: DecoderLayer, h: torch.Tensor, cos, sin, opts: Options,
                         result: Result) -> tuple[dict[str, QWeight], torch.Tensor]:
    """The ablation: all four Hessians from one float pass (what true-sequential improves on)."""
    hess: dict[str, Hessian] = {}

    def hook(name: str, x: torch.Tensor) -> None:
        hess.setdefault(name, Hessian(x.shape[-1])).add(x)
    for b0 in range(0, len(h), opts.batch):
        layer.forward(h[b0:b0 + opts.batch], cos, sin, hook)
    q = {}
    for name in LINEARS:
        f = opts.fmt(layer.i, name)
        qw = gptq_quantize(layer.w[name], hess[name].H, f.bits, f.group_size, opts.sym, opts.damp, opts.act_order)
        if opts.refit:
            qw, before, after = refit_scales(layer.w[name], qw, hess[name].H)
            result.refit_gain.append(after / before if before > 0 else 1.0)
        q[name] = qw
    for name in LINEARS:
        layer.w[name] = torch.from_numpy(q[name].dequantize())
    return q, _forward_all(layer, h, cos, sin, opts.batch)


class _Samples:
    """AWQ's token sample per linear input: a fixed set of flat token rows (sorted)."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.offset = 0  # flat token index of the current batch's first token

    def __call__(self, name: str, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        lo, hi = self.offset, self.offset + flat.shape[0]
        sel = self.rows[(self.rows >= lo) & (self.rows < hi)] - lo
        self.samples.setdefault(name, []).append(flat[sel].clone())

    def x(self, name: str) -> torch.Tensor:
        return torch.cat(self.samples[name])


def _awq_layer(layer: DecoderLayer, h: torch.Tensor, cos, sin, opts: Options,
               rows: torch.Tensor) -> dict[str, QWeight]:
    """Search and fold the scales (qkv <- input norm, gate_up <- post-attention norm, down <- up rows),
    then clip-search and quantize each linear on inputs divided by the folded scales.

    q/k/v candidates are scored by the attention block's output on whole sequences (h: the layer's input,
    a few samples), gate/up by the MLP's output on the token sample: what a weight error costs depends on
    what follows it (softmax, SiLU), which the linears' own output error does not see.
    """
    spec, i = layer.spec, layer.i
    col = _Samples(rows)
    L = h.shape[1]
    for b0 in range(0, len(h), opts.batch):
        col.offset = b0 * L
        layer.forward(h[b0:b0 + opts.batch], cos, sin, col)
    fmt = {name: opts.fmt(i, name) for name in LINEARS}
    w, inter, eps = layer.w, spec.intermediate_size, spec.rms_norm_eps
    xs = {name: col.x(name) for name in LINEARS}
    del col
    seqs = h[: max(1, min(len(h), opts.awq_attn_tokens // h.shape[1]))]
    xa = rms_norm(seqs, layer.norm["input_layernorm"], eps)
    ref_a = layer.attention(xa, cos, sin)
    xm = xs["mlp.gate_up_proj"][: opts.awq_mlp_tokens]
    ref_m = layer.mlp(xm)
    losses = {
        "self_attn.qkv_proj": lambda q: token_error(layer.attention(xa, cos, sin, qkv_w=q), ref_a),
        "mlp.gate_up_proj": lambda q: token_error(layer.mlp(xm, gate_up_w=q), ref_m),
    }
    for name, norm in (("self_attn.qkv_proj", "input_layernorm"), ("mlp.gate_up_proj", "post_attention_layernorm")):
        f = fmt[name]
        s = search_scale(xs[name], [w[name]], f.bits, f.group_size, opts.sym, loss=losses[name])
        w[name] = w[name] * s
        layer.norm[norm] = layer.norm[norm] / s
        xs[name] = xs[name] / s
    del xa, ref_a, xm, ref_m, losses
    f = fmt["mlp.down_proj"]
    s = search_scale(xs["mlp.down_proj"], [w["mlp.down_proj"]], f.bits, f.group_size, opts.sym)
    w["mlp.down_proj"] = w["mlp.down_proj"] * s
    gu = w["mlp.gate_up_proj"].clone()
    gu[inter:] = gu[inter:] / s[:, None]  # up rows: its output channel c feeds down's input channel c
    w["mlp.gate_up_proj"] = gu
    xs["mlp.down_proj"] = xs["mlp.down_proj"] / s
    clip_rows = 512
    q = {}
    for name in LINEARS:
        # q/k clipping is skipped (as in the paper's code): attention scores amplify their errors
        x = xs[name][:clip_rows] if name != "self_attn.qkv_proj" else None
        q[name] = awq_quantize(w[name], x, fmt[name].bits, fmt[name].group_size, opts.sym, clip=x is not None)
        layer.w[name] = torch.from_numpy(q[name].dequantize())
    return q


def rtn_linears(formats: Callable[[str], Format], sym: bool) -> Callable[[str, np.ndarray], NBits]:
    """The RTN lookup: quantize whatever weight the exporter hands over, in its plan's format, on the fly."""
    from ..pack import rtn

    def lookup(name: str, w: np.ndarray) -> NBits:
        f = formats(name)
        return to_matmulnbits(rtn(w, f.bits, f.group_size, sym))
    return lookup
