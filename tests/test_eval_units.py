"""eval building blocks without a model: window plan, compact KL, metrics, gate grammar, reports, datasets."""

import json
import math
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.eval import gates as G
from qwen_edge.eval import metrics as M
from qwen_edge.eval import reports
from qwen_edge.eval.datasets import load_dataset
from qwen_edge.eval.score import Compact, kl_from_compact
from qwen_edge.eval.windows import plan


@pytest.mark.parametrize("n,ctx,stride", [(2, 2, 2), (10, 4, 4), (10, 4, 2), (100, 16, 5), (33, 8, 1), (7, 64, 32)])
def test_window_plan_scores_every_token_once(n, ctx, stride):
    wins = plan(n, ctx, stride)
    scored = [t for w in wins for t in range(w.first, w.end)]
    assert scored == sorted(set(scored))  # each token at most once, in order
    if stride < ctx:  # overlapping windows: every token from the second on
        assert scored == list(range(1, n))
    else:  # non-overlapping: all but each window's first token
        assert scored == [t for t in range(1, n) if t not in {w.begin for w in wins}]
    for i, w in enumerate(wins):
        assert 0 < w.end - w.begin <= ctx and w.begin < w.first < w.end
        if i and stride < ctx:  # later windows give every scored token at least ctx - stride of context
            assert w.first - w.begin >= ctx - stride


@pytest.mark.parametrize("args", [(1, 4, 4), (10, 1, 1), (10, 4, 5), (10, 4, 0)])
def test_window_plan_rejects(args):
    with pytest.raises(QwenEdgeError):
        plan(*args)


def _logsoftmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _compact(lp, k):
    ids = np.argsort(-lp, axis=1)[:, :k].astype(np.int32)
    vals = np.take_along_axis(lp, ids, axis=1)
    mask = np.ones_like(lp, dtype=bool)
    np.put_along_axis(mask, ids.astype(np.int64), False, axis=1)
    rest = np.log(np.where(mask, np.exp(lp), 0).sum(axis=1))
    return Compact(ids, vals.astype(np.float32), rest.astype(np.float32), np.zeros(len(lp)))


def test_compact_kl_is_exact_with_one_token_left_and_a_lower_bound_otherwise():
    rng = np.random.default_rng(0)
    p = _logsoftmax(rng.normal(size=(20, 50)) * 3).astype(np.float32)
    q = _logsoftmax(p + rng.normal(size=p.shape).astype(np.float32) * 0.5).astype(np.float32)
    exact = (np.exp(p.astype(np.float64)) * (p - q)).sum(axis=1)
    np.testing.assert_allclose(kl_from_compact(_compact(p, 49), q), exact, rtol=1e-4, atol=1e-6)
    small = kl_from_compact(_compact(p, 5), q)
    assert np.all(small <= exact + 1e-6) and np.all(small > 0)
    np.testing.assert_allclose(kl_from_compact(_compact(p, 5), p), 0, atol=1e-6)


def test_metrics_errors():
    rng = np.random.default_rng(1)
    nll = rng.gamma(2.0, 1.5, size=1000)
    m = M.perplexity(nll)
    assert m["ppl"] == pytest.approx(math.exp(nll.mean()))
    assert m["ppl_se"] == pytest.approx(m["ppl"] * nll.std(ddof=1) / math.sqrt(1000))
    worse = nll + rng.normal(0.05, 0.01, size=1000)
    r = M.against_reference(worse, nll, np.abs(rng.normal(size=1000)), rng.random(1000) < 0.9)
    assert r["ppl_ratio"] == pytest.approx(math.exp(0.05), abs=0.005)
    assert r["ppl_ratio_se"] < m["ppl_se"] / m["ppl"]  # paired differences: far tighter than either ppl
    assert r["ppl_increase"] == pytest.approx(r["ppl_ratio"] - 1)


@pytest.mark.parametrize("text,metric,op,thr", [
    ("top1>=90%", "top1", ">=", 0.9), ("ppl_increase<=3%", "ppl_increase", "<=", 0.03),
    (" kl_mean < 0.05 ", "kl_mean", "<", 0.05), ("kl_p99<=1e-1", "kl_p99", "<=", 0.1), ("ppl<=12.5", "ppl", "<=", 12.5),
    ("top1_vs_baseline>=-0.5%", "top1_vs_baseline", ">=", -0.005)])
def test_gate_grammar(text, metric, op, thr):
    g = G.parse(text)
    assert (g.metric, g.op) == (metric, op) and g.threshold == pytest.approx(thr)


@pytest.mark.parametrize("text,words", [("ppl<=abc", "is not METRIC OP NUMBER"), ("foo<=1", "unknown metric 'foo'"),
                                        ("ppl=<3", "is not"), ("ppl<=5%", "% only applies"), ("", "is not"),
                                        ("kl_mean<=0.1%%", "is not")])
def test_gate_grammar_errors(text, words):
    with pytest.raises(QwenEdgeError, match=words):
        G.parse(text)


def test_gates_need_their_inputs():
    with pytest.raises(QwenEdgeError, match="needs --reference"):
        G.parse_all(["kl_mean<=0.1"], reference=False, baseline=False)
    with pytest.raises(QwenEdgeError, match="needs --baseline"):
        G.parse_all(["ppl_vs_baseline<=1%"], reference=True, baseline=False)


def test_gate_evaluation_and_message():
    [ok, bad] = G.evaluate([G.parse("top1>=90%"), G.parse("kl_mean<=0.05")], "m", {"top1": 0.95, "kl_mean": 0.08})
    assert ok.passed and not bad.passed
    assert bad.margin == pytest.approx(0.03) and "0.08" in bad.message() and "off by 0.03" in bad.message()
    [nan] = G.evaluate([G.parse("kl_mean<=0.05")], "m", {"kl_mean": float("nan")})
    assert not nan.passed


def _report(passed_gate: bool):
    gates = G.evaluate([G.parse("kl_mean<=0.05"), G.parse("top1>=90%")], "int4",
                       {"kl_mean": 0.01 if passed_gate else 0.2, "top1": 0.95})
    return {"schema": "qwen-edge-eval-report", "schema_version": 1, "dataset": {"name": "x.txt"},
            "method": {"ctx": 64, "stride": 64, "scoring": "s", "kl": "k"}, "reference": None,
            "models": [{"label": "int4", "seconds": 1.5, "size_bytes": 1e6,
                        "metrics": {"ppl": 10.0, "ppl_se": 0.5, "tokens": 100}}],
            "gates": [{"model": r.model, "gate": r.gate.text, "metric": r.gate.metric, "value": r.value,
                       "passed": r.passed, "message": r.message()} for r in gates],
            "passed": all(r.passed for r in gates)}


@pytest.mark.parametrize("passed", [True, False])
def test_junit_has_one_case_per_gate(passed):
    root = ET.fromstring(reports.junit(_report(passed)))
    cases = root.findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["kl_mean<=0.05", "top1>=90%"]
    failures = root.findall("./testsuite/testcase/failure")
    assert len(failures) == (0 if passed else 1) and root.find("testsuite").get("failures") == str(len(failures))
    if not passed:
        assert "kl_mean = 0.2" in failures[0].get("message")
    md = reports.markdown(_report(passed))
    assert ("❌" in md) != passed and "| `int4` |" in md


def test_datasets(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "a.md").write_text("first")
    (tmp_path / "d" / ".hidden.txt").write_text("hidden")
    (tmp_path / "d" / "x.bin").write_bytes(b"\xff\xfe")
    assert load_dataset(str(tmp_path / "d")).text == "first\n\nsecond"
    (tmp_path / "e").mkdir()
    with pytest.raises(QwenEdgeError, match="has no"):
        load_dataset(str(tmp_path / "e"))
    (tmp_path / "empty.txt").write_text(" \n\n ")
    with pytest.raises(QwenEdgeError, match="is empty"):
        load_dataset(str(tmp_path / "empty.txt"))
    with pytest.raises(QwenEdgeError, match="not found"):
        load_dataset(str(tmp_path / "nope.txt"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: a clear error, no traceback
    with pytest.raises(QwenEdgeError, match="wikitext2 needs the `datasets` package"):
        load_dataset("wikitext2")


def test_report_json_is_versioned(tmp_path):
    reports.write("report", _report(True), tmp_path / "r.json")
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["schema"] == "qwen-edge-eval-report" and r["schema_version"] == 1
