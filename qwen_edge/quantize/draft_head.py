"""`qwen-edge draft`: a draft-only copy of an artifact whose LM head scores only the frequent tokens.

A draft model proposes tokens that the target then checks; its proposals only need to be right often, not
always. On the 0.5B the head (151,936 x 896) is about half of a quantized decode step (the int8 head GEMV
takes ~6 of ~12 ms, docs/benchmarks.md), yet most text uses a small part of the vocabulary. This copy keeps
the head's rows for the `vocab` most frequent tokens of a corpus (the model's calibration text and Python
code; the idea of FR-Spec, Zhao et al. 2025), so each draft step reads and computes a fifth of the head.
The target still decides every token, so the output does not change: a token outside the kept rows is never
proposed, and is produced by the target's own choice when it comes.

The embedding, the layers and the tokenizer are unchanged (a tied table keeps all its rows for the embedding
gather; the head gets its own sliced copy). The folder holds `draft_vocab.json` (the kept token ids,
ascending: logit column i scores token ids[i]) and the manifest's `draft` entry; it is format version 2,
and the runtime loads it only as a draft.
"""

from __future__ import annotations

import json
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .. import artifact as A
from ..errors import InputError, QwenEdgeError
from ..outputs import Staged, check_target
from ..export.ort_format import ORT_MODEL
from ..sources import dumps

VOCAB_FILE = "draft_vocab.json"
DEFAULT_VOCAB = 32768
CODE_CHARS = 4_000_000  # of the Python standard library's sources: code tokens next to enwiki's prose


def code_corpus(limit: int = CODE_CHARS) -> str:
    """Python source from the standard library beside the interpreter (sorted, so a machine's choice is
    stable): the draft's code tokens, offline."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, n = [], 0
    for p in sorted(root.glob("*.py")):
        try:
            t = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(t)
        n += len(t)
        if n >= limit:
            break
    return "\n\n".join(parts)[:limit]


def frequent_tokens(tokenizer: Any, texts: list[str], vocab_size: int, keep: int,
                    always: list[int]) -> tuple[np.ndarray, float]:
    """The `keep` most frequent ids in `texts` (ties to the lower id) plus `always`, ascending; and the share
    of the texts' tokens they cover."""
    counts = np.zeros(vocab_size, np.int64)
    for text in texts:
        ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int64)
        ids = ids[ids < vocab_size]
        counts += np.bincount(ids, minlength=vocab_size)[:vocab_size]
    forced = np.unique(np.asarray([i for i in always if 0 <= i < vocab_size], np.int64))
    rest = max(0, keep - forced.size)
    order = np.lexsort((np.arange(vocab_size), -counts))  # by count, descending; then by id
    order = order[~np.isin(order, forced)][:rest]
    ids = np.union1d(forced, order)
    total = int(counts.sum())
    return ids, (float(counts[ids].sum()) / total if total else 1.0)


def _head(graph: Any) -> tuple[Any, Any]:
    """(the node computing the logits' columns, the Concat giving the logits' shape)."""
    prod = {o: n for n in graph.node for o in n.output}
    reshape = prod.get("logits")
    if reshape is None or reshape.op_type != "Reshape":
        raise QwenEdgeError("model.onnx's logits do not come from the head's Reshape (docs/artifact.md)")
    n = prod.get(reshape.input[0])
    if n is not None and n.op_type == "Cast":  # fp16 models cast the head's output to float
        n = prod.get(n.input[0])
    concat = prod.get(reshape.input[1])
    if n is None or n.op_type not in ("MatMulNBits", "Gemm") or concat is None or concat.op_type != "Concat":
        raise QwenEdgeError("model.onnx's LM head is not a MatMulNBits or Gemm node: this graph cannot be drafted")
    return n, concat


def _repack(graph: Any, src: Path, data: Path, new: dict[str, np.ndarray]) -> None:
    """Write `data` holding the graph's external tensors (copied from the source folder, in graph order)
    and then `new` (added as initializers), every tensor 64-byte aligned; offsets rewritten."""
    from onnx import TensorProto, helper
    from onnx.external_data_helper import uses_external_data

    def place(f: Any, t: Any, length: int) -> int:
        f.write(b"\0" * ((-f.tell()) % 64))
        off = f.tell()
        del t.external_data[:]
        for k, v in (("location", A.MODEL_DATA), ("offset", str(off)), ("length", str(length))):
            t.external_data.add(key=k, value=v)
        return off

    with open(data, "wb") as f:
        for t in graph.initializer:
            if not uses_external_data(t):
                continue
            info = {e.key: e.value for e in t.external_data}
            if info.get("location") != A.MODEL_DATA:  # an artifact keeps its weights in one file
                raise QwenEdgeError(f"{t.name}'s weights are in {info.get('location')!r}, not {A.MODEL_DATA}")
            length, offset = int(info["length"]), int(info.get("offset", 0))
            place(f, t, length)
            with open(src / info["location"], "rb") as r:
                r.seek(offset)
                left = length
                while left:
                    chunk = r.read(min(left, 1 << 24))
                    if not chunk:
                        raise QwenEdgeError(f"{src / info['location']} ends inside {t.name}: the folder is damaged")
                    f.write(chunk)
                    left -= len(chunk)
        for name, arr in new.items():
            b = np.ascontiguousarray(arr).tobytes()
            t = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(arr.dtype), dims=arr.shape,
                            data_location=TensorProto.EXTERNAL)
            place(f, t, len(b))
            f.write(b)
            graph.initializer.append(t)


def _array(graph: Any, name: str, folder: Path) -> np.ndarray:
    from onnx import numpy_helper
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data
    for t in graph.initializer:
        if t.name == name:
            if uses_external_data(t):
                t = type(t).FromString(t.SerializeToString())  # a copy: the graph keeps its reference
                load_external_data_for_tensor(t, str(folder))
            return numpy_helper.to_array(t)
    raise QwenEdgeError(f"model.onnx has no initializer {name} (the head's weights)")


def make_draft(source: str | Path, out: str | Path, *, vocab: int = DEFAULT_VOCAB, calibration: str = "enwiki",
               code: bool = True, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Write the draft copy of the artifact `source` to `out`; returns its manifest."""
    import onnx
    from tokenizers import Tokenizer
    src, out = Path(source), Path(out)
    m = A.read_manifest(src)
    A.check(src, m, verify=False)
    if m.get("draft"):
        raise InputError(f"{src} is already a draft (its head scores {m['draft'].get('vocab')} tokens)")
    V = int(m["model"]["vocab_size"])
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 256 <= vocab < V:
        raise InputError(f"--vocab must be an integer in 256..{V - 1} (the model has {V} tokens), got {vocab!r}")
    check_target(out, force=force, is_ours=A.is_artifact, sources=[src])
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if progress:
            print(f"draft: {msg}", file=sys.stderr, flush=True)

    texts = []
    if calibration == "enwiki" or Path(calibration).is_file():
        from .calibration_text import calibration_text
        texts.append(calibration_text(calibration))
    else:
        raise InputError(f"--calibration must be 'enwiki' or a text file; no such file: {calibration}")
    if code:
        texts.append(code_corpus())
    tok = Tokenizer.from_file(str(src / A.TOKENIZER))
    gen = json.loads((src / A.GENERATION).read_text()) if (src / A.GENERATION).is_file() else {}
    eos = gen.get("eos_token_id", [])
    always = [*tok.get_added_tokens_decoder().keys(), *(eos if isinstance(eos, list) else [eos])]
    say(f"counting tokens in {sum(map(len, texts)):,} characters")
    ids, coverage = frequent_tokens(tok, texts, V, vocab, always)
    say(f"{ids.size:,} of {V:,} tokens kept: {coverage:.2%} of the corpus's tokens")

    model = onnx.load(str(src / A.MODEL), load_external_data=False)
    g = model.graph
    head, concat = _head(g)
    if head.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in head.attribute):
        raise QwenEdgeError("model.onnx's LM head Gemm does not take its weight as [vocab, hidden]")
    rows = ids.astype(np.int64)
    sliced = {}  # the head's new inputs, one row per kept token
    for i, name in enumerate(head.input):
        if i == 0 or not name or (head.op_type == "MatMulNBits" and i == 4):  # the activations; g_idx (unused)
            continue
        arr = _array(g, name, src)
        if arr.shape[:1] == (V,):  # a row per token: the packed weight, [N, ...] scales, the bias
            arr = arr[rows]
        elif arr.ndim == 1 and arr.size % V == 0:  # [N * blocks] scales or packed zero points
            arr = arr.reshape(V, -1)[rows].reshape(-1)
        else:
            raise QwenEdgeError(f"the head's input {name} has shape {list(arr.shape)}: not one row per token")
        sliced[f"draft_head.{i}"] = arr
        head.input[i] = f"draft_head.{i}"
    for a in head.attribute:
        if a.name == "N":
            a.i = int(ids.size)
    from onnx import numpy_helper
    g.initializer.append(numpy_helper.from_array(np.array([ids.size], np.int64), "draft_vocab1"))
    concat.input[-1] = "draft_vocab1"
    for o in g.output:
        if o.name == "logits":
            o.type.tensor_type.shape.dim[-1].dim_value = int(ids.size)
    used = {x for n in g.node for x in n.input}
    dead = [t for t in g.initializer if t.name not in used]  # an untied head's full rows: not carried over
    for t in dead:
        g.initializer.remove(t)
    with Staged(out, force=force, is_ours=A.is_artifact, sources=[src]) as tmp:
        for name in m["files"]:  # model.ort (if any) would hold the full head: not copied
            if name not in (A.MODEL, A.MODEL_DATA, ORT_MODEL):
                shutil.copyfile(src / name, tmp / name)
        _repack(g, src, tmp / A.MODEL_DATA, sliced)
        onnx.save(model, str(tmp / A.MODEL))
        (tmp / VOCAB_FILE).write_text(json.dumps(ids.tolist()))
        files, sizes = A.file_table(tmp)
        manifest = {**m, "format_version": A.DRAFT_VERSION, "tool": f"qwen-edge {__version__}", "files": files, "sizes": sizes,
                    "draft": {"vocab": int(ids.size), "of": V, "ids": VOCAB_FILE, "from": src.name,
                              "corpus": [calibration] + (["python-stdlib"] if code else []),
                              "coverage": round(coverage, 5)}}
        (tmp / A.MANIFEST).write_text(dumps(manifest))
    say(f"wrote {out} in {time.perf_counter() - t0:.0f} s")
    return manifest
