"""Property-based tests (hypothesis): the GGUF and safetensors header readers on random and mutated bytes
(nothing but QwenEdgeError escapes, allocation stays within a small multiple of the file size), the gate
grammar and the sampler options."""

from __future__ import annotations

import json
import math
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwen_edge.errors import QwenEdgeError

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_gguf(path: Path) -> bytes:
    """A small but complete qwen2-like GGUF: assorted metadata types, string arrays, F32/F16/Q8_0 tensors."""
    import gguf
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(1)
    w.add_embedding_length(32)
    w.add_feed_forward_length(64)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_context_length(128)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(16)])
    w.add_bool("x.flag", True)
    w.add_array("x.ints", [1, 2, 3])
    rng = np.random.default_rng(0)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, 32)).astype(np.float32))
    w.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(32).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_down.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


@pytest.fixture(scope="module")
def gguf_bytes(tmp_path_factory) -> bytes:
    return _valid_gguf(tmp_path_factory.mktemp("gguf") / "ok.gguf")


def _mutate(data: bytes, edits: list[tuple[float, int]], cut: float | None) -> bytes:
    b = bytearray(data)
    for where, value in edits:
        b[int(where * (len(b) - 1))] = value
    if cut is not None:
        b = b[: int(cut * len(b))]
    return bytes(b)


EDITS = st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=8)
CUT = st.one_of(st.none(), st.floats(0, 1))


def _bounded(fn, size: int):
    """Run fn; assert it raises nothing but QwenEdgeError and allocates at most ~64x the input."""
    tracemalloc.start()
    try:
        fn()
    except QwenEdgeError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= 64 * size + (1 << 20), f"{peak} bytes allocated for a {size}-byte file"


def test_the_valid_gguf_reads(tmp_path, gguf_bytes):
    from qwen_edge.sources.gguf_header import read_header
    p = tmp_path / "ok.gguf"
    p.write_bytes(gguf_bytes)
    meta, tensors = read_header(p)
    assert meta["qwen2.block_count"] == 1 and len(meta["tokenizer.ggml.tokens"]) == 16
    assert tensors["token_embd.weight"].shape == (16, 32)
    assert tensors["blk.0.ffn_down.weight"].nbytes == 4 * 34


@SETTINGS
@given(edits=EDITS, cut=CUT)
def test_gguf_reader_on_mutated_bytes(tmp_path, gguf_bytes, edits, cut):
    from qwen_edge.sources.gguf_file import GGUFSource
    p = tmp_path / "m.gguf"
    data = _mutate(gguf_bytes, edits, cut)
    p.write_bytes(data)

    def read():
        g = GGUFSource(p)
        for name in g.names():
            g.get(name)
    _bounded(read, len(data))


@SETTINGS
@given(data=st.binary(max_size=2048), magic=st.booleans())
def test_gguf_reader_on_random_bytes(tmp_path, data, magic):
    from qwen_edge.sources.gguf_header import read_header
    p = tmp_path / "r.gguf"
    blob = (b"GGUF" + struct.pack("<I", 3) + data) if magic else data
    p.write_bytes(blob)
    _bounded(lambda: read_header(p), len(blob))


@SETTINGS
@given(n_tensors=st.integers(0, 2**64 - 1), n_kv=st.integers(0, 2**64 - 1), strlen=st.integers(0, 2**64 - 1))
def test_gguf_huge_counts_are_refused_before_allocating(tmp_path, n_tensors, n_kv, strlen):
    from qwen_edge.sources.gguf_header import read_header
    p = tmp_path / "h.gguf"
    blob = b"GGUF" + struct.pack("<IQQQ", 3, n_tensors, n_kv, strlen) + b"k" * 32
    p.write_bytes(blob)
    _bounded(lambda: read_header(p), len(blob))


def _valid_safetensors(path: Path) -> bytes:
    from qwen_edge.quantize.checkpoint import write_safetensors
    rng = np.random.default_rng(0)
    write_safetensors(path, {"a": rng.standard_normal((4, 8)).astype(np.float32),
                             "b": rng.standard_normal(5).astype(np.float16),
                             "c": np.arange(6, dtype=np.int32).reshape(2, 3)})
    return path.read_bytes()


@SETTINGS
@given(edits=EDITS, cut=CUT)
def test_safetensors_reader_on_mutated_bytes(tmp_path, edits, cut):
    from qwen_edge.sources.safetensors_file import SafetensorsFile
    p = tmp_path / "m.safetensors"
    data = _mutate(_valid_safetensors(tmp_path / "ok.safetensors"), edits, cut)
    p.write_bytes(data)

    def read():
        f = SafetensorsFile(p)
        for k in f.keys():
            f.get(k)
    _bounded(read, len(data))


HEADER_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                                       st.text(max_size=8)),
                             lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                             max_leaves=12)


SMALL = st.one_of(st.integers(-3, 70), st.integers(-2**70, 2**70), st.booleans(), st.floats(-5, 70),
                  st.text(max_size=2), st.none())
ENTRY = st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F16", "BF16", "I64", "U8", "Q4"]), HEADER_VALUES),
    "shape": st.one_of(st.lists(SMALL, max_size=3), HEADER_VALUES),
    "data_offsets": st.one_of(st.lists(SMALL, min_size=2, max_size=2), st.text(min_size=2, max_size=2),
                              HEADER_VALUES)})


@SETTINGS
@given(header=st.dictionaries(st.sampled_from(["t", "u", "__metadata__"]), st.one_of(ENTRY, ENTRY, HEADER_VALUES),
                              max_size=3),
       tail=st.binary(max_size=256))
def test_safetensors_reader_on_random_headers(tmp_path, header, tail):
    from qwen_edge.sources.safetensors_file import SafetensorsFile
    p = tmp_path / "r.safetensors"
    head = json.dumps(header, allow_nan=True).encode()
    blob = struct.pack("<Q", len(head)) + head + tail
    p.write_bytes(blob)

    def read():
        f = SafetensorsFile(p)
        for k in f.keys():
            f.get(k)
    _bounded(read, len(blob))


# --- the gate grammar -----------------------------------------------------------------------------------
@SETTINGS
@given(text=st.text(max_size=40))
def test_gate_parser_never_crashes(text):
    from qwen_edge.eval import gates
    try:
        g = gates.parse(text)
    except QwenEdgeError:
        return
    assert g.metric in gates.METRICS and math.isfinite(g.threshold)


@SETTINGS
@given(metric=st.sampled_from(["ppl", "kl_mean", "kl_p99", "top1", "ppl_increase", "nll_mean"]),
       op=st.sampled_from(["<=", ">=", "<", ">", "=="]), value=st.floats(-1e6, 1e6), spaces=st.booleans())
def test_well_formed_gates_parse_to_what_they_say(metric, op, value, spaces):
    from qwen_edge.eval import gates
    sep = " " if spaces else ""
    text = f"{metric}{sep}{op}{sep}{value!r}"
    try:
        g = gates.parse(text)
    except QwenEdgeError as e:  # only a metric that takes no such value may refuse
        assert "%" in str(e) or "finite" in str(e) or metric in str(e), str(e)
        return
    assert (g.metric, g.op) == (metric, op) and g.threshold == pytest.approx(value)


# --- sampler options ------------------------------------------------------------------------------------
NUMBERS = st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), st.floats(allow_nan=True), st.text(max_size=3))


@SETTINGS
@given(temperature=NUMBERS, top_k=NUMBERS, top_p=NUMBERS, min_p=NUMBERS, repetition_penalty=NUMBERS, seed=NUMBERS)
def test_sampler_options_are_valid_or_one_clear_error(temperature, top_k, top_p, min_p, repetition_penalty, seed):
    from qwen_edge.runtimes.sampler import Sampler, SamplingParams
    try:
        params = SamplingParams.from_defaults({}, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                              repetition_penalty=repetition_penalty, seed=seed)
    except QwenEdgeError as e:
        assert "\n" not in str(e)
        return
    logits = np.random.default_rng(1).standard_normal(300).astype(np.float32) * 3
    history = np.array([1, 2, 3], dtype=np.int64)
    a = Sampler(params).sample(logits, history)
    assert 0 <= a < 300
    if params.seed is not None or params.greedy:  # reproducible
        assert Sampler(params).sample(logits, history) == a
