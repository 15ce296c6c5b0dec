"""Pack/unpack round trips for every layout, and onnxruntime's kernels against a numpy dequantized
reference, on odd sizes too (K not a multiple of the block, odd block counts for nibble-packed zeros)."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qwen_edge.errors import QwenEdgeError
from qwen_edge import pack as P
from qwen_edge.quantize.rtn import rtn_quantize

SIZES = [(37, 96, 32), (37, 100, 32), (5, 40, 16), (64, 256, 128), (24, 224, 32)]  # 224/32 = 7 blocks


def random_qweight(rng, n, k, bits, bs, sym):
    nb = -(-k // bs)
    return P.QWeight(q=rng.integers(0, 1 << bits, (n, k)).astype(np.uint8),
                     scales=(rng.random((n, nb)) + 0.1).astype(np.float16).astype(np.float32),
                     zeros=None if sym else rng.integers(0, 1 << bits, (n, nb)).astype(np.uint8),
                     bits=bits, block_size=bs)


def same(a: P.QWeight, b: P.QWeight):
    assert a.bits == b.bits and a.block_size == b.block_size
    np.testing.assert_array_equal(a.q, b.q)
    np.testing.assert_array_equal(a.scales, b.scales)
    np.testing.assert_array_equal(a.zero_codes(), b.zero_codes())


def _session(node, inits, inputs):
    g = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(m.SerializeToString(), so)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("n,k,bs", SIZES)
def test_matmulnbits_round_trip_and_kernel(bits, sym, n, k, bs):
    rng = np.random.default_rng(n * k + bits)
    w = random_qweight(rng, n, k, bits, bs, sym)
    p = P.to_matmulnbits(w)
    assert p.B.shape == (n, -(-k // bs), bs * bits // 8) and p.B.dtype == np.uint8
    same(P.from_matmulnbits(p), w)
    inits = {"B": p.B, "s": p.scales.reshape(n, -1)}
    ins = ["x", "B", "s"]
    if p.zero_points is not None:
        inits["z"] = p.zero_points
        ins.append("z")
    node = helper.make_node("MatMulNBits", ins, ["y"], domain="com.microsoft", K=k, N=n, bits=bits, block_size=bs,
                            accuracy_level=0)
    sess = _session(node, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])])
    x = rng.standard_normal((3, k)).astype(np.float32)
    ref = x @ w.dequantize().T
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("n,k,bs", SIZES)
def test_gather_block_quantized_round_trip_and_kernel(bits, sym, n, k, bs):
    rng = np.random.default_rng(n + k + bits)
    w = random_qweight(rng, n, k, bits, bs, sym)
    gq = P.to_gather(w)
    same(P.from_gather(gq, k), w)
    inits = {"data": gq.data, "s": gq.scales}
    ins = ["data", "idx", "s"]
    if gq.zero_points is not None:
        inits["z"] = gq.zero_points
        ins.append("z")
    node = helper.make_node("GatherBlockQuantized", ins, ["y"], domain="com.microsoft", gather_axis=0,
                            quantize_axis=1, block_size=bs, bits=bits)
    sess = _session(node, inits, [helper.make_tensor_value_info("idx", TensorProto.INT64, [None])])
    idx = np.array([n - 1, 0, n // 2, 0])
    np.testing.assert_array_equal(sess.run(None, {"idx": idx})[0], w.dequantize()[idx])


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("sym", [True, False])
def test_gptq_layout_round_trip(bits, sym):
    rng = np.random.default_rng(bits)
    w = random_qweight(rng, 48, 96, bits, 32, sym)
    if not sym:
        w.zeros = np.maximum(w.zeros, 1)  # the format stores zero - 1
    t = P.to_gptq(w)
    assert t.qweight.dtype == np.int32 and t.qweight.shape == (96 * bits // 32, 48)
    assert t.qzeros.shape == (3, 48 * bits // 32) and t.scales.dtype == np.float16 and t.g_idx.shape == (96,)
    back, perm = P.from_gptq(t, bits)
    np.testing.assert_array_equal(perm, np.arange(96))
    same(back, w)


def test_gptq_layout_known_packing():
    # qweight packs 8 consecutive input channels per int32, the first in the lowest nibble
    w = P.QWeight(q=np.arange(16, dtype=np.uint8).reshape(1, 16) % 16, scales=np.ones((1, 1), np.float32),
                  zeros=np.full((1, 1), 8, np.uint8), bits=4, block_size=16)
    w.q = np.tile(w.q, (8, 1))
    w.scales, w.zeros = np.ones((8, 1), np.float32), np.full((8, 1), 8, np.uint8)
    t = P.to_gptq(w)
    assert t.qweight[0, 0].view(np.uint32) == 0x76543210 and t.qweight[1, 0].view(np.uint32) == 0xFEDCBA98
    assert t.qzeros[0, 0].view(np.uint32) == 0x77777777  # zero 8 stored as 7


def test_gptq_act_order_g_idx_becomes_a_permutation():
    rng = np.random.default_rng(1)
    w = random_qweight(rng, 16, 64, 4, 16, False)
    w.zeros = np.maximum(w.zeros, 1)
    t = P.to_gptq(w)
    perm = rng.permutation(64)  # a checkpoint whose input channels were shuffled along with g_idx
    shuffled = P.GPTQTensors(qweight=P._pack_int32(w.q.T[perm], 4, 0), qzeros=t.qzeros, scales=t.scales,
                             g_idx=t.g_idx[perm])
    back, order = P.from_gptq(shuffled, 4)
    # back holds W[:, order] with groups contiguous; dequantized values must match per channel
    np.testing.assert_array_equal(back.dequantize(), w.dequantize()[:, perm][:, order])
    np.testing.assert_array_equal(perm[order] // 16, np.arange(64) // 16)  # original channels, grouped


def test_awq_layout_round_trip_and_order():
    rng = np.random.default_rng(2)
    w = random_qweight(rng, 32, 64, 4, 32, False)
    t = P.to_awq(w)
    assert t.qweight.shape == (64, 4) and t.qzeros.shape == (2, 4)
    same(P.from_awq(t, 32), w)
    one = P.QWeight(q=np.tile(np.arange(8, dtype=np.uint8), (1, 1)).T.repeat(32, 1), scales=np.ones((8, 1), np.float32),
                    zeros=np.zeros((8, 1), np.uint8), bits=4, block_size=32)  # out channel c has code c
    assert P.to_awq(one).qweight[0, 0].view(np.uint32) == 0x75316420  # AutoAWQ's 0 2 4 6 1 3 5 7 order
    with pytest.raises(QwenEdgeError):
        P.to_awq(random_qweight(rng, 8, 32, 8, 32, False))


@pytest.mark.parametrize("bits,bs,sym", [(4, 32, False), (4, 128, True), (8, 64, False), (8, 32, True)])
def test_rtn_error_is_within_half_a_step(bits, bs, sym):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((17, 200)).astype(np.float32)
    q = rtn_quantize(w, bits, bs, sym)
    step = np.repeat(q.scales, bs, axis=1)[:, :200]
    # symmetric: half a step; asymmetric: the integer zero point may shift the range by up to half a step
    assert (np.abs(q.dequantize() - w) <= step * (0.5 if sym else 1.0) + 1e-6).all()
    assert np.abs(q.dequantize() - w).mean() < 0.3 * step.mean()
    assert q.q.max() <= (1 << bits) - 1


@pytest.mark.parametrize("bits,bs", [(3, 32), (4, 0), (4, 48), (2, 128)])
def test_rtn_refuses_bad_bits_and_group_sizes(bits, bs):
    with pytest.raises(QwenEdgeError):
        rtn_quantize(np.ones((4, 64), np.float32), bits, bs)
