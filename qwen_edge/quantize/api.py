"""`qwen-edge quantize`: source -> quantized artifact folder (MatMulNBits linears, GatherBlockQuantized
embedding, MatMulNBits LM head), optionally also a GPTQ-format Hugging Face checkpoint."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError, QwenEdgeError
from ..pack import check_bits, check_block_size

METHODS = ("rtn", "gptq", "awq")
TOKEN_BITS = {"4": 4, "8": 8, "32": None, "fp32": None}


class _Overlay:
    """Source weights with some tensors replaced (AWQ's folded norm weights)."""

    def __init__(self, base, overrides: dict[str, np.ndarray]):
        self.base, self.overrides = base, overrides

    def get(self, name: str) -> np.ndarray:
        return self.overrides[name] if name in self.overrides else self.base.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.overrides or name in self.base


def parse_token_bits(value: str | int | None, what: str) -> int | None:
    key = str(value).lower()
    if key not in TOKEN_BITS:
        raise QwenEdgeError(f"unsupported {what} precision '{value}': choose 8, 4 or fp32")
    return TOKEN_BITS[key]


def validate(method: str, bits: int, group_size: int, calibration: str, damp: float, samples: int = 1,
             seq_len: int = 2) -> None:
    if method not in METHODS:
        raise QwenEdgeError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    check_bits(bits)
    check_block_size(group_size)
    if not 0 < damp < 1:
        raise QwenEdgeError(f"--damp {damp} is outside (0, 1)")
    if samples < 1 or seq_len < 2:
        raise QwenEdgeError("--samples must be >= 1 and --seq-len >= 2")
    if method != "rtn" and calibration != "enwiki" and not Path(calibration).is_file():
        raise QwenEdgeError(f"calibration must be 'enwiki' or a text file; no such file: {calibration}")


def quantize(source: str, out: str | Path, *, method: str = "gptq", bits: int = 4, group_size: int = 128,
             sym: bool = False, act_order: bool = False, damp: float = 0.01, calibration: str = "enwiki",
             samples: int = 128, seq_len: int = 512, seed: int = 0, embed_bits: str | int = 8,
             head_bits: str | int = 8, token_group_size: int = 128, accuracy_level: int | None = None,
             max_length: int | None = None, int8_layers: str | None = None,
             save_checkpoint: str | Path | None = None, force: bool = False, revision: str | None = None,
             progress: bool = True) -> dict[str, Any]:
    from ..export.writer import check_output, write_artifact
    from ..outputs import check_target, overlaps
    from ..sources import local_paths, open_source
    from .checkpoint import is_our_checkpoint
    from .calibrate import Options, calibrate, calibration_tokens, parse_layers, rtn_linears, sample_windows
    from ..export.nbits import QuantTokens, nbits_linear
    from .rtn import rtn_quantize

    out = Path(out)
    validate(method, bits, group_size, calibration, damp, samples, seq_len)
    check_block_size(token_group_size)
    if accuracy_level is None:
        # int4: int8 activations (the fast CPU kernel; its error is small next to int4's). int8 is chosen for
        # accuracy, and int8 activations would cost as much as the int8 weights (+0.3-0.5% perplexity).
        accuracy_level = 4 if bits == 4 else 0
    if accuracy_level not in (0, 1, 2, 3, 4):
        raise QwenEdgeError(f"--accuracy-level {accuracy_level} is outside 0..4")
    e_bits, h_bits = parse_token_bits(embed_bits, "embedding"), parse_token_bits(head_bits, "LM head")
    local = local_paths(source)
    check_output(out, force, local)
    if save_checkpoint is not None:
        if overlaps(Path(save_checkpoint), out):
            raise OutputError(f"--save-checkpoint {save_checkpoint} and -o {out} overlap: give two separate folders")
        check_target(Path(save_checkpoint), force=force, is_ours=is_our_checkpoint, sources=local,
                     what="checkpoint output")
    src = open_source(source, revision=revision)
    if src.quantization:
        raise QwenEdgeError(f"{source} is already a {src.quantization.get('quant_method', 'quantized')} "
                            "checkpoint: export it directly (qwen-edge export) instead of re-quantizing")
    spec = src.spec
    keep8 = parse_layers(int8_layers, spec.num_layers) if bits == 4 else frozenset()
    if keep8 and save_checkpoint is not None:
        raise QwenEdgeError("--int8-layers mixes 4- and 8-bit layers, which a GPTQ checkpoint (one bits value) "
                            "cannot hold; drop --save-checkpoint or --int8-layers")
    t0 = time.perf_counter()
    weights = src.weights
    info: dict[str, Any] = {"method": method, "bits": bits, "group_size": group_size, "sym": sym,
                            "format": "MatMulNBits", "accuracy_level": accuracy_level,
                            "embedding": {"bits": e_bits, "group_size": token_group_size} if e_bits else None,
                            "lm_head": {"bits": h_bits, "group_size": token_group_size} if h_bits else None,
                            "int8_layers": sorted(keep8)}
    tokens = QuantTokens(lambda w, b, g: rtn_quantize(w, b, g, sym=False), e_bits, h_bits, token_group_size,
                         accuracy_level)
    result = None
    linears: dict = {}
    if method == "rtn":
        rtn_lookup = rtn_linears(bits, group_size, sym, keep8)

        def lookup(name: str, w: np.ndarray):
            p = rtn_lookup(name, w)
            if save_checkpoint is not None:  # kept for the checkpoint
                linears[name] = p
            return p
    else:
        windows = sample_windows(calibration_tokens(calibration, src.write_tokenizer), samples, seq_len, seed)
        embed_dq = None
        if e_bits is not None:
            embed_dq = rtn_quantize(weights.get("model.embed_tokens.weight"), e_bits, token_group_size).dequantize()
        opts = Options(method=method, bits=bits, group_size=group_size, sym=sym, act_order=act_order, damp=damp,
                       int8_layers=keep8)
        result = calibrate(spec, weights, windows, opts, embed_dequant=embed_dq, progress=progress)
        del embed_dq
        weights = _Overlay(weights, result.overrides)
        linears = result.linears

        def lookup(name: str, w: np.ndarray):
            return linears[name]
        info.update(calibration=calibration, samples=samples, seq_len=seq_len, seed=seed)
        if method == "gptq":
            info.update(act_order=act_order, damp=damp)
        info["calibration_seconds"] = round(result.seconds, 1)
    src.weights = weights
    manifest = write_artifact(src, out, max_length=max_length, force=force, linear=nbits_linear(lookup, accuracy_level),
                              tokens=tokens, quantization=info, progress=progress)
    manifest["quantize_seconds"] = round(time.perf_counter() - t0, 2)
    manifest["tied_embedding_shared"] = tokens.shared
    if result is not None:
        manifest["per_layer_error"] = result.per_layer_error
    if save_checkpoint is not None:
        from .checkpoint import save_gptq_checkpoint
        save_gptq_checkpoint(src, linears, Path(save_checkpoint), info, force=force, sources=src.paths)
    return manifest
