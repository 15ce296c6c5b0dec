"""Bit allocation: per tensor, the format that minimises the predicted KL within a size budget.

Each tensor has candidate formats, each with its exact size and its predicted KL (sensitivity.py). The
sum of KLs under a byte budget is a multiple-choice knapsack. Per tensor only the lower convex hull of
(bytes, KL) matters; along it each upgrade buys less KL per byte than the one before. Starting from the
cheapest format everywhere, the upgrades of all tensors are taken in order of KL saved per byte, each
only after the same tensor's previous one, while they fit. That greedy solution is optimal up to the one
upgrade that did not fit (the Lagrangian relaxation's), deterministic (ties go by name), and it also
answers the other question: the smallest plan whose predicted KL is under a target.

Decode time is a second budget (format_costs.py measures each format's seconds per token at each shape):
bytes do not price time, since some formats run far slower per byte than others. With both budgets,
`for_budgets` prices time in bytes, cost = bytes + lam * seconds, runs the same greedy on that cost for a
sweep of prices (accepting an upgrade only while both true totals stay within their budgets) and keeps
the feasible plan with the least predicted KL. lam = 0 is the size-only answer whenever it is fast enough.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Option:
    fmt: str
    nbytes: int
    kl: float
    seconds: float = 0.0  # predicted decode time per token that this tensor costs in this format


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


def fastest(options: dict[str, list[Option]]) -> float:
    return sum(min(o.seconds for o in opts) for opts in options.values())


def totals3(plan: dict[str, Option]) -> tuple[int, float, float]:
    """(bytes, predicted KL, predicted seconds per token) of a plan."""
    return (sum(o.nbytes for o in plan.values()), sum(o.kl for o in plan.values()),
            sum(o.seconds for o in plan.values()))


def _priced(options: dict[str, list[Option]], lam: float) -> dict[str, list[Option]]:
    """Each tensor's hull on (bytes + lam * seconds, KL); the Option keeps its true bytes and seconds."""
    out = {}
    for k, opts in options.items():
        cost = {o: o.nbytes + lam * o.seconds for o in opts}
        pts = sorted(opts, key=lambda o: (cost[o], o.kl, o.fmt))
        front: list[Option] = []
        for o in pts:
            if not front or o.kl < front[-1].kl:
                if front and cost[o] == cost[front[-1]]:
                    front[-1] = o
                else:
                    front.append(o)
        hull_: list[Option] = []

        def slope(a: Option, b: Option) -> float:
            return (a.kl - b.kl) / (cost[b] - cost[a])
        for o in front:
            while len(hull_) >= 2 and slope(hull_[-2], hull_[-1]) <= slope(hull_[-1], o):
                hull_.pop()
            hull_.append(o)
        out[k] = [(o, cost[o]) for o in hull_]  # type: ignore[misc]
    return out


def _greedy(options: dict[str, list[Option]], lam: float, max_bytes: float, max_seconds: float,
            kl_target: float | None) -> dict[str, Option] | None:
    hulls = _priced(options, lam)
    level = {k: 0 for k in hulls}
    used = sum(h[0][0].nbytes for h in hulls.values())
    secs = sum(h[0][0].seconds for h in hulls.values())
    kl = sum(h[0][0].kl for h in hulls.values())
    if used > max_bytes or secs > max_seconds * (1 + 1e-9):
        return None
    steps = sorted(((hulls[k][j - 1][0].kl - hulls[k][j][0].kl) / (hulls[k][j][1] - hulls[k][j - 1][1]) * -1, k, j)
                   for k in hulls for j in range(1, len(hulls[k])))
    for _, name, j in steps:
        if kl_target is not None and kl <= kl_target:
            break
        if level[name] != j - 1:
            continue
        a, b = hulls[name][j - 1][0], hulls[name][j][0]
        if used + b.nbytes - a.nbytes <= max_bytes and secs + b.seconds - a.seconds <= max_seconds * (1 + 1e-9):
            level[name] = j
            used += b.nbytes - a.nbytes
            secs += b.seconds - a.seconds
            kl -= a.kl - b.kl
    if kl_target is not None and kl > kl_target:
        return None
    return {k: hulls[k][level[k]][0] for k in hulls}


def for_budgets(options: dict[str, list[Option]], *, max_bytes: float = float("inf"),
                max_seconds: float = float("inf"), kl_target: float | None = None) -> dict[str, Option]:
    """The plan with the least predicted KL within both budgets; with `kl_target`, the smallest plan that
    reaches it within the time budget. Raises InputError when no plan fits (saying which budget binds)."""
    if max_seconds < fastest(options) * (1 - 1e-9):
        raise InputError(f"the decode-time budget ({max_seconds * 1e3:.2f} ms per token for the weights) is below "
                         f"the fastest plan's ({fastest(options) * 1e3:.2f} ms: every tensor in its fastest format)")
    if max_bytes < cheapest(options):
        raise InputError(f"the size budget leaves {max_bytes / 2**20:.1f} MiB for the weights, less than the "
                         f"smallest plan (every tensor in its smallest format: {cheapest(options) / 2**20:.1f} MiB)")
    least = sum(min(o.kl for o in v) for v in options.values())
    if kl_target is not None and kl_target < least:  # the KL target alone is out of reach: say so, not the time
        raise InputError(f"--target-kl {kl_target:g} is below what any plan reaches (predicted {least:.4g} with every "
                         "tensor in its most accurate format)")
    span_b = dearest(options) - cheapest(options)
    span_s = max(sum(max(o.seconds for o in v) for v in options.values()) - fastest(options), 1e-12)
    base = span_b / span_s  # bytes per second that make the two spans equal
    best: dict[str, Option] | None = None
    for lam in [0.0] + [base * 2.0 ** j for j in range(-10, 11)]:
        plan = _greedy(options, lam, max_bytes, max_seconds, kl_target)
        if plan is None:
            continue
        b, kl, _ = totals3(plan)
        key = (b, kl) if kl_target is not None else (kl, b)
        if best is None or key < ((totals3(best)[0], totals3(best)[1]) if kl_target is not None else
                                  (totals3(best)[1], totals3(best)[0])):
            best = plan
    if best is None:
        what = (f"--target-kl {kl_target:g}" if kl_target is not None else
                f"{max_bytes / 2**20:.1f} MiB for the weights")
        raise InputError(f"no plan meets both {what} and the decode-time budget ({max_seconds * 1e3:.2f} ms per "
                         "token for the weights): allow more size or less speed (--target-speed)")
    return best

