"""`qwen-edge export`: source -> artifact folder, written to a temporary folder and renamed on success."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .. import __version__
from .. import artifact as A
from ..errors import InputError, QwenEdgeError
from ..outputs import Staged, check_target
from ..sources import Source, dumps, local_paths, open_source
from .decoder import LinearFn, build_decoder
from .genai_config import genai_config
from .graph import Graph

DTYPES = {"fp32": np.float32, "fp16": np.float16}


def context_limit(spec) -> int:
    r = spec.rope
    if r.type == "yarn":  # Qwen2.5 keeps max_position_embeddings at 32k and adds YaRN x4 for 128k
        return max(spec.max_position_embeddings, int(r.factor * r.original_max_position_embeddings))
    return spec.max_position_embeddings


def check_output(out: Path, force: bool, sources: Iterable[Path] = ()) -> None:
    """Fail before any slow work when `out` may not be written (qwen_edge/outputs.py has the rules)."""
    check_target(Path(out), force=force, is_ours=A.is_artifact, sources=sources)


def staged_artifact(out: Path, force: bool, sources: Iterable[Path] = ()) -> Staged:
    """A temp folder beside `out`, renamed to `out` only if the block succeeds."""
    return Staged(out, force=force, is_ours=A.is_artifact, sources=sources)


def _progress(total: int, desc: str, enabled: bool) -> tuple[Callable[[int], None], Callable[[], None]]:
    if not enabled:
        return (lambda i: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        return (lambda i: None), (lambda: None)
    bar = tqdm(total=total, desc=desc, unit="layer", file=sys.stderr, leave=False)
    return (lambda i: bar.update(1)), bar.close


def write_artifact(src: Source, out: Path, *, dtype: str = "fp32", max_length: int | None = None,
                   force: bool = False, linear: LinearFn | None = None, quantization: dict | None = None,
                   tokens: Any = None, ort_format: bool = False,
                   progress: bool = True, extra_files: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Build the graph from `src` into a complete artifact folder at `out`; returns the manifest."""
    if dtype not in DTYPES:
        raise QwenEdgeError(f"unknown dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    spec = src.spec
    if spec.head_dim % 16:
        raise QwenEdgeError(f"head_dim {spec.head_dim} is not supported: onnxruntime's GroupQueryAttention "
                            "needs a multiple of 16 (every released Qwen model uses 64 or 128)")
    limit = context_limit(spec)
    max_length = limit if max_length is None else int(max_length)
    if not 1 <= max_length <= limit:
        raise QwenEdgeError(f"--max-length {max_length} is outside 1..{limit} (the model's context)")
    t0 = time.perf_counter()
    with staged_artifact(out, force, src.paths) as tmp:
        g = Graph(tmp / A.MODEL_DATA)
        step, close = _progress(spec.num_layers, f"export {dtype}", progress)
        try:
            build_decoder(g, spec, src.weights, dtype=DTYPES[dtype], max_length=max_length, linear=linear,
                          tokens=tokens, progress=step)
        finally:
            close()
            g.abort()
        g.save(tmp / A.MODEL, f"{spec.model_type}-decoder", overridable=["logits_to_keep"],
               metadata={"qwen_edge.version": __version__})
        if ort_format:
            from .ort_format import write_ort
            write_ort(tmp)
        src.write_tokenizer(tmp)
        gen = dict(src.generation_config)
        eos = gen.get("eos_token_id", [])
        gen["eos_token_id"] = eos if isinstance(eos, list) else [eos]
        (tmp / A.GENERATION).write_text(dumps(gen))
        (tmp / A.GENAI).write_text(dumps(genai_config(spec, gen, max_length)))
        if extra_files is not None:
            extra_files(tmp)
        files, sizes = A.file_table(tmp)
        manifest = {
            "format": A.FORMAT, "format_version": A.FORMAT_VERSION, "tool": f"qwen-edge {__version__}",
            "source": src.origin, "model": spec.to_dict(), "dtype": dtype, "max_length": max_length,
            "quantization": quantization,
            "graph": {"inputs": ["input_ids", "attention_mask", "past_key_values.N.key", "past_key_values.N.value",
                                 "logits_to_keep (optional, default 0 = all positions)"],
                      "outputs": ["logits", "present.N.key", "present.N.value"],
                      "kv_cache": "shared past/present buffer of max_length (GroupQueryAttention)"},
            "files": files, "sizes": sizes,
        }
        (tmp / A.MANIFEST).write_text(dumps(manifest))
    manifest["export_seconds"] = round(time.perf_counter() - t0, 2)
    return manifest


def export(source: str, out: str | Path, *, dtype: str = "fp32", max_length: int | None = None,
           force: bool = False, revision: str | None = None, progress: bool = True,
           tie_embeddings: str = "off", ort_format: bool = False) -> dict[str, Any]:
    out = Path(out)
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype '{dtype}': choose one of {', '.join(DTYPES)}")
    check_output(out, force, local_paths(source))  # fail before any slow download or load
    src = open_source(source, revision=revision)
    from ..footprint import check_export
    check_export(src.spec)
    if ort_format and not src.quantization:  # float weights: their size is known before writing anything
        from .ort_format import check_size
        sp = src.spec
        n = sp.num_layers * (sp.hidden_size * (sp.num_heads + 2 * sp.num_kv_heads) * sp.head_dim
                             + sp.num_heads * sp.head_dim * sp.hidden_size + 3 * sp.hidden_size * sp.intermediate_size)
        n += sp.vocab_size * sp.hidden_size * (1 if sp.tie_word_embeddings else 2)
        check_size(n * (4 if dtype == "fp32" else 2))
    if tie_embeddings != "off":
        from ..sources.tie import tie
        if tie_embeddings == "residual":  # a quantized embedding's layout; a float export has nothing to add
            raise InputError("--tie-embeddings residual applies to quantize (an int8 embedding stored as the "
                             "head plus a residual); export takes auto, on or off")
        src, _ = tie(src, tie_embeddings)
    if src.quantization:  # a GPTQ/AWQ folder: its packed weights go straight into MatMulNBits
        if dtype != "fp32":
            raise QwenEdgeError("a quantized checkpoint exports with --dtype fp32 (MatMulNBits takes fp32 activations)")
        from .nbits import import_hooks
        linear, tokens, info = import_hooks(src)
        return write_artifact(src, out, dtype=dtype, max_length=max_length, force=force, progress=progress,
                              linear=linear, tokens=tokens, quantization=info, ort_format=ort_format)
    return write_artifact(src, out, dtype=dtype, max_length=max_length, force=force, progress=progress,
                          ort_format=ort_format)
