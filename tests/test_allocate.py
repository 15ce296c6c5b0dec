"""Bit allocation and recipes: the knapsack on known numbers, exact sizes, recipe files and their errors."""

from __future__ import annotations

import itertools
import json

import pytest

from qwen_edge.errors import InputError
from qwen_edge.quantize import allocate as A
from qwen_edge.quantize.recipe import Format, Plan, human_size, linear_shapes, load, parse_size, table_bytes


def test_hull_drops_dominated_and_concave_points():
    opts = [A.Option("a", 100, 1.0), A.Option("b", 150, 0.9), A.Option("c", 200, 0.2), A.Option("d", 300, 0.25),
            A.Option("e", 400, 0.1)]
    assert [o.fmt for o in A.hull(opts)] == ["a", "c", "e"]  # b is above the a-c line, d is dominated by c


def _brute(options, budget):
    best = None
    for combo in itertools.product(*options.values()):
        size = sum(o.nbytes for o in combo)
        kl = sum(o.kl for o in combo)
        if size <= budget and (best is None or kl < best[0] - 1e-12):
            best = (kl, size)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_greedy_allocation_is_near_the_exact_optimum(seed):
    import random
    rnd = random.Random(seed)
    options = {}
    for t in range(5):
        sizes = sorted(rnd.sample(range(10, 100), 4))
        kls = sorted((rnd.random() for _ in range(4)), reverse=True)
        options[f"t{t}"] = [A.Option(f"f{j}", s, k) for j, (s, k) in enumerate(zip(sizes, kls))]
    lo, hi = A.cheapest(options), A.dearest(options)
    for budget in (lo, (lo + hi) // 2, hi):
        plan = A.for_budget(options, budget)
        size, kl = A.totals(plan)
        opt_kl, _ = _brute(options, budget)
        assert size <= budget
        # optimal up to the one upgrade that did not fit: never worse than the largest single step
        step = max(o.kl for v in options.values() for o in v)
        assert opt_kl - 1e-12 <= kl <= opt_kl + step
        assert A.for_budget(options, budget) == plan  # deterministic
    assert A.totals(A.for_budget(options, hi))[1] == pytest.approx(sum(min(o.kl for o in v) for v in options.values()))


def test_budget_out_of_range_and_kl_target():
    options = {"a": [A.Option("x", 10, 1.0), A.Option("y", 20, 0.1)], "b": [A.Option("x", 10, 2.0), A.Option("y", 20, 0.5)]}
    with pytest.raises(InputError, match="less than the smallest plan"):
        A.for_budget(options, 19)
    plan = A.for_kl(options, 1.2)  # upgrading b saves the most per byte; that alone reaches 1.5, then a: 0.6
    assert A.totals(plan)[1] <= 1.2 and {k: o.fmt for k, o in plan.items()} == {"a": "y", "b": "y"}
    plan = A.for_kl(options, 1.6)
    assert {k: o.fmt for k, o in plan.items()} == {"a": "x", "b": "y"}
    with pytest.raises(InputError, match="below what any plan reaches"):
        A.for_kl(options, 0.1)
    # with a decode-time budget too: an unreachable KL target is named as such, not blamed on the time budget
    timed = {k: [A.Option(o.fmt, o.nbytes, o.kl, o.nbytes * 1e-3) for o in v] for k, v in options.items()}
    with pytest.raises(InputError, match=r"--target-kl 0.1 is below what any plan reaches \(predicted 0.6"):
        A.for_budgets(timed, max_seconds=1.0, kl_target=0.1)
    with pytest.raises(InputError, match="no plan meets both --target-kl 0.7 and the decode-time budget"):
        A.for_budgets(timed, max_seconds=0.025, kl_target=0.7)


def test_format_sizes_match_the_packed_arrays():
    import numpy as np

    from qwen_edge.pack import rtn, to_matmulnbits
    w = np.random.default_rng(0).standard_normal((48, 200)).astype(np.float32)
    for bits, g in ((4, 32), (4, 128), (8, 32), (8, 64), (4, 16)):
        p = to_matmulnbits(rtn(w, bits, g))
        assert Format(bits, g).nbytes(48, 200) == p.B.nbytes + p.scales.nbytes + p.zero_points.nbytes
    # a tied table: the head's codes, scales and zero points, plus the gather's zero points (1 byte per block)
    assert table_bytes("table", Format(4, 32), 10, 64) == Format(4, 32).nbytes(10, 64) + 10 * 2


def test_parse_size_and_formats():
    assert parse_size("410MiB") == 410 * 2**20 and parse_size("0.5 GB") == 500_000_000 and parse_size("1234") == 1234
    assert parse_size("1TB") == 10**12 and parse_size("2TiB") == 2 * 2**40
    assert [human_size(n) for n in (1024, 512, 410 * 2**20, 3 * 2**30)] == ["1.0 KiB", "512 B", "410.0 MiB", "3.0 GiB"]
    for bad in ("ten", "5 XB", "-3MiB"):
        with pytest.raises(InputError):
            parse_size(bad)
    assert Format.parse("int8g32") == Format(8, 32) and Format.parse("fp32") is None
    with pytest.raises(InputError, match="unknown format"):
        Format.parse("int5g32")


def test_recipe_round_trip_and_errors(tmp_path):
    from tiny_models import make_tiny

    from qwen_edge.sources import open_source
    _, folder = make_tiny(tmp_path / "hf")
    spec = open_source(str(folder)).spec
    names = list(linear_shapes(spec))
    plan = Plan({n: Format(8 if i % 3 == 0 else 4, 32) for i, n in enumerate(names)},
                {"embedding": Format(8, 64), "lm_head": None})
    path = tmp_path / "r.json"
    path.write_text(json.dumps(plan.to_json(spec, "rtn")))
    back, _ = load(path, spec)
    assert back.linears == plan.linears and back.tables == plan.tables
    r = json.loads(path.read_text())
    for change, msg in ((lambda r: r["linears"].pop(names[0]), "no format for"),
                        (lambda r: r["linears"].update({"model.layers.9.mlp.down_proj": "int4g32"}), "unknown tensor"),
                        (lambda r: r["linears"].update({names[0]: "int3g32"}), "unknown format"),
                        (lambda r: r["linears"].update({names[0]: "fp32"}), "never float"),
                        (lambda r: r["model"].update({"hidden_size": 1}), "made for a model with hidden_size"),
                        (lambda r: r.update({"schema": "x"}), "is not a qwen-edge recipe"),
                        (lambda r: r.update({"tables": {"table": "int4g32", "lm_head": "fp32"}}), "'tables' must be")):
        bad = json.loads(json.dumps(r))
        change(bad)
        p = tmp_path / "bad.json"
        p.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=msg):
            load(p, spec)
