"""Validate the decode-time model on whole plans of the real Qwen2.5-Coder-0.5B-Instruct: predicted (the
measured format costs of format_costs.py summed over the plan, plus the rest of a decode step) against
measured (`qwen-edge bench`, 2 threads, 512-token prompt, 128 new tokens), as the KL proxy was validated.

    python scripts/bench_speed_model.py [--plans all-int4g32,recipe-410 ...] [--runs 3]

Speed does not depend on how the codes were chosen, so every plan is quantized with RTN (minutes, not
GPTQ's quarter hour); a recipe's formats are replayed exactly. Artifacts are cached under
~/.cache/qwen-edge/bench/speed. Prints a Markdown table and writes results.json there. Run it alone:
it is a benchmark.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLANS = {
    "all-int4g32": ["--bits", "4", "--group-size", "32", "--embed-bits", "4", "--head-bits", "4",
                    "--token-group-size", "32"],
    "all-int4g128": ["--bits", "4", "--group-size", "128", "--embed-bits", "4", "--head-bits", "4",
                     "--token-group-size", "128"],
    "int4g32-int8g128-table": ["--bits", "4", "--group-size", "32"],
    "recipe-410": ["--recipe", str(ROOT / "recipes" / "qwen2.5-coder-0.5b-instruct-410mib.json")],
    "recipe-469": ["--recipe", str(ROOT / "recipes" / "qwen2.5-coder-0.5b-instruct-469mib.json")],
    "int8g32": ["--bits", "8"],
}


def plan_formats(folder: Path) -> dict[str, str]:
    """{tensor: format} of an artifact, from the recipe.json it carries."""
    r = json.loads((folder / "recipe.json").read_text())
    return {**r["linears"], **r["tables"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plans", default=",".join(PLANS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--extra", action="append", default=[], help="NAME=FOLDER: also bench an existing artifact")
    a = ap.parse_args()
    from qwen_edge.assets import example_gguf
    from qwen_edge.cache import cache_dir
    from qwen_edge.quantize.format_costs import costs_for, kinds_of
    from qwen_edge.spec import ModelSpec
    out = cache_dir() / "bench" / "speed"
    out.mkdir(parents=True, exist_ok=True)
    gguf = example_gguf()
    folders = {}
    for name in [p for p in a.plans.split(",") if p]:
        folders[name] = out / name
        if not (folders[name] / "recipe.json").is_file():
            subprocess.run([sys.executable, "-m", "qwen_edge.cli", "quantize", str(gguf), "-o", str(folders[name]),
                            "--method", "rtn", "--max-length", "4096", "--force", "--no-progress", *PLANS[name]],
                           check=True)
    for e in a.extra:
        name, folder = e.split("=", 1)
        folders[name] = Path(folder)
    spec = ModelSpec.from_dict(json.loads((next(iter(folders.values())) / "qwen_edge.json").read_text())["model"])
    costs = costs_for(kinds_of(spec), spec=spec, threads=2)
    rows = {}
    for name, folder in folders.items():
        b = json.loads(subprocess.run([sys.executable, "-m", "qwen_edge.cli", "bench", str(folder), "--threads", "2",
                                       "--prompt-tokens", "512", "--new-tokens", "128", "--runs", str(a.runs),
                                       "--json", "--no-verify"], capture_output=True, text=True, check=True).stdout)
        pred_s = costs.decode_seconds(plan_formats(folder))
        rows[name] = {"predicted_tps": 1 / pred_s, "measured_tps": b["decode_tps"], "prefill_tps": b["prefill_tps"],
                      "mib": b["size_bytes"] / 2**20, "read_mib": b["bytes_per_token"]["total"] / 2**20,
                      "bandwidth_limit_tps": b["bandwidth_limit_tps"], "bandwidth_share": b["bandwidth_share"]}
        print(name, rows[name], file=sys.stderr, flush=True)
    (out / "results.json").write_text(json.dumps({"rows": rows, "costs": costs.to_dict()}, indent=1))
    print(f"rest of a decode step (hollow graph, 512 cached positions): {costs.step_s * 1e3:.2f} ms\n")
    print("| plan | MiB | read/token MiB | predicted tok/s | measured tok/s | measured/predicted | "
          "bandwidth ceiling tok/s | share of ceiling | prefill tok/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['mib']:.1f} | {r['read_mib']:.1f} | {r['predicted_tps']:.1f} | {r['measured_tps']:.1f} | "
              f"{r['measured_tps'] / r['predicted_tps']:.2f} | {r['bandwidth_limit_tps']:.0f} | "
              f"{100 * r['bandwidth_share']:.0f} % | {r['prefill_tps']:.0f} |")
    print("\nformat costs at M=1, microseconds (GB/s):")
    kinds = list(costs.decode)
    print("| format | " + " | ".join(kinds) + " |\n|---|" + "---|" * len(kinds))
    for f in costs.decode[kinds[0]]:
        print(f"| {f} | " + " | ".join(f"{costs.decode[k][f] * 1e6:.0f} ({costs.gbps(k, f):.0f})" for k in kinds) + " |")


if __name__ == "__main__":
    main()
