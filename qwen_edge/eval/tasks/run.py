"""`qwen-edge eval MODEL --task humaneval`: generate, execute, score, pair with the reference, gate.

Everything is checked before the first generation (task files, gates, the reference, output files). Each
item's outcome is appended to a results file in the cache as soon as it is scored (keyed by the model's
manifest, the task file and the generation settings), so a killed run resumes from the items already
scored and a saved reference (`--save-reference`) spares CI the fp32 run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ... import __version__
from ... import artifact as A
from ...cache import cache_dir
from ...errors import InputError
from ...strict_json import dumps_report
from . import code as C
from . import stats as S

REPORT_SCHEMA, RESULTS_SCHEMA = "qwen-edge-task-report", "qwen-edge-task-results"


@dataclass
class TaskConfig:
    model: str
    tasks: list[str]
    reference: Optional[str] = None       # an artifact folder, or a --save-reference results file
    save_reference: Optional[str] = None  # write this run's per-item results here (a reference for later runs)
    limit: Optional[int] = None           # the first N problems of each task
    samples: int = 1                      # completions per problem (pass@k for k <= samples)
    temperature: Optional[float] = None   # default: 0 (greedy) with one sample, 0.8 with several
    max_new_tokens: int = 512
    timeout_s: float = 10.0
    memory_mb: int = 1024
    seed: int = 0
    gates: list[str] = field(default_factory=list)
    threads: int = 0
    draft: Optional[str] = None           # speculative decoding for the model (exact for fp32 targets)
    reference_draft: Optional[str] = None
    verify: bool = True
    force: bool = False
    progress: bool = True

    def settings(self) -> dict[str, Any]:
        """What must match for two runs' items to be compared (or a cached item to be reused)."""
        t = self.temperature if self.temperature is not None else (0.0 if self.samples == 1 else 0.8)
        return {"samples": self.samples, "temperature": t, "max_new_tokens": self.max_new_tokens,
                "seed": self.seed, "stops": C.STOPS, "timeout_s": self.timeout_s, "memory_mb": self.memory_mb}


# --- gates: TASK.pass@K OP NUMBER[%] | reference[+-Npp] ------------------------------------------------------
_GATE = re.compile(r"^\s*([\w.-]+?)\.pass@(\d+)\s*(<=|>=|==|<|>)\s*(?:(reference)\s*(?:([+-])\s*(\d+(?:\.\d+)?)\s*pp)?"
                   r"|(\d+(?:\.\d+)?|\.\d+)\s*(%?))\s*$")


@dataclass(frozen=True)
class TaskGate:
    text: str
    task: str
    k: int
    op: str
    relative: bool     # against the reference's score on the same items
    offset: float      # absolute: the threshold; relative: added to the reference's score


def parse_gate(text: str, tasks: list[str], samples: int, reference: bool) -> TaskGate:
    m = _GATE.match(text)
    if not m:
        raise InputError(f"gate '{text}' is not TASK.pass@K OP NUMBER[%] or TASK.pass@K OP reference[+-Npp] "
                         "(e.g. humaneval.pass@1>=0.35, humaneval.pass@1>=reference-2pp)")
    task, k, op, ref, sign, pp, num, pct = m.groups()
    if task not in tasks:
        raise InputError(f"gate '{text}' names task {task!r}, which this run does not produce ({', '.join(tasks)})")
    if int(k) < 1 or int(k) > samples:
        raise InputError(f"gate '{text}': pass@{k} needs --samples {k} or more (this run: {samples})")
    if ref:
        if not reference:
            raise InputError(f"gate '{text}' needs --reference (an artifact folder or a saved results file)")
        off = (float(pp) / 100 if pp else 0.0) * (-1 if sign == "-" else 1)
        return TaskGate(text.strip(), task, int(k), op, True, off)
    value = float(num) / (100 if pct else 1)
    if not 0 <= value <= 1:
        raise InputError(f"gate '{text}': pass@{k} is between 0 and 1 (or 0% and 100%)")
    return TaskGate(text.strip(), task, int(k), op, False, value)


_OPS = {"<=": lambda a, b: a <= b + 1e-12, ">=": lambda a, b: a >= b - 1e-12, "<": lambda a, b: a < b,
        ">": lambda a, b: a > b, "==": lambda a, b: abs(a - b) <= 1e-12}


# --- scoring one model ---------------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _results_path(folder: str, task_sha: str, settings: dict) -> Path:
    manifest = hashlib.sha256((Path(folder) / A.MANIFEST).read_bytes()).hexdigest()
    key = hashlib.sha256(json.dumps({"model": manifest, "task": task_sha, **settings}, sort_keys=True)
                         .encode()).hexdigest()[:24]
    return cache_dir() / "tasks" / f"{key}.jsonl"


def _read_done(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                d = json.loads(line)
                done[d["task_id"]] = d
            except (ValueError, KeyError, TypeError):
                break  # a line cut by a kill: everything before it stands
    return done


def score(folder: str, name: str, task_file: Path, problems: list[C.Problem], cfg: TaskConfig, label: str,
          draft: Optional[str]) -> dict[str, Any]:
    """Each problem's completions and outcomes for the model in `folder` (resumed from the results file)."""
    from ...runtimes.model import Model
    from .sandbox import run_program
    settings = cfg.settings()
    path = _results_path(folder, _sha(task_file), settings)
    done = _read_done(path)
    todo = [p for p in problems if p.task_id not in done]
    t0 = time.perf_counter()
    if todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        model = Model.load(folder, threads=cfg.threads, verify=cfg.verify, draft=draft)
        try:
            with open(path, "a", encoding="utf-8") as log:
                for i, p in enumerate(todo):
                    comps, outs = [], []
                    for j in range(cfg.samples):
                        r = model.complete(p.prompt, max_new_tokens=cfg.max_new_tokens,
                                           temperature=settings["temperature"], seed=cfg.seed + j, stop=C.STOPS)
                        comps.append(C.trim(r.text))
                        outs.append(run_program(p.program(comps[-1]), timeout_s=cfg.timeout_s,
                                                memory_mb=cfg.memory_mb))
                    rec = {"task_id": p.task_id, "passed": [o.passed for o in outs], "status": [o.status for o in outs],
                           "detail": [o.detail for o in outs], "completions": comps}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    os.fsync(log.fileno())
                    done[p.task_id] = rec
                    if cfg.progress:
                        _progress(label, name, len(problems) - len(todo) + i + 1, len(problems), i + 1,
                                  time.perf_counter() - t0, done, problems)
        finally:
            model.close()
    items = [done[p.task_id] for p in problems]
    return {"items": items, "seconds": round(time.perf_counter() - t0, 1), "resumed": len(problems) - len(todo),
            "results_file": str(path)}


def _progress(label: str, name: str, n: int, total: int, new: int, secs: float, done: dict, problems: list) -> None:
    passed = sum(done[p.task_id]["passed"][0] for p in problems if p.task_id in done)
    eta = secs / new * (total - n)
    print(f"{label} {name}: {n}/{total} ({passed} passed so far), {secs / new:.1f} s an item, ETA "
          f"{eta / 60:.1f} min", file=sys.stderr, flush=True)


def _metrics(items: list[dict], samples: int) -> dict[str, float]:
    out = {}
    for k in sorted({1, samples} | {k for k in (5, 10) if k <= samples}):
        out[f"pass@{k}"] = S.mean_pass_at_k([it["passed"] for it in items], k)
    return out


def _per_item(items: list[dict], k: int) -> list[float]:
    return [S.pass_at_k(len(it["passed"]), sum(it["passed"]), k) for it in items]


# --- the reference -------------------------------------------------------------------------------------------
def _load_saved(path: Path, cfg: TaskConfig) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--reference {path}: not a readable results file ({e})") from None
    if not isinstance(d, dict) or d.get("schema") != RESULTS_SCHEMA:
        raise InputError(f"--reference {path} is not a qwen-edge task results file (--save-reference writes one)")
    mine, theirs = cfg.settings(), d.get("settings", {})
    diff = [k for k in ("samples", "temperature", "max_new_tokens", "seed", "stops") if mine[k] != theirs.get(k)]
    if diff:
        raise InputError(f"--reference {path} was made with other settings ({', '.join(diff)}): its items cannot "
                         "be paired with this run's")
    return d


# --- the run -------------------------------------------------------------------------------------------------
def run_tasks(cfg: TaskConfig) -> dict[str, Any]:
    if isinstance(cfg.samples, bool) or not isinstance(cfg.samples, int) or cfg.samples < 1:
        raise InputError(f"--samples must be an integer >= 1, got {cfg.samples!r}")
    if cfg.limit is not None and cfg.limit < 1:
        raise InputError(f"--limit must be at least 1, got {cfg.limit}")
    if cfg.timeout_s <= 0 or cfg.memory_mb < 64:
        raise InputError("--timeout must be positive and --memory-mb at least 64")
    A.read_manifest(cfg.model)
    loaded = []
    for spec in cfg.tasks:
        if spec.startswith("lm-eval:"):
            raise InputError(f"--task {spec}: lm-eval tasks run through lm_eval itself against `qwen-edge serve` "
                             "(docs/ci.md); this command runs code tasks (humaneval or a HumanEval-format .jsonl)")
        name, path, problems = C.load(spec)
        loaded.append((name, path, problems[:cfg.limit] if cfg.limit else problems))
    names = [n for n, _, _ in loaded]
    if len(set(names)) != len(names):
        raise InputError(f"a task is named twice: {', '.join(names)}")
    gates = [parse_gate(g, names, cfg.samples, cfg.reference is not None) for g in cfg.gates]
    saved = None
    if cfg.reference is not None:
        ref = Path(cfg.reference)
        if ref.is_file():
            saved = _load_saved(ref, cfg)
            for name, _, problems in loaded:
                have = saved.get("tasks", {}).get(name, {}).get("items", {})
                missing = [p.task_id for p in problems if p.task_id not in have]
                if missing:
                    raise InputError(f"--reference {ref} has no results for {len(missing)} of {name}'s items "
                                     f"(first: {missing[0]}): save it with the same tasks and --limit")
        else:
            A.read_manifest(ref)
    if cfg.save_reference is not None:
        from ...outputs import check_target
        check_target(Path(cfg.save_reference), force=cfg.force, is_ours=_results_are_ours,
                     sources=[Path(cfg.model)], what="--save-reference file")

    label = Path(cfg.model).resolve().name
    rep: dict[str, Any] = {"schema": REPORT_SCHEMA, "version": 1, "qwen_edge": __version__, "model": label,
                           "model_path": str(cfg.model), "settings": cfg.settings(), "tasks": {}, "gates": [],
                           "reference": None, "passed": True,
                           "method": ("greedy pass@1 (or the unbiased pass@k estimator over --samples); each "
                                      "program runs in its own process group with time and memory limits; "
                                      "differences paired item by item: bootstrap interval (10,000 resamples), "
                                      "exact McNemar p-value for 0/1 outcomes")}
    if cfg.reference is not None:
        rep["reference"] = {"path": str(cfg.reference), "kind": "file" if saved else "folder"}
    for name, path, problems in loaded:
        mine = score(cfg.model, name, path, problems, cfg, label, cfg.draft)
        entry: dict[str, Any] = {"file": str(path), "items": len(problems), **_metrics(mine["items"], cfg.samples),
                                 "seconds": mine["seconds"], "resumed_items": mine["resumed"],
                                 "per_item": mine["items"]}
        if cfg.reference is not None:
            if saved is not None:
                have = saved["tasks"][name]["items"]
                ref_items = [{"task_id": p.task_id, **have[p.task_id]} for p in problems]
            else:
                ref_items = score(cfg.reference, name, path, problems, cfg, Path(cfg.reference).resolve().name,
                                  cfg.reference_draft)["items"]
            entry["reference"] = {**_metrics(ref_items, cfg.samples),
                                  "per_item": [{"task_id": r["task_id"], "passed": r["passed"]} for r in ref_items]}
            entry["paired"] = {m: S.paired(_per_item(mine["items"], int(m[5:])), _per_item(ref_items, int(m[5:])))
                               for m in _metrics(mine["items"], cfg.samples)}
        rep["tasks"][name] = entry
    for g in gates:
        rep["gates"].append(_check(g, rep["tasks"][g.task]))
    rep["passed"] = all(g["passed"] for g in rep["gates"])
    if cfg.save_reference is not None:
        _save_results(rep, cfg)
    return rep


def _check(g: TaskGate, entry: dict[str, Any]) -> dict[str, Any]:
    metric = f"pass@{g.k}"
    value = entry[metric]
    n = entry["items"]
    if g.relative:
        threshold = entry["reference"][metric] + g.offset
        pr = entry["paired"][metric]
        noise = (pr["ci_high"] - pr["ci_low"]) / 2
    else:
        threshold = g.offset
        noise = S.noise_floor(n, value if 0 < value < 1 else 0.5)
    ok = _OPS[g.op](value, threshold)
    msg = f"{g.task}.{metric} = {value:.4f} {'holds' if ok else 'fails'} {g.op} {threshold:.4f}"
    if g.relative:
        pr = entry["paired"][metric]
        msg += (f" (reference {entry['reference'][metric]:.4f}; paired difference {pr['diff']:+.4f}, 95% interval "
                f"[{pr['ci_low']:+.4f}, {pr['ci_high']:+.4f}] over {n} items"
                + (f", McNemar p = {pr['p_value']:.3g}" if pr["p_value"] is not None else "") + ")")
    margin = abs(value - threshold)
    if margin < noise:
        msg += f"; the margin ({margin:.4f}) is within the noise of {n} items (±{noise:.4f}): more items decide it"
    return {"gate": g.text, "task": g.task, "metric": metric, "value": value, "threshold": threshold, "passed": ok,
            "margin": value - threshold, "noise": noise, "message": msg, "model": entry.get("label", "")}


def _results_are_ours(path: Path) -> bool:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("schema") == RESULTS_SCHEMA
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False


def _save_results(rep: dict[str, Any], cfg: TaskConfig) -> None:
    from ...outputs import Staged
    out = {"schema": RESULTS_SCHEMA, "version": 1, "model": rep["model"], "model_path": rep["model_path"],
           "settings": rep["settings"],
           "tasks": {name: {"file": e["file"], "items": {it["task_id"]: {"passed": it["passed"], "status": it["status"]}
                                                         for it in e["per_item"]}}
                     for name, e in rep["tasks"].items()}}
    with Staged(cfg.save_reference, force=cfg.force, is_ours=_results_are_ours, kind="file",
                what="--save-reference file") as tmp:
        Path(tmp).write_text(dumps_report(out, indent=1) + "\n", encoding="utf-8")


def summary_lines(rep: dict[str, Any]) -> list[str]:
    lines = []
    for name, e in rep["tasks"].items():
        ks = [k for k in e if k.startswith("pass@")]
        s = f"{rep['model']} {name}: " + ", ".join(f"{k} {e[k]:.4f}" for k in ks) + f" over {e['items']} items"
        if "reference" in e:
            pr = e["paired"]["pass@1"]
            s += (f"; reference pass@1 {e['reference']['pass@1']:.4f}, paired difference {pr['diff']:+.4f} "
                  f"[{pr['ci_low']:+.4f}, {pr['ci_high']:+.4f}]"
                  f"{' (distinguishable from zero)' if pr['distinguishable'] else ' (not distinguishable from zero)'}")
        lines.append(s)
    for g in rep["gates"]:
        lines.append(f"{'PASS' if g['passed'] else 'FAIL'} {g['gate']}: {g['message']}")
    return lines

