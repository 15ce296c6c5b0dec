"""Calibration data and the layer-by-layer driver for GPTQ and AWQ.

Each decoder layer is loaded alone in fp32 and run twice over the calibration samples: once with its
float weights to gather what the method needs about each linear's inputs (GPTQ: the Hessian; AWQ: a token
sample), and once with the just-quantized weights, whose outputs become the next layer's inputs. So every
layer is calibrated on the outputs of the already-quantized layers before it, and memory holds one layer's
float weights, the packed results and two hidden-state buffers [samples, seq_len, hidden].
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import QwenEdgeError
from ..spec import ModelSpec
from .awq import awq_quantize, search_scale, token_error
from .gptq import Hessian, gptq_quantize
from .layer import LINEARS, DecoderLayer, rms_norm, rope_tables
from ..pack import NBits, QWeight, to_matmulnbits
from .rtn import rtn_quantize



def _tokenizer(write_tokenizer: Callable[[Path], None]):
    import tempfile

    from tokenizers import Tokenizer
    with tempfile.TemporaryDirectory() as d:
        write_tokenizer(Path(d))
        return Tokenizer.from_file(str(Path(d) / "tokenizer.json"))


def calibration_text(name: str) -> str:
    if name == "enwiki":
        from ..data.enwiki import enwiki_text
        return enwiki_text(split="calibration")  # evaluation reads the other articles
    p = Path(name)
    if not p.is_file():
        raise QwenEdgeError(f"calibration must be 'enwiki' or a text file; no such file: {name}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise QwenEdgeError(f"cannot read calibration file {p}: {e}") from None
    if not text.strip():
        raise QwenEdgeError(f"calibration file {p} has no text")
    return text


def calibration_tokens(name: str, write_tokenizer: Callable[[Path], None]) -> np.ndarray:
    return np.asarray(_tokenizer(write_tokenizer).encode(calibration_text(name)).ids, dtype=np.int64)


def sample_windows(ids: np.ndarray, samples: int, seq_len: int, seed: int) -> np.ndarray:
    """`samples` distinct, non-overlapping windows of `seq_len` tokens, chosen by `seed`: [samples, seq_len]."""
    if samples < 1 or seq_len < 2:
        raise QwenEdgeError("--samples must be >= 1 and --seq-len >= 2")
    n = len(ids) // seq_len
    if n < samples:
        raise QwenEdgeError(f"the calibration text has {len(ids)} tokens: not enough for {samples} samples of "
                            f"{seq_len} tokens; lower --samples or --seq-len")
    pick = np.sort(np.random.default_rng(seed).choice(n, size=samples, replace=False))
    return ids[: n * seq_len].reshape(n, seq_len)[pick]


@dataclass
class Options:
    method: str
    bits: int
    group_size: int
    sym: bool = False
    act_order: bool = False
    damp: float = 0.01
    batch: int = 8  # samples per forward
    int8_layers: frozenset[int] = frozenset()  # decoder layers kept at 8 bits (mixed precision)
    awq_tokens: int = 2048  # token rows kept per linear for AWQ's scale search (512 of them for clipping)
    awq_attn_tokens: int = 4096  # whole sequences (this many tokens) scoring AWQ's q/k/v scales
    awq_mlp_tokens: int = 1024  # token rows scoring AWQ's gate/up scales by the MLP's output
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass
class Result:
    linears: dict[str, NBits]  # exporter names, e.g. model.layers.3.self_attn.qkv_proj
    overrides: dict[str, np.ndarray]  # float weights changed by the method (AWQ's folded norm scales)
    seconds: float = 0.0
    per_layer_error: list[float] = field(default_factory=list)  # each layer's RMS relative error per token


class _Collector:
    """The hook for pass 1: Hessians (GPTQ) or token samples (AWQ) per linear."""

    def __init__(self, opts: Options, rows: torch.Tensor | None):
        self.opts, self.rows = opts, rows  # rows: flat token indices kept for AWQ, sorted
        self.hessians: dict[str, Hessian] = {}
        self.samples: dict[str, list[torch.Tensor]] = {}
        self.offset = 0  # flat token index of the current batch's first token

    def __call__(self, name: str, x: torch.Tensor) -> None:
        flat = x.reshape(-1, x.shape[-1])
        if self.opts.method == "gptq":
            self.hessians.setdefault(name, Hessian(flat.shape[1])).add(flat)
        else:
            lo, hi = self.offset, self.offset + flat.shape[0]
            sel = self.rows[(self.rows >= lo) & (self.rows < hi)] - lo
            self.samples.setdefault(name, []).append(flat[sel].clone())

    def x(self, name: str) -> torch.Tensor:
        return torch.cat(self.samples[name])


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="layer", file=sys.stderr,
                bar_format="{desc}: {n_fmt}/{total_fmt} layers [{elapsed}<{remaining}, {rate_fmt}]")


@torch.no_grad()
def calibrate(spec: ModelSpec, weights, windows: np.ndarray, opts: Options,
              embed_dequant: np.ndarray | None = None, progress: bool = True) -> Result:
    """Quantize every decoder linear with GPTQ or AWQ, layer by layer.

    `embed_dequant`: the embedding as the exported graph will see it (dequantized int8, say); None = float.
    """
    torch.set_num_threads(max(1, opts.threads))
    torch.set_flush_denormal(True)  # subnormal intermediates make the CPU kernels many times slower
    t0 = time.perf_counter()
    ids = torch.from_numpy(windows)
    n, L = ids.shape
    emb = embed_dequant if embed_dequant is not None else weights.get("model.embed_tokens.weight")
    h = torch.from_numpy(np.ascontiguousarray(np.asarray(emb, dtype=np.float32)[windows]))
    del emb
    out = torch.empty_like(h)
    cos, sin = rope_tables(spec, L)
    rows = None
    if opts.method == "awq":
        g = torch.Generator().manual_seed(1234)
        rows = torch.sort(torch.randperm(n * L, generator=g)[: opts.awq_tokens]).values
    result = Result(linears={}, overrides={})
    bar = _progress(spec.num_layers, f"{opts.method} int{opts.bits}", progress)
    try:
        for i in range(spec.num_layers):
            layer = DecoderLayer(spec, weights, i)
            col = _Collector(opts, rows)
            ref = torch.empty_like(h)
            for b0 in range(0, n, opts.batch):
                col.offset = b0 * L
                ref[b0:b0 + opts.batch] = layer.forward(h[b0:b0 + opts.batch], cos, sin, col)
            lopts = replace(opts, bits=8) if i in opts.int8_layers else opts
            if opts.method == "gptq":
                q = {name: gptq_quantize(layer.w[name], col.hessians[name].H, lopts.bits, opts.group_size,
                                         opts.sym, opts.damp, opts.act_order) for name in LINEARS}
            else:
                q = _awq_layer(layer, col, spec, lopts, h, cos, sin)
                for key in ("input_layernorm", "post_attention_layernorm"):
                    result.overrides[layer.hf_name(key)] = layer.norm[key].numpy().copy()
            del col
            for name in LINEARS:
                layer.w[name] = torch.from_numpy(q[name].dequantize())
                result.linears[f"model.layers.{i}.{name}"] = to_matmulnbits(q[name])
            for b0 in range(0, n, opts.batch):
                out[b0:b0 + opts.batch] = layer.forward(h[b0:b0 + opts.batch], cos, sin)
            # per token, so the attention-sink tokens (100x the others' norm) do not stand for the layer
            result.per_layer_error.append(token_error(out, ref) ** 0.5)
            del ref, layer
            h, out = out, h
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    result.seconds = time.perf_counter() - t0
    return result


def _awq_layer(layer: DecoderLayer, col: _Collector, spec: ModelSpec, opts: Options, h: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor) -> dict[str, QWeight]:
    """Search and fold the scales (qkv <- input norm, gate_up <- post-attention norm, down <- up rows),
    then clip-search and quantize each linear on inputs divided by the folded scales.

    q/k/v candidates are scored by the attention block's output on whole sequences (h: the layer's input,
    a few samples), gate/up by the MLP's output on the token sample: what a weight error costs depends on
    what follows it (softmax, SiLU), which the linears' own output error does not see.
    """
    bits, bs, sym = opts.bits, opts.group_size, opts.sym
    w, inter, eps = layer.w, spec.intermediate_size, spec.rms_norm_eps
    xs = {name: col.x(name) for name in LINEARS}
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
        s = search_scale(xs[name], [w[name]], bits, bs, sym, loss=losses[name])
        w[name] = w[name] * s
        layer.norm[norm] = layer.norm[norm] / s
        xs[name] = xs[name] / s
    del xa, ref_a, xm, ref_m, losses
    s = search_scale(xs["mlp.down_proj"], [w["mlp.down_proj"]], bits, bs, sym)
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
        q[name] = awq_quantize(w[name], x, bits, bs, sym, clip=x is not None)
    return q


def layer_index(name: str) -> int:
    """model.layers.3.mlp.down_proj -> 3."""
    return int(name.split(".")[2])


def parse_layers(spec: str | None, num_layers: int) -> frozenset[int]:
    """'0,1,-1' -> {0, 1, num_layers - 1}; negative indices count from the end."""
    if not spec:
        return frozenset()
    out = set()
    for part in str(spec).split(","):
        try:
            i = int(part.strip())
        except ValueError:
            raise QwenEdgeError(f"--int8-layers takes layer indices like 0,1,-1; got '{part.strip()}'") from None
        if not -num_layers <= i < num_layers:
            raise QwenEdgeError(f"--int8-layers: layer {i} is outside the model's {num_layers} layers")
        out.add(i % num_layers)
    return frozenset(out)


def rtn_linears(bits: int, group_size: int, sym: bool,
                int8_layers: frozenset[int] = frozenset()) -> Callable[[str, np.ndarray], NBits]:
    """The RTN lookup: quantize whatever weight the exporter hands over, on the fly."""
    def lookup(name: str, w: np.ndarray) -> NBits:
        b = 8 if layer_index(name) in int8_layers else bits
        return to_matmulnbits(rtn_quantize(w, b, group_size, sym))
    return lookup
