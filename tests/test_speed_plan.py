"""Decode time as a second budget: the measured format costs (format_costs.py) and the allocation that
minimises predicted KL within a size and a time budget (allocate.for_budgets), on known numbers and tiny
models. Speed figures are printed by the benchmarks, never asserted here."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from qwen_edge.errors import InputError
from qwen_edge.quantize import allocate as A
from qwen_edge.quantize import format_costs as FC


def _random_options(rnd: random.Random, tensors: int = 5, formats: int = 4) -> dict[str, list[A.Option]]:
    options = {}
    for t in range(tensors):
        sizes = sorted(rnd.sample(range(10, 100), formats))
        kls = sorted((rnd.random() for _ in range(formats)), reverse=True)
        secs = [rnd.uniform(1, 10) for _ in range(formats)]  # time is not monotone in bytes
        options[f"t{t}"] = [A.Option(f"f{j}", s, k, sec) for j, (s, k, sec) in enumerate(zip(sizes, kls, secs))]
    return options


def _brute(options, max_bytes, max_seconds):
    best = None
    for combo in itertools.product(*options.values()):
        b, kl, s = sum(o.nbytes for o in combo), sum(o.kl for o in combo), sum(o.seconds for o in combo)
        if b <= max_bytes and s <= max_seconds and (best is None or kl < best):
            best = kl
    return best


@pytest.mark.parametrize("seed", range(30))
def test_both_budgets_hold_and_the_plan_is_near_the_exact_optimum(seed):
    rnd = random.Random(seed)
    options = _random_options(rnd)
    lo_b, hi_b = A.cheapest(options), A.dearest(options)
    lo_s, hi_s = A.fastest(options), sum(max(o.seconds for o in v) for v in options.values())
    step = max(o.kl for v in options.values() for o in v)
    for fb, fs in ((0.5, 0.5), (0.3, 0.9), (0.9, 0.3), (1.0, 1.0), (0.7, 0.1)):
        mb, ms = lo_b + fb * (hi_b - lo_b), lo_s + fs * (hi_s - lo_s)
        opt = _brute(options, mb, ms)
        if opt is None:
            with pytest.raises(InputError):
                A.for_budgets(options, max_bytes=mb, max_seconds=ms)
            continue
        try:
            plan = A.for_budgets(options, max_bytes=mb, max_seconds=ms)
        except InputError:  # a heuristic may miss a feasible corner: only when the budgets are very tight
            assert fs <= 0.3 or fb <= 0.3, (seed, fb, fs)
            continue
        b, kl, s = A.totals3(plan)
        assert b <= mb and s <= ms * (1 + 1e-9)
        assert opt - 1e-12 <= kl <= opt + 2 * step
        assert A.for_budgets(options, max_bytes=mb, max_seconds=ms) == plan  # deterministic


def test_without_a_time_limit_it_is_the_size_only_plan():
    for seed in range(10):
        options = _random_options(random.Random(seed))
        budget = (A.cheapest(options) + A.dearest(options)) // 2
        a = A.totals(A.for_budget(options, budget))[1]
        b = A.totals3(A.for_budgets(options, max_bytes=budget))[1]
        assert b <= a + 1e-12


def test_a_time_budget_below_the_fastest_plan_is_a_clear_error():
    options = {"a": [A.Option("x", 10, 1.0, 5.0), A.Option("y", 20, 0.1, 2.0)],
               "b": [A.Option("x", 10, 2.0, 1.0), A.Option("y", 20, 0.5, 3.0)]}
    with pytest.raises(InputError, match="below the fastest plan"):
        A.for_budgets(options, max_bytes=40, max_seconds=2.9)
    plan = A.for_budgets(options, max_bytes=40, max_seconds=3.0)  # only the fastest plan fits
    assert {k: o.fmt for k, o in plan.items()} == {"a": "y", "b": "x"}
    with pytest.raises(InputError, match="no plan meets both"):
        A.for_budgets(options, max_bytes=29, max_seconds=3.0)  # the fastest plan is 30 bytes


def test_kl_target_within_a_time_budget():
    options = {"a": [A.Option("x", 10, 1.0, 1.0), A.Option("y", 20, 0.1, 4.0), A.Option("z", 40, 0.05, 1.5)],
               "b": [A.Option("x", 10, 2.0, 1.0), A.Option("y", 20, 0.5, 1.5)]}
    plan = A.for_budgets(options, max_seconds=3.0, kl_target=0.6)  # a.y is too slow: a.z it is
    assert {k: o.fmt for k, o in plan.items()} == {"a": "z", "b": "y"}
    with pytest.raises(InputError, match="--target-kl 0.2 is below what any plan reaches"):  # the KL's fault
        A.for_budgets(options, max_seconds=3.0, kl_target=0.2)
    with pytest.raises(InputError, match="no plan meets both --target-kl 1 and the decode-time budget"):
        A.for_budgets(options, max_seconds=2.5, kl_target=1.0)  # reachable (0.55), not within 2.5 s


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN_EDGE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


SHAPES = {"self_attn.qkv_proj": (128, 64), "lm_head": (320, 64)}
FORMATS = ("int4g32", "int8g32", "int4g16")


def test_cost_table_has_every_format_at_every_shape_and_is_cached(isolated_cache, monkeypatch):
    t = FC.costs_for(SHAPES, formats=FORMATS, threads=1, progress=False, cold_bytes=1 << 20)
    for kind in SHAPES:
        assert set(t.decode[kind]) == set(FORMATS) == set(t.prefill[kind])
        assert all(v > 0 for v in t.decode[kind].values())
    assert t.prefill["lm_head"] == t.decode["lm_head"]  # the head runs at M=1 in both
    files = list((isolated_cache / "format-costs").glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["decode"] == t.decode
    calls = []
    monkeypatch.setattr(FC, "time_formats", lambda n, k, fmts, *a, **kw: calls.append(n) or [1e-6] * len(fmts))
    again = FC.costs_for(SHAPES, formats=FORMATS, threads=1, progress=False, cold_bytes=1 << 20)
    assert again.decode == t.decode and not calls  # from the cache
    real = FC.machine()
    monkeypatch.setattr(FC, "machine", lambda: {**real, "onnxruntime": "0.0.0-other"})
    other = FC.costs_for(SHAPES, formats=FORMATS, threads=1, progress=False, cold_bytes=1 << 20)
    assert calls and other.decode != t.decode  # a new onnxruntime (or CPU) measures again
    assert len(list((isolated_cache / "format-costs").glob("*.json"))) == 2


def test_step_seconds_runs_the_models_own_graph_without_its_linears(tmp_path):
    from qwen_edge.spec import ModelSpec
    from qwen_edge.export.writer import export
    from tiny_models import make_tiny
    _, hf = make_tiny(tmp_path / "hf")
    m = export(str(hf), tmp_path / "art", progress=False)
    spec = ModelSpec.from_dict(m["model"])
    s = FC.step_seconds(spec, context=32, steps=8, threads=1)
    assert 0 < s < 1.0


@pytest.mark.parametrize("tied", [False, True])
def test_bytes_read_per_token_count_the_embedding_as_one_row(tmp_path, tied):
    """Untied: the embedding is read one row per token. Tied: the same matrix is the head, read whole."""
    from qwen_edge import Model
    from qwen_edge import graph_facts
    from qwen_edge.export.writer import export
    from qwen_edge.runtimes.bench import read_per_token
    from tiny_models import make_tiny
    _, hf = make_tiny(tmp_path / "hf", tie_word_embeddings=tied)
    export(str(hf), tmp_path / "art", progress=False, max_length=64)
    facts = graph_facts.read(tmp_path / "art" / "model.onnx", sizes=True)
    whole = sum(facts.initializer_bytes.values())
    table = 320 * 64 * 4
    assert whole - facts.bytes_per_token() == (0 if tied else table - table // 320)
    m = Model.load(tmp_path / "art")
    r = read_per_token(m, 10)
    assert r["kv_cache"] == 2 * 2 * 2 * 16 * 10 * 4 and r["total"] == r["weights"] + r["kv_cache"]


def test_formats_are_timed_one_session_at_a_time(monkeypatch):
    made = []
    real = FC._Timer

    alive, most = [0], [0]

    class Counting(real):
        def __init__(self, *a, **kw):
            made.append(a[2])
            super().__init__(*a, **kw)
            alive[0] += 1
            most[0] = max(most[0], alive[0])

        def __del__(self):
            alive[0] -= 1
    monkeypatch.setattr(FC, "_Timer", Counting)
    fmts = [FC.Format.parse(f) for f in FORMATS]
    out = FC.time_formats(64, 64, fmts, 1, threads=1, passes=2, cold_bytes=1 << 16)
    assert len(out) == len(fmts) and all(v > 0 for v in out) and made == fmts
    assert most[0] == 1  # co-resident sessions slow each other: never two at once


def test_bench_predicted_sets_the_cost_model_beside_the_measured_speed(tmp_path, isolated_cache):
    """`qwen-edge bench --predicted`: the decode speed the cost table predicts for the artifact's plan (what
    --target-speed plans with) next to the measured one; a folder without a plan is refused before timing."""
    import subprocess
    import sys
    from qwen_edge.export.writer import export
    from qwen_edge.quantize.api import quantize
    from tiny_models import make_tiny
    _, hf = make_tiny(tmp_path / "hf")
    export(str(hf), tmp_path / "fp32", progress=False, max_length=64)
    quantize(str(hf), tmp_path / "int4", method="rtn", bits=4, max_length=64, progress=False)
    bench = [sys.executable, "-m", "qwen_edge.cli", "bench", "--prompt-tokens", "16", "--new-tokens", "8",
             "--runs", "1", "--threads", "1", "--predicted", "--json"]
    env = {**__import__("os").environ, "QWEN_EDGE_CACHE": str(isolated_cache)}
    r = subprocess.run(bench + [str(tmp_path / "int4")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    p = out["predicted"]
    assert p["decode_tps"] > 0 and p["step_ms"] > 0 and p["linears_and_head_ms"] > 0
    assert p["measured_over_predicted"] == pytest.approx(out["decode_tps"] / p["decode_tps"], rel=1e-2)
    assert list((isolated_cache / "format-costs").glob("*.json"))  # measured once, kept
    r = subprocess.run(bench + [str(tmp_path / "fp32")], capture_output=True, text=True, env=env, timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "needs a quantized artifact" in lines[0], r.stderr
