"""GPTQ and AWQ against RTN on synthetic layers, and the calibration layer against transformers."""


import numpy as np
import pytest
import torch

from qwen_edge.quantize.awq import awq_quantize, balance, search_scale, token_error
from qwen_edge.quantize.gptq import Hessian, gptq_quantize
from qwen_edge.quantize.rtn import rtn_quantize


def correlated_inputs(t, k, seed):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(k // 8, k, generator=g)  # most of the energy in a low-dimensional subspace
    return torch.randn(t, k // 8, generator=g) @ basis + 0.1 * torch.randn(t, k, generator=g)


def out_err(x, w, qw):
    return float(((x @ (torch.from_numpy(qw.dequantize()) - w).T) ** 2).mean())


@pytest.mark.parametrize("bits,bs,sym,act_order", [(4, 32, False, False), (4, 128, True, False),
                                                   (4, 64, False, True), (8, 32, False, False)])
def test_gptq_beats_rtn_on_correlated_inputs(bits, bs, sym, act_order):
    k, n = 256, 96
    x = correlated_inputs(2048, k, 0)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(1))
    h = Hessian(k)
    for chunk in x.split(500):
        h.add(chunk)
    np.testing.assert_allclose(h.H.numpy(), (2 * x.T @ x / len(x)).numpy(), rtol=1e-3, atol=1e-3)
    g = gptq_quantize(w, h.H, bits, bs, sym, act_order=act_order)
    r = rtn_quantize(w.numpy(), bits, bs, sym)
    assert out_err(x, w, g) < 0.7 * out_err(x, w, r)
    again = gptq_quantize(w, h.H, bits, bs, sym, act_order=act_order)
    np.testing.assert_array_equal(g.q, again.q)  # deterministic
    assert g.q.max() < 1 << bits and g.scales.shape == (n, k // bs)


def test_awq_scales_lower_the_error_with_outlier_channels():
    k, n = 256, 128
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, k, generator=g)
    x[:, [3, 77, 200]] *= 40  # a few input channels carry outliers (as in real LLM activations)
    w = torch.randn(n, k, generator=g) * 0.02
    s = search_scale(x, [w], 4, 64, False)
    assert s[[3, 77, 200]].min() > s.median() * 2  # the salient channels get scaled up
    qs = awq_quantize(w * s, x[:512] / s, 4, 64, False)
    dq = torch.from_numpy(qs.dequantize()) / s
    awq_err = float(((x @ (dq - w).T) ** 2).mean())
    rtn_err = out_err(x, w, rtn_quantize(w.numpy(), 4, 64))
    assert awq_err < 0.6 * rtn_err
    s2 = search_scale(x, [w], 4, 64, False)
    assert torch.equal(s, s2)


def test_token_weighting_ignores_sink_tokens():
    """A token 100x the others' norm (Qwen's attention sink) must not decide an error measure."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, generator=g)
    x[0] *= 100
    assert torch.allclose(balance(x).pow(2).mean(-1), torch.ones(64), atol=1e-5)
    noisy = x + torch.randn(64, 32, generator=g) * 0.1 * x.norm(dim=-1, keepdim=True) / 32 ** 0.5
    # the same relative noise on every token: the sink's error counts as one token's, not most of the total
    assert token_error(noisy, x) == pytest.approx(token_error(noisy[1:], x[1:]), rel=0.1)
    y = x.clone()
    y[0] *= 1.01  # a 1% error on the sink alone is 1% of one token, not most of the total
    assert token_error(y, x) == pytest.approx(1e-4 / 64, rel=1e-3)


def test_awq_search_never_worse_than_rtn_on_its_loss():
    """s = 1 (plain RTN) is a candidate, so the chosen scales score no worse on the loss they were chosen by."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 128, generator=g)
    w = torch.randn(96, 128, generator=g)
    w2 = torch.randn(64, 96, generator=g)
    ref = torch.relu(x @ w.T) @ w2.T
    loss = lambda q: token_error(torch.relu(x @ q.T) @ w2.T, ref)
    s = search_scale(x, [w], 4, 32, False, loss=loss)
    dq = torch.from_numpy(awq_quantize(w * s, None, 4, 32, False).dequantize()) / s
    rtn = torch.from_numpy(rtn_quantize(w.numpy(), 4, 32).dequantize())
    assert loss(dq) <= loss(rtn) + 1e-9


def test_awq_clipping_never_worse_than_minmax():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 128, generator=g)
    w = torch.randn(64, 128, generator=g)
    w[0, 5] = 12  # a weight outlier: clipping its group helps the other weights
    clipped = awq_quantize(w, x, 4, 32, False, clip=True)
    plain = awq_quantize(w, x, 4, 32, False, clip=False)
    assert out_err(x, w, clipped) <= out_err(x, w, plain)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_calibration_layer_matches_transformers(kind, tmp_path):
    from tiny_models import make_tiny

    from qwen_edge.quantize.layer import DecoderLayer, rms_norm, rope_tables
    from qwen_edge.sources import open_source
    model, folder = make_tiny(tmp_path / "hf", kind, tie_word_embeddings=kind == "qwen3")
    src = open_source(str(folder))
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True)
    h = torch.from_numpy(src.weights.get("model.embed_tokens.weight"))[ids]
    cos, sin = rope_tables(src.spec, 24)
    for i in range(src.spec.num_layers):
        h = DecoderLayer(src.spec, src.weights, i).forward(h, cos, sin)
    h = rms_norm(h, torch.from_numpy(src.weights.get("model.norm.weight")), src.spec.rms_norm_eps)
    np.testing.assert_allclose(h.numpy(), ref.hidden_states[-1].numpy(), atol=1e-4, rtol=0)


def test_calibration_is_deterministic_for_a_seed(tmp_path):
    from tiny_models import make_tiny

    from qwen_edge.quantize.layer_by_layer import Options, calibrate
    from qwen_edge.quantize.calibration_text import sample_windows
    from qwen_edge.sources import open_source
    _, folder = make_tiny(tmp_path / "hf")
    src = open_source(str(folder))
    ids = np.random.default_rng(0).integers(3, 300, 4000)
    runs = []
    for method in ("gptq", "awq", "gptq"):
        win = sample_windows(ids, 8, 64, seed=5)
        r = calibrate(src.spec, src.weights, win, Options(method=method, bits=4, group_size=32), progress=False)
        runs.append(r)
    assert runs[0].linears.keys() == runs[2].linears.keys() == runs[1].linears.keys()
    for name, p in runs[0].linears.items():
        np.testing.assert_array_equal(p.B, runs[2].linears[name].B)
        np.testing.assert_array_equal(p.scales, runs[2].linears[name].scales)
    assert len(runs[1].overrides) == 2 * src.spec.num_layers  # AWQ folds scales into both norms per layer
    other = sample_windows(ids, 8, 64, seed=6)
    assert not np.array_equal(other, sample_windows(ids, 8, 64, seed=5))
