"""Reports: JSON (the evaluate() dict, schema `qwen-edge-eval-report` version 1), JUnit XML (one test case per
model and gate, so CI systems list them) and Markdown (for a PR comment or a job summary)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from ..errors import QwenEdgeError
from ..outputs import Staged, check_target
from ..strict_json import dumps_report


def _head(path: Path, n: int = 4096) -> str:
    with open(path, "rb") as f:
        return f.read(n).decode("utf-8", "replace")


def _json_is_ours(path: Path) -> bool:
    return json.loads(Path(path).read_text(encoding="utf-8")).get("schema") in ("qwen-edge-eval-report",
                                                                                  "qwen-edge-task-report")


def _plot_is_ours(path: Path) -> bool:
    from .plot import is_ours
    return is_ours(path)


# what --force may replace: a file of the same kind that this command wrote
IS_OURS = {
    "report": _json_is_ours,
    "junit": lambda p: _head(p).startswith("<?xml") and '<testsuite name="qwen-edge eval"' in _head(p),
    "markdown": lambda p: _head(p).startswith("## qwen-edge eval"),
    "plot": _plot_is_ours,
}
OPTION = {"report": "--report", "junit": "--junit", "markdown": "--markdown", "plot": "--plot"}


def check_outputs(paths: dict[str, Path], *, force: bool, sources: list[Path]) -> None:
    """Before any scoring: every report path may be written, and no two are the same file."""
    seen: dict[Path, str] = {}
    for kind, path in paths.items():
        real = Path(path).resolve()
        if real in seen:
            raise QwenEdgeError(f"{OPTION[kind]} and {OPTION[seen[real]]} name the same file {path}")
        seen[real] = kind
        check_target(Path(path), force=force, is_ours=IS_OURS[kind], sources=sources, what=f"{OPTION[kind]} file")


def write(kind: str, rep: dict[str, Any], path: str | Path, *, force: bool = False) -> None:
    """Write one report (staged, renamed into place): kind is report, junit, markdown or plot."""
    with Staged(path, force=force, is_ours=IS_OURS[kind], kind="file", what=f"{OPTION[kind]} file") as tmp:
        if kind == "plot":
            from .plot import plot
            plot(rep, tmp)
        else:
            tasks = rep.get("schema") == "qwen-edge-task-report"  # eval --task (tasks/report.py)
            if tasks:
                from .tasks import report as T
            text = {"report": lambda r: dumps_report(r, indent=2, sort_keys=True) + "\n",
                    "junit": T.junit if tasks else junit, "markdown": T.markdown if tasks else markdown}[kind](rep)
            try:
                tmp.write_text(text, encoding="utf-8")
            except OSError as e:
                raise QwenEdgeError(f"cannot write {path}: {e.strerror or e}") from None


def _fmt(v: Any, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:.2f}%" if pct else f"{v:.4g}"


def summary_lines(rep: dict[str, Any]) -> list[str]:
    m = rep["method"]
    lines = [f"dataset {rep['dataset']['name']}, ctx {m['ctx']}, stride {m['stride']}"]
    for r in rep["models"]:
        x = r["metrics"]
        s = f"{r['label']}: ppl {x['ppl']:.4f} ± {x['ppl_se']:.4f} over {x['tokens']} tokens ({r['seconds']:.1f} s)"
        if "kl_mean" in x:
            s += (f"; vs reference: ppl ratio {x['ppl_ratio']:.4f} ± {x['ppl_ratio_se']:.4f}, KL mean "
                  f"{x['kl_mean']:.4g} median {x['kl_median']:.4g} p99 {x['kl_p99']:.4g}, top-1 {x['top1'] * 100:.2f}%")
        lines.append(s)
    for g in rep["gates"]:
        lines.append(f"{'PASS' if g['passed'] else 'FAIL'} {g['model']}: {g['gate']}: {g['message']}")
    return lines



def junit(rep: dict[str, Any]) -> str:
    gates = rep["gates"]
    suite = ET.Element("testsuite", name="qwen-edge eval", tests=str(max(len(gates), len(rep["models"]))),
                       failures=str(sum(not g["passed"] for g in gates)), errors="0")
    props = ET.SubElement(suite, "properties")
    for k, v in (("dataset", rep["dataset"]["name"]), ("ctx", rep["method"]["ctx"]),
                 ("stride", rep["method"]["stride"])):
        ET.SubElement(props, "property", name=k, value=str(v))
    models = {r["label"]: r for r in rep["models"]}
    for g in gates:
        tc = ET.SubElement(suite, "testcase", classname=f"qwen_edge.eval.{g['model']}", name=g["gate"],
                           time=str(models[g["model"]]["seconds"]))
        if not g["passed"]:
            f = ET.SubElement(tc, "failure", message=g["message"], type="GateFailed")
            f.text = f"{g['model']}: {g['message']}"
        ET.SubElement(tc, "system-out").text = f"{g['metric']} = {g['value']!r}"
    if not gates:  # no gates: one passing case per model, so the run still shows up
        for r in rep["models"]:
            tc = ET.SubElement(suite, "testcase", classname=f"qwen_edge.eval.{r['label']}", name="eval",
                               time=str(r["seconds"]))
            ET.SubElement(tc, "system-out").text = f"ppl = {r['metrics']['ppl']!r}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def markdown(rep: dict[str, Any]) -> str:
    m = rep["method"]
    has_ref = any("kl_mean" in r["metrics"] for r in rep["models"])
    out = [f"## qwen-edge eval: {'passed' if rep['passed'] else 'FAILED'}", "",
           f"Dataset `{rep['dataset']['name']}`, window {m['ctx']}, stride {m['stride']}. {m['scoring']}", ""]
    if rep.get("reference"):
        ref = rep["reference"]
        out += [f"Reference: `{ref['path']}` ({ref['kind']}, top-{ref['top_k']}), ppl {ref['ppl']:.4f}. {m['kl']}.", ""]
    head = ["model", "size MB", "tokens", "ppl ± se"]
    if has_ref:
        head += ["ppl ratio ± se", "KL mean", "KL median", "KL p99", "top-1"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rep["models"]:
        x = r["metrics"]
        row = [f"`{r['label']}`", f"{r['size_bytes'] / 1e6:.1f}", str(x["tokens"]), f"{x['ppl']:.4f} ± {x['ppl_se']:.4f}"]
        if has_ref:
            row += [f"{x['ppl_ratio']:.4f} ± {x['ppl_ratio_se']:.4f}", _fmt(x["kl_mean"]), _fmt(x["kl_median"]),
                    _fmt(x["kl_p99"]), _fmt(x["top1"], True)] if "kl_mean" in x else ["-"] * 5
        out.append("| " + " | ".join(row) + " |")
    if rep["gates"]:
        out += ["", "| | model | gate | value |", "|---|---|---|---|"]
        for g in rep["gates"]:
            out.append(f"| {'✅' if g['passed'] else '❌'} | `{g['model']}` | `{g['gate']}` | {g['message']} |")
    return "\n".join(out) + "\n"

