"""The layer-by-layer sensitivity pass on the real 0.5B against a stored plan's whole-model figures.

Runs the pass exactly as `quantize --target-size` does (same source with its tables tied as `auto` ties
them, same calibration windows and seed), then compares every predicted KL with the manifest's
(`quantization.plan.how.sensitivity.predicted_kl`) and prints time and peak RSS (issue 19: bounded memory,
same allocation). Run it alone on the machine:
    python scripts/bench_sensitivity.py ~/.cache/qwen-edge/bench/quant/speed-410MiB [--json]
With --windows N (and --seed S) it is the window-count study instead: the pass on N windows against the
stored figures (rank correlation of every tensor-and-format prediction, the plan each gives under the same
budgets, and that plan's predicted KL read from the stored figures: what fewer windows cost).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import die  # noqa: E402


def plan_of(pred: dict, how: dict, spec) -> dict[str, str]:
    """The allocation the stored plan's budgets give with these predictions (this machine's cost table)."""
    from qwen_edge.quantize import allocate as A
    from qwen_edge.quantize.format_costs import costs_for, kind_of, kinds_of
    from qwen_edge.quantize.recipe import Format, linear_shapes, table_bytes
    shapes = linear_shapes(spec)
    costs = costs_for(kinds_of(spec), spec=spec, progress=False)
    opts = {k: [A.Option(f, Format.parse(f).nbytes(*shapes[k]) if k in shapes else
                         table_bytes(k, Format.parse(f), spec.vocab_size, spec.hidden_size), v,
                         0.0 if k == "embedding" else costs.decode[kind_of(k)][f])
                for f, v in d.items() if f != "fp32"] for k, d in pred.items()}
    tps = how["speed"].get("target_tps")
    chosen = A.for_budgets(opts, max_bytes=how["goal"] - how["fixed_bytes_max"],
                           max_seconds=1 / tps - costs.step_s if tps else float("inf"))
    return {k: o.fmt for k, o in chosen.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest_folder", help="an artifact made with --target-size / --target-kl (whole-model pass)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--save", help="write the predicted KL table here (JSON)")
    ap.add_argument("--windows", type=int, default=None, help="windows for the pass (default: the stored plan's)")
    ap.add_argument("--seed", type=int, default=None, help="window seed (default: the stored plan's)")
    a = ap.parse_args()
    if a.windows is not None and a.windows < 1:
        die(f"error: --windows must be >= 1, got {a.windows}")
    from qwen_edge.assets import example_gguf
    from qwen_edge.quantize.calibration_text import calibration_tokens, sample_windows
    from qwen_edge.quantize.plan import LINEAR_CHOICES, TABLE_CHOICES
    from qwen_edge.quantize.recipe import Format, linear_shapes
    from qwen_edge.quantize.sensitivity import predicted_kl_by_layer
    from qwen_edge.sources.tie import tie
    from qwen_edge.sources import open_source
    mpath = Path(a.manifest_folder) / "qwen_edge.json"
    if not mpath.is_file():
        die(f"error: {a.manifest_folder} is not a qwen-edge model folder")
    man = json.loads(mpath.read_text())
    if "sensitivity" not in ((man.get("quantization") or {}).get("plan") or {}).get("how", {}):
        die(f"error: {a.manifest_folder} was not made with a target: it stores no sensitivity figures")
    how = man["quantization"]["plan"]["how"]
    stored = how["sensitivity"]["predicted_kl"]
    n, seq = how["sensitivity"]["windows"], how["sensitivity"]["seq_len"]
    study = a.windows is not None or a.seed is not None
    n = a.windows or n
    src, _ = tie(open_source(str(example_gguf())), "auto")
    spec = src.spec
    cand = {k: [Format.parse(f) for f in (LINEAR_CHOICES if k in linear_shapes(spec) else TABLE_CHOICES)]
            for k in stored}
    windows = sample_windows(calibration_tokens("enwiki", src.write_tokenizer), n, seq,
                             (a.seed if a.seed is not None else 0) + 1)
    t0 = time.perf_counter()
    pred = predicted_kl_by_layer(spec, src.weights, windows, cand, seed=0, progress=not a.json)
    secs = time.perf_counter() - t0
    if a.save:
        Path(a.save).write_text(json.dumps(pred))
    # the manifest rounds to 7 decimals: compare at that precision, on values it holds to 2+ digits
    rel = [abs(round(pred[k][f], 7) - v) / v for k, d in stored.items() for f, v in d.items() if v >= 1e-5]
    order_a = sorted(((k, f) for k in stored for f in stored[k]), key=lambda kf: stored[kf[0]][kf[1]])
    order_b = sorted(((k, f) for k in stored for f in stored[k]), key=lambda kf: pred[kf[0]][kf[1]])
    worst = sorted(((abs(round(pred[k][f], 7) - v) / v, k, f, v, pred[k][f]) for k, d in stored.items()
                    for f, v in d.items() if v >= 1e-5), reverse=True)[:3]
    same_plan = {"from the stored figures": plan_of(stored, how, spec), "from these": plan_of(pred, how, spec)}
    stored_plan = man["quantization"]["plan"]
    out = {"windows": n, "seq_len": seq, "seconds": round(secs, 1),
           "plan_equal_to_the_stored_one": {k: v == {**stored_plan["linears"], **stored_plan["tables"]}
                                            for k, v in same_plan.items()},
           "plan_differences": {k: [v, same_plan["from these"][k]] for k, v in same_plan["from the stored figures"].items()
                                if v != same_plan["from these"][k]},
           "largest_differences": [dict(rel=round(r, 4), tensor=k, format=f, stored=v, now=p) for r, k, f, v, p in worst],
           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "whole_model_seconds": how["sensitivity"].get("seconds"), "values": len(rel),
           "max_rel_diff": max(rel), "median_rel_diff": sorted(rel)[len(rel) // 2],
           "same_order": order_a == order_b}
    if study:
        import numpy as np
        keys = [(k, f) for k in stored for f in stored[k]]
        ra = np.argsort(np.argsort([stored[k][f] for k, f in keys]))
        rb = np.argsort(np.argsort([pred[k][f] for k, f in keys]))
        out["study"] = {
            "spearman_vs_stored": float(np.corrcoef(ra, rb)[0, 1]),
            "tensors_in_another_format": len(out["plan_differences"]),
            # each plan's predicted KL, both read from the stored (reference) figures
            "plan_kl_from_stored_figures": {name: sum(stored[k][f] for k, f in p.items() if f != "fp32" and k in stored)
                                            for name, p in same_plan.items()}}
    print(json.dumps(out, indent=None if a.json else 2))


if __name__ == "__main__":
    sys.exit(main())
