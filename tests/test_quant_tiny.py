"""`quantize` end to end on tiny random models: graph contents, logits against a float graph of the
dequantized weights, checkpoint round trip and import, and bad input."""

import dataclasses
import json

import numpy as np
import onnx
import pytest

from conftest import manifest
from qwen_edge.errors import QwenEdgeError
from qwen_edge.export.writer import export, write_artifact
from qwen_edge.quantize.api import quantize
from tiny_models import make_tiny, new_cache, ort_session, ort_step

KW = dict(max_length=64, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinyq")
    _, folder = make_tiny(root / "hf", hidden_size=128, intermediate_size=160)
    calib = root / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. def main(): return 42\n" * 300)
    return root, folder, calib


def logits(folder, ids):
    spec = manifest(folder)["model"]
    return ort_step(ort_session(folder), ids, new_cache(spec, 64), len(ids), spec["num_layers"])


def dequantized_reference(src_folder, qfolder, out):
    """A float export whose linears, embedding and head are the quantized folder's weights, dequantized."""
    from onnx import numpy_helper

    from qwen_edge.export.decoder import float_linear
    from qwen_edge.pack import NBits, from_matmulnbits
    from qwen_edge.sources import open_source
    m = onnx.load(str(qfolder / "model.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}

    def deq(node):
        a = {x.name: x.i for x in node.attribute}
        zp = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
        return from_matmulnbits(NBits(B=inits[node.input[1]], scales=inits[node.input[2]].reshape(-1),
                                      zero_points=zp, K=a["K"], N=a["N"], bits=a["bits"],
                                      block_size=a["block_size"])).dequantize()
    by_name = {n.name.rsplit("/", 1)[0]: deq(n) for n in m.graph.node if n.op_type == "MatMulNBits"}
    src = open_source(str(src_folder))
    emb_bits = manifest(qfolder)["quantization"]["embedding"]
    overrides = {"lm_head.weight": by_name["lm_head"]}
    overrides.update({k: v for k, v in inits.items() if k.endswith("norm.weight")})  # AWQ folds scales into norms
    if emb_bits:  # the tied/untied embedding dequantized the same way as GatherBlockQuantized reads it
        from qwen_edge.quantize.rtn import rtn_quantize
        overrides["model.embed_tokens.weight"] = rtn_quantize(src.weights.get("model.embed_tokens.weight"),
                                                              emb_bits["bits"], emb_bits["group_size"]).dequantize()

    class W:
        def get(self, n):
            return overrides[n] if n in overrides else src.weights.get(n)

        def __contains__(self, n):
            return n in overrides or n in src.weights
    fl = float_linear(np.float32)
    ref_src = dataclasses.replace(src, weights=W(), spec=dataclasses.replace(src.spec, tie_word_embeddings=False))
    write_artifact(ref_src, out, max_length=64, progress=False,
                   linear=lambda g, x, name, w, b: fl(g, x, name, by_name[name], b))
    return out


@pytest.mark.parametrize("method,bits,sym", [("rtn", 4, False), ("rtn", 8, True), ("gptq", 4, False),
                                             ("gptq", 8, False), ("awq", 4, True)])
def test_quantized_logits_match_a_dequantized_float_graph(tiny, method, bits, sym):
    root, folder, calib = tiny
    out = root / f"{method}{bits}{sym}"
    quantize(str(folder), out, method=method, bits=bits, group_size=32, sym=sym, calibration=str(calib),
             samples=8, seq_len=32, accuracy_level=0, **KW)
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 2 * 4 + 1 and "GatherBlockQuantized" in ops
    assert "MatMul" not in ops and "Gemm" not in ops
    ref = dequantized_reference(folder, out, root / f"ref-{method}{bits}{sym}")
    ids = list(range(5, 45))
    a, b = logits(out, ids), logits(ref, ids)
    np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(b).max(), rtol=0)
    q = manifest(out)["quantization"]
    assert (q["method"], q["bits"], q["group_size"], q["sym"]) == (method, bits, 32, sym)
    if method != "rtn":
        assert q["calibration"] == str(calib) and q["samples"] == 8 and q["seed"] == 0


def test_int8_is_closer_than_int4_and_accuracy_level_4_stays_close(tiny):
    root, folder, calib = tiny
    export(str(folder), root / "fp32", **KW)
    ids = list(range(5, 45))
    ref = logits(root / "fp32", ids)
    errs = {}
    for bits in (8, 4):
        quantize(str(folder), root / f"acc4-{bits}", method="rtn", bits=bits, group_size=32, **KW)
        errs[bits] = np.abs(logits(root / f"acc4-{bits}", ids) - ref).max() / np.abs(ref).max()
    assert errs[8] < 0.05 and errs[8] < errs[4] / 3


def test_tied_embedding_is_stored_once(tmp_path):
    _, folder = make_tiny(tmp_path / "hf", tie_word_embeddings=True)
    quantize(str(folder), tmp_path / "q", method="rtn", bits=4, group_size=32, **KW)
    m = onnx.load(str(tmp_path / "q" / "model.onnx"), load_external_data=False)
    big = [t.name for t in m.graph.initializer if "embed" in t.name or "lm_head" in t.name]
    assert "model.embed_tokens.qweight" in big and not any(n.startswith("lm_head") for n in big)
    head = next(n for n in m.graph.node if n.name == "lm_head/MatMulNBits")
    gather = next(n for n in m.graph.node if n.op_type == "GatherBlockQuantized")
    assert head.input[1] == gather.input[0] == "model.embed_tokens.qweight"
    export(str(folder), tmp_path / "fp", **KW)
    ids = list(range(3, 30))
    a, b = logits(tmp_path / "q", ids), logits(tmp_path / "fp", ids)
    assert np.abs(a - b).max() < 0.2 * np.abs(b).max()


@pytest.mark.parametrize("method,sym", [("gptq", False), ("awq", True)])
def test_checkpoint_round_trip_gives_identical_int4_weights(tiny, method, sym):
    from onnx import numpy_helper
    root, folder, calib = tiny
    ours, ck, back = root / f"ours-{method}", root / f"ck-{method}", root / f"back-{method}"
    quantize(str(folder), ours, method=method, bits=4, group_size=32, sym=sym, calibration=str(calib), samples=8,
             seq_len=32, save_checkpoint=ck, **KW)
    cfg = json.loads((ck / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "gptq" and cfg["quantization_config"]["bits"] == 4
    export(str(ck), back, **KW)
    assert manifest(back)["quantization"]["imported"] is True

    def packed(f):
        m = onnx.load(str(f / "model.onnx"))
        return {t.name: numpy_helper.to_array(t) for t in m.graph.initializer
                if "layers" in t.name and ("qweight" in t.name or "scales" in t.name or "qzeros" in t.name)}
    a, b = packed(ours), packed(back)
    assert a.keys() == b.keys() and len(a) >= 8
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ids = list(range(5, 30))
    np.testing.assert_allclose(logits(ours, ids), logits(back, ids), atol=5e-2 * np.abs(logits(ours, ids)).max())


def test_awq_gemm_checkpoint_imports(tiny, tmp_path):
    """An AutoAWQ GEMM folder (written here from our own codes) exports to the same MatMulNBits weights."""
    from qwen_edge import pack as P
    from qwen_edge.quantize.checkpoint import PARTS, write_safetensors
    from qwen_edge.quantize.rtn import rtn_quantize
    from qwen_edge.sources import open_source
    root, folder, _ = tiny
    src = open_source(str(folder))
    ck = tmp_path / "awq"
    ck.mkdir()
    t, expect = {}, {}
    for name in src.weights.names():
        w = src.weights.get(name)
        proj = name.rsplit(".", 1)[0]
        if name.endswith(".weight") and any(proj.endswith(p) for ps in PARTS.values() for p in ps):
            q = rtn_quantize(w, 4, 32)
            a = P.to_awq(q)
            t.update({f"{proj}.qweight": a.qweight, f"{proj}.qzeros": a.qzeros, f"{proj}.scales": a.scales})
            expect[proj] = q
        else:
            t[name] = w
    write_safetensors(ck / "model.safetensors", t)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemm",
                                  "zero_point": True}
    (ck / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (ck / f).write_bytes((folder / f).read_bytes())
    export(str(ck), tmp_path / "out", **KW)
    from onnx import numpy_helper
    m = onnx.load(str(tmp_path / "out" / "model.onnx"))
    inits = {x.name: numpy_helper.to_array(x) for x in m.graph.initializer}
    got = P.from_matmulnbits(P.NBits(B=inits["model.layers.1.self_attn.o_proj.qweight"],
                                     scales=inits["model.layers.1.self_attn.o_proj.scales"].reshape(-1),
                                     zero_points=inits["model.layers.1.self_attn.o_proj.qzeros"], K=128, N=128,
                                     bits=4, block_size=32))
    want = expect["model.layers.1.self_attn.o_proj"]
    np.testing.assert_array_equal(got.q, want.q)
    np.testing.assert_array_equal(got.zeros, want.zeros)
    np.testing.assert_array_equal(got.scales, want.scales)
    # and the whole model computes what the dequantized AWQ weights compute
    ref = _float_reference(folder, {f"{p}.weight": q.dequantize() for p, q in expect.items()}, tmp_path / "ref")
    ids = list(range(5, 30))
    got, want = logits(tmp_path / "out", ids), logits(ref, ids)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


@pytest.mark.parametrize("kw,msg", [
    (dict(bits=3), "unsupported bits 3"),
    (dict(group_size=0), "unsupported group size 0"),
    (dict(method="hqq"), "unknown method 'hqq'"),
    (dict(embed_bits="2"), "unsupported embedding precision"),
])
def test_bad_options_are_refused_and_leave_nothing(tiny, tmp_path, kw, msg):
    _, folder, _ = tiny
    args = dict(method="rtn", bits=4, group_size=32) | kw
    with pytest.raises(QwenEdgeError, match=msg):
        quantize(str(folder), tmp_path / "out", **args, **KW)
    assert list(tmp_path.iterdir()) == []


def test_calibration_file_with_no_text(tiny, tmp_path):
    _, folder, _ = tiny
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n\t ")
    with pytest.raises(QwenEdgeError, match="has no text"):
        quantize(str(folder), tmp_path / "out", method="gptq", calibration=str(empty), **KW)
    with pytest.raises(QwenEdgeError, match="not enough"):
        quantize(str(folder), tmp_path / "out", method="gptq", calibration=str(tiny[2]), samples=10_000, **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.txt"]


@pytest.mark.parametrize("qcfg,msg", [
    ({"quant_method": "gptq", "bits": 3, "group_size": 32}, "3-bit weights is not supported"),
    ({"quant_method": "gptq", "bits": 2, "group_size": 32}, "2-bit weights is not supported"),
    ({"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv"}, "version 'gemv'"),
    ({"quant_method": "bitsandbytes", "bits": 4}, "unsupported quant_method"),
])
def test_unsupported_checkpoints_are_refused_and_leave_nothing(tiny, tmp_path, qcfg, msg):
    _, folder, _ = tiny
    ck = tmp_path / "ck"
    ck.mkdir()
    for f in folder.iterdir():
        (ck / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((ck / "config.json").read_text())
    cfg["quantization_config"] = qcfg
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(QwenEdgeError, match=msg):
        export(str(ck), tmp_path / "out", **KW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_cli_quantize_json_and_exit_code(tiny, tmp_path):
    import subprocess
    import sys
    _, folder, _ = tiny
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "quantize", str(folder), "-o", str(tmp_path / "q"),
                        "--method", "rtn", "--bits", "8", "--group-size", "64", "--max-length", "64", "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["method"] == "rtn" and out["bits"] == 8 and out["size_bytes"] > 0
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "quantize", str(folder), "-o", str(tmp_path / "b"),
                        "--bits", "3"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == "error: unsupported bits 3: choose 4 or 8"
    assert not (tmp_path / "b").exists()


def _float_reference(folder, weights: dict, out):
    """A float export of `folder` with some weights replaced (dequantized checkpoint weights)."""
    from qwen_edge.sources import open_source
    src = open_source(str(folder))

    class W:
        def get(self, n):
            return weights[n] if n in weights else src.weights.get(n)

        def __contains__(self, n):
            return n in weights or n in src.weights
    write_artifact(dataclasses.replace(src, weights=W()), out, **KW)
    return out


@pytest.mark.parametrize("shared", [True, False])
def test_act_order_gptq_checkpoint_imports(tiny, tmp_path, shared):
    """auto-gptq desc_act layout: g_idx assigns input channels to groups out of order. The import gathers
    the input by the permutation; q/k/v (and gate/up) share one MatMulNBits when their permutations agree
    (shared=True, as auto-gptq writes them) and are split and concatenated otherwise."""
    from qwen_edge import pack as P
    from qwen_edge.quantize.checkpoint import PARTS, write_safetensors
    from qwen_edge.quantize.rtn import rtn_quantize
    from qwen_edge.sources import open_source
    _, folder, _ = tiny
    src = open_source(str(folder))
    rng = np.random.default_rng(0)
    gs, t, deq, wrong = 32, {}, {}, {}
    perms: dict[str, np.ndarray] = {}
    for name in src.weights.names():
        w = src.weights.get(name)
        proj = name.rsplit(".", 1)[0]
        part = next((p for ps in PARTS.values() for p in ps if proj.endswith(p)), None)
        if not name.endswith(".weight") or part is None:
            t[name] = w
            continue
        key = proj.rsplit(".", 1)[0] + ("/qkv" if part.endswith(("q_proj", "k_proj", "v_proj")) else
                                        "/gu" if part.endswith(("gate_proj", "up_proj")) else "/" + part)
        perm = perms.setdefault(key, rng.permutation(w.shape[1])) if shared else rng.permutation(w.shape[1])
        qp = rtn_quantize(np.ascontiguousarray(w[:, perm]), 4, gs)  # groups = consecutive permuted channels
        inv = np.argsort(perm)
        g = P.to_gptq(P.QWeight(q=np.ascontiguousarray(qp.q[:, inv]), scales=qp.scales, zeros=qp.zeros, bits=4,
                                block_size=gs))
        g_idx = np.empty(w.shape[1], np.int32)
        g_idx[perm] = np.arange(w.shape[1]) // gs
        t.update({f"{proj}.qweight": g.qweight, f"{proj}.qzeros": g.qzeros, f"{proj}.scales": g.scales,
                  f"{proj}.g_idx": g_idx})
        deq[name] = qp.dequantize()[:, inv]
        wrong[name] = qp.dequantize()  # what ignoring g_idx would compute
    ck = tmp_path / "gptq-act-order"
    ck.mkdir()
    write_safetensors(ck / "model.safetensors", {k: np.asarray(v, np.float32) if v.dtype == np.float64 else v
                                                 for k, v in t.items()})
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4, "group_size": gs, "desc_act": True,
                                  "sym": False, "checkpoint_format": "gptq"}
    (ck / "config.json").write_text(json.dumps(cfg))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (ck / f).write_bytes((folder / f).read_bytes())
    export(str(ck), tmp_path / "out", **KW)

    m = onnx.load(str(tmp_path / "out" / "model.onnx"))
    names = [n.name for n in m.graph.node]
    layers = manifest(tmp_path / "out")["model"]["num_layers"]
    # per layer: qkv, o, gate/up, down -> 4 gathers when shared; 3 + 1 + 2 + 1 = 7 and two Concats when split
    assert sum(n.endswith("/ActOrderGather") for n in names) == layers * (4 if shared else 7)
    assert sum(n.endswith("_proj/Concat") for n in names) == (0 if shared else 2 * layers)
    assert sum(n.endswith("/MatMulNBits") and "layers" in n for n in names) == layers * (4 if shared else 7)
    ref = _float_reference(folder, deq, tmp_path / "ref")
    bad = _float_reference(folder, wrong, tmp_path / "bad")
    ids = list(range(5, 30))
    got, want, off = logits(tmp_path / "out", ids), logits(ref, ids), logits(bad, ids)
    err, err_wrong = np.abs(got - want).max(), np.abs(off - want).max()
    assert err < 0.1 * err_wrong, (err, err_wrong)
    assert err < 0.05 * np.abs(want).max()


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_int8_layers_mix_precision(tiny, tmp_path, method):
    root, folder, calib = tiny
    quantize(str(folder), tmp_path / "mixed", method=method, bits=4, group_size=32, int8_layers="-1",
             calibration=str(calib), samples=8, seq_len=32, **KW)
    m = manifest(tmp_path / "mixed")
    layers = m["model"]["num_layers"]
    plan = m["quantization"]["plan"]["linears"]
    assert {k for k, f in plan.items() if f == "int8g32"} == {k for k in plan if f".{layers - 1}." in k}
    assert m["quantization"]["plan"]["counts"] == {"int4g32": 4 * (layers - 1), "int8g32": 4}
    bits = {n.name.rsplit("/", 1)[0]: next(a.i for a in n.attribute if a.name == "bits")
            for n in onnx.load(str(tmp_path / "mixed" / "model.onnx")).graph.node if n.op_type == "MatMulNBits"}
    for name, b in bits.items():
        if name.startswith("model.layers."):
            assert b == (8 if int(name.split(".")[2]) == layers - 1 else 4), name


@pytest.mark.parametrize("kw,msg", [(dict(int8_layers="0,x"), "takes layer indices"),
                                    (dict(int8_layers="99"), "outside the model's"),
                                    (dict(int8_layers="0", save_checkpoint="CK"), "cannot hold")])
def test_int8_layers_bad_input(tiny, tmp_path, kw, msg):
    _, folder, _ = tiny
    if "save_checkpoint" in kw:
        kw = {**kw, "save_checkpoint": tmp_path / "ck"}
    with pytest.raises(QwenEdgeError, match=msg):
        quantize(str(folder), tmp_path / "out", method="rtn", bits=4, group_size=32, **kw, **KW)
    assert not (tmp_path / "out").exists() and not (tmp_path / "ck").exists()
