"""CI gates: `METRIC OP NUMBER[%]`, e.g. `ppl_increase<=3%`, `kl_mean<=0.05`, `top1>=0.90`. Parsed and checked
up front (unknown metric, bad number, a metric that needs a reference or baseline not given: QwenEdgeError)."""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any, Optional

from ..errors import QwenEdgeError


@dataclass(frozen=True)
class Metric:
    help: str
    needs: Optional[str] = None  # None, "reference" or "baseline"
    fraction: bool = False       # a ratio, so "3%" means 0.03


METRICS: dict[str, Metric] = {
    "ppl": Metric("perplexity, exp(mean NLL) of the scored tokens"),
    "nll_mean": Metric("mean negative log-likelihood (nats per token)"),
    "ppl_ratio": Metric("perplexity / the reference's perplexity on the same tokens", "reference"),
    "ppl_increase": Metric("ppl_ratio - 1", "reference", True),
    "kl_mean": Metric("mean KL(reference || model) per token (nats)", "reference"),
    "kl_median": Metric("median per-token KL (nats)", "reference"),
    "kl_p99": Metric("99th percentile of per-token KL (nats)", "reference"),
    "kl_max": Metric("largest per-token KL (nats)", "reference"),
    "top1": Metric("share of tokens whose argmax equals the reference's", "reference", True),
    "ppl_vs_baseline": Metric("perplexity / the baseline's perplexity - 1", "baseline", True),
    "kl_mean_vs_baseline": Metric("kl_mean - the baseline's kl_mean", "baseline"),
    "top1_vs_baseline": Metric("top1 - the baseline's top1", "baseline", True),
}

OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
_GATE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(%?)\s*$")
_EXAMPLE = "e.g. kl_mean<=0.05, top1>=90%, ppl_increase<=3%"


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    op: str
    threshold: float  # in the metric's own unit (3% -> 0.03)
    percent: bool

    def show(self, v: float) -> str:
        return f"{v * 100:.4g}%" if self.percent else f"{v:.6g}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    model: str
    value: float
    passed: bool

    @property
    def margin(self) -> float:
        """How far the value is from the threshold (positive: above it)."""
        return self.value - self.gate.threshold

    def message(self) -> str:
        g = self.gate
        if self.passed:
            return f"{g.metric} = {g.show(self.value)} holds {g.op} {g.show(g.threshold)}"
        by = g.show(abs(self.margin)) if not g.percent else f"{abs(self.margin) * 100:.4g} points"
        return f"{g.metric} = {g.show(self.value)}, not {g.op} {g.show(g.threshold)} (off by {by})"


def parse(text: str) -> Gate:
    m = _GATE.match(text)
    if not m:
        raise QwenEdgeError(f"gate '{text}' is not METRIC OP NUMBER[%] ({_EXAMPLE})")
    name, op, num, pct = m.groups()
    if name not in METRICS:
        raise QwenEdgeError(f"unknown metric '{name}' in gate '{text}': choose from {', '.join(METRICS)}")
    value = float(num)
    if not math.isfinite(value):
        raise QwenEdgeError(f"gate '{text}' has no finite number")
    if pct:
        if not METRICS[name].fraction:
            raise QwenEdgeError(f"gate '{text}': % only applies to ratios "
                                f"({', '.join(k for k, v in METRICS.items() if v.fraction)})")
        value /= 100.0
    return Gate(text.strip(), name, op, value, bool(pct))


def parse_all(texts: list[str], *, reference: bool, baseline: bool) -> list[Gate]:
    gates = [parse(t) for t in texts]
    for g in gates:
        need = METRICS[g.metric].needs
        if need == "reference" and not reference:
            raise QwenEdgeError(f"gate '{g.text}' needs --reference (an artifact folder or a saved reference)")
        if need == "baseline" and not baseline:
            raise QwenEdgeError(f"gate '{g.text}' needs --baseline")
    return gates


def evaluate(gates: list[Gate], model: str, metrics: dict[str, Any]) -> list[GateResult]:
    out = []
    for g in gates:
        if g.metric not in metrics:
            raise QwenEdgeError(f"gate '{g.text}': {model} has no {g.metric} (its baseline entry lacks it?)")
        v = float(metrics[g.metric])
        out.append(GateResult(g, model, v, bool(OPS[g.op](v, g.threshold)) and math.isfinite(v)))
    return out
