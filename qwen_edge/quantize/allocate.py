"""Bit allocation: per tensor, the format that minimises the predicted KL within a size budget.

Each tensor has candidate formats, each with its exact size and its predicted KL (sensitivity.py). The
sum of KLs under a byte budget is a multiple-choice knapsack. Per tensor only the lower convex hull of
(bytes, KL) matters; along it each upgrade buys less KL per byte than the one before. Starting from the
cheapest format everywhere, the upgrades of all tensors are taken in order of KL saved per byte, each
only after the same tensor's previous one, while they fit. That greedy solution is optimal up to the one
upgrade that did not fit (the Lagrangian relaxation's), deterministic (ties go by name), and it also
answers the other question: the smallest plan whose predicted KL is under a target.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Option:
    fmt: str
    nbytes: int
    kl: float


def hull(options: list[Option]) -> list[Option]:
    """The options on the lower convex hull of (bytes, KL), cheapest first (dominated ones dropped)."""
    pts = sorted(options, key=lambda o: (o.nbytes, o.kl, o.fmt))
    front: list[Option] = []
    for o in pts:  # Pareto: more bytes must buy less KL
        if not front or o.kl < front[-1].kl:
            if front and o.nbytes == front[-1].nbytes:
                front[-1] = o
            else:
                front.append(o)
    out: list[Option] = []
    for o in front:  # convexity: each step's KL per byte no better than the previous step's
        while len(out) >= 2 and _slope(out[-2], out[-1]) <= _slope(out[-1], o):
            out.pop()
        out.append(o)
    return out


def _slope(a: Option, b: Option) -> float:
    return (a.kl - b.kl) / (b.nbytes - a.nbytes)  # KL saved per byte


def _steps(tables: dict[str, list[Option]]) -> list[tuple[float, str, int]]:
    steps = []
    for name, h in tables.items():
        for j in range(1, len(h)):
            steps.append((-_slope(h[j - 1], h[j]), name, j))
    return sorted(steps)


def cheapest(options: dict[str, list[Option]]) -> int:
    return sum(min(o.nbytes for o in opts) for opts in options.values())


def dearest(options: dict[str, list[Option]]) -> int:
    return sum(max(o.nbytes for o in opts) for opts in options.values())


def for_budget(options: dict[str, list[Option]], budget: int) -> dict[str, Option]:
    """The plan with the least predicted KL in at most `budget` bytes."""
    if budget < cheapest(options):
        raise InputError(f"the size budget leaves {budget / 2**20:.1f} MiB for the weights, less than the "
                         f"smallest plan (every tensor in its smallest format: {cheapest(options) / 2**20:.1f} MiB)")
    hulls = {k: hull(v) for k, v in options.items()}
    level = {k: 0 for k in hulls}
    used = sum(h[0].nbytes for h in hulls.values())
    for _, name, j in _steps(hulls):
        if level[name] != j - 1:
            continue  # an earlier step of this tensor did not fit
        extra = hulls[name][j].nbytes - hulls[name][j - 1].nbytes
        if used + extra <= budget:
            level[name] = j
            used += extra
    return {k: hulls[k][level[k]] for k in hulls}


def for_kl(options: dict[str, list[Option]], target: float) -> dict[str, Option]:
    """The smallest plan (greedily) whose predicted KL is at most `target`."""
    hulls = {k: hull(v) for k, v in options.items()}
    level = {k: 0 for k in hulls}
    kl = sum(h[0].kl for h in hulls.values())
    best = sum(h[-1].kl for h in hulls.values())
    if target < best:
        raise InputError(f"--target-kl {target:g} is below what any plan reaches (predicted {best:.4g} with every "
                         "tensor in its largest format)")
    for _, name, j in _steps(hulls):
        if kl <= target:
            break
        if level[name] != j - 1:
            continue
        kl -= hulls[name][j - 1].kl - hulls[name][j].kl
        level[name] = j
    return {k: hulls[k][level[k]] for k in hulls}


def totals(plan: dict[str, Option]) -> tuple[int, float]:
    return sum(o.nbytes for o in plan.values()), sum(o.kl for o in plan.values())
