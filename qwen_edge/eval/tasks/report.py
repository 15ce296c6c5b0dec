"""JUnit and Markdown for a task report (the same file kinds `eval` writes for its perplexity report)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any


def junit(rep: dict[str, Any]) -> str:
    gates = rep["gates"]
    suite = ET.Element("testsuite", name="qwen-edge eval", tests=str(max(len(gates), len(rep["tasks"]))),
                       failures=str(sum(not g["passed"] for g in gates)), errors="0")
    for g in gates:
        tc = ET.SubElement(suite, "testcase", classname=f"qwen_edge.eval.{rep['model']}", name=g["gate"],
                           time=str(rep["tasks"][g["task"]]["seconds"]))
        if not g["passed"]:
            f = ET.SubElement(tc, "failure", message=g["message"], type="GateFailed")
            f.text = g["message"]
        ET.SubElement(tc, "system-out").text = g["message"]
    if not gates:
        for name, e in rep["tasks"].items():
            tc = ET.SubElement(suite, "testcase", classname=f"qwen_edge.eval.{rep['model']}", name=name,
                               time=str(e["seconds"]))
            ET.SubElement(tc, "system-out").text = f"pass@1 = {e['pass@1']!r} over {e['items']} items"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def markdown(rep: dict[str, Any]) -> str:
    out = [f"## qwen-edge eval: {'passed' if rep['passed'] else 'FAILED'}", "",
           f"Model `{rep['model']}`. {rep['method']}.", "",
           "| task | items | pass@1 | reference | paired difference (95% interval) | McNemar p |", "|---|---|---|---|---|---|"]
    for name, e in rep["tasks"].items():
        row = [name, str(e["items"]), f"{e['pass@1']:.4f}"]
        if "reference" in e:
            pr = e["paired"]["pass@1"]
            row += [f"{e['reference']['pass@1']:.4f}", f"{pr['diff']:+.4f} [{pr['ci_low']:+.4f}, {pr['ci_high']:+.4f}]",
                    "-" if pr["p_value"] is None else f"{pr['p_value']:.3g}"]
        else:
            row += ["-", "-", "-"]
        out.append("| " + " | ".join(row) + " |")
    if rep["gates"]:
        out += ["", "| | gate | result |", "|---|---|---|"]
        out += [f"| {'✅' if g['passed'] else '❌'} | `{g['gate']}` | {g['message']} |" for g in rep["gates"]]
    return "\n".join(out) + "\n"
