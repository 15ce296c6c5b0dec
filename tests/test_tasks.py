"""Task accuracy (`qwen-edge eval --task`): the execution sandbox, pass@k and the paired statistics against
hand-computed values, gates relative to a reference, resuming, and the real int4 on a HumanEval subset gated
against a saved fp32 result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_edge.eval.tasks import stats as S
from qwen_edge.eval.tasks.sandbox import run_program

DATA = Path(__file__).resolve().parent / "data"


# --- the sandbox ------------------------------------------------------------------------------------------
def _alive(marker: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if marker.encode() in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.parametrize("code, status, most_s", [
    ("assert sorted([3, 1, 2]) == [1, 2, 3]", "passed", 5),
    ("assert 1 + 1 == 3", "failed", 5),
    ("while True:\n    pass", "timeout", 2 + 5),
    ("import time\ntime.sleep(600)", "timeout", 2 + 5),
    ("x = bytearray(8 << 30)", "memory", 5),
    ("import ctypes\nctypes.string_at(0)", "crashed", 5),
    ("import os\nwhile True:\n    os.fork()", "failed", 5),
])
def test_each_kind_of_program_gets_its_outcome_within_its_limits(code, status, most_s):
    out = run_program(code, timeout_s=2, memory_mb=512)
    assert out.status == status and out.passed == (status == "passed"), out
    assert out.seconds < most_s, out


def test_nothing_a_program_starts_outlives_it():
    """A program that gets round the Python guard (posix.fork) and leaves sleeping children: the whole process
    group is killed at the time limit."""
    code = "import posix, time\nfor _ in range(3):\n    posix.fork()\ntime.sleep(600)\n"
    out = run_program(code, timeout_s=1.5, memory_mb=512)
    assert out.status == "timeout"
    assert not _alive("qwen-edge-exec-"), "a child of the program is still running"


def test_the_program_sees_no_credentials_and_its_own_folder():
    os.environ["QWEN_EDGE_TEST_SECRET"] = "s3cret"
    try:
        out = run_program("import os\nassert 'QWEN_EDGE_TEST_SECRET' not in os.environ\n"
                          "assert os.getcwd().startswith(os.environ['TMPDIR'])\nopen('x.txt', 'w').write('ok')")
    finally:
        del os.environ["QWEN_EDGE_TEST_SECRET"]
    assert out.passed, out


# --- statistics against hand-computed values --------------------------------------------------------------
def test_pass_at_k_is_the_unbiased_estimator():
    assert math.isclose(S.pass_at_k(10, 3, 1), 0.3)
    assert math.isclose(S.pass_at_k(10, 3, 5), 1 - math.comb(7, 5) / math.comb(10, 5))  # 1 - 21/252
    assert S.pass_at_k(5, 0, 1) == 0.0 and S.pass_at_k(5, 5, 3) == 1.0 and S.pass_at_k(4, 2, 3) == 1.0
    assert math.isclose(S.mean_pass_at_k([[True, False], [False, False]], 1), 0.25)


def test_paired_difference_and_mcnemar():
    # 1 item only the model passes, 6 only the reference: two-sided exact p = 2 * (C(7,0) + C(7,1)) / 2^7
    model = [1] * 10 + [1] + [0] * 6 + [0] * 3
    ref = [1] * 10 + [0] + [1] * 6 + [0] * 3
    p = S.paired(model, ref)
    assert p["model_only"] == 1 and p["reference_only"] == 6
    assert math.isclose(p["p_value"], 2 * (1 + 7) / 128)
    assert math.isclose(p["diff"], -5 / 20)
    # 7 discordant items, 6 against: p = 0.125, and the interval reaches zero: not distinguishable
    assert p["ci_low"] < -0.25 < p["ci_high"] <= 0 and not p["distinguishable"]
    worse = S.paired([0] * 12 + [1] * 28, [1] * 12 + [1] * 28)  # 12 of 12 discordant items against the model
    assert math.isclose(worse["p_value"], 2 / 2 ** 12) and worse["distinguishable"] and worse["ci_high"] < 0
    same = S.paired([1, 0, 1], [1, 0, 1])
    assert same["diff"] == 0 and same["p_value"] == 1.0 and not same["distinguishable"]
    assert S.paired([0.5, 1.0], [0.5, 0.0])["p_value"] is None  # fractions (pass@k): bootstrap only
    assert math.isclose(S.noise_floor(100, 0.5), 1.959963984540054 * 0.05)


# --- the command, on a tiny model and a toy task whose outcome does not depend on the completion -----------
def _toy(path: Path, n: int = 6) -> Path:
    rows = []
    for i in range(n):
        body = "return x + 1" if i % 2 == 0 else "return x - 1"
        rows.append({"task_id": f"toy/{i}", "entry_point": "f", "prompt": f"def f(x):\n    {body}\n\nNOTE = r'''",
                     "test": "'''\n\ndef check(fn):\n    assert fn(1) == 2\n"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen_edge.cli", "eval", *args, "--no-progress"],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "QWEN_EDGE_CACHE": str(cache)})


def test_gates_against_a_saved_reference_resume_and_reports(tiny_2k, tmp_path):
    toy, cache = _toy(tmp_path / "toy.jsonl"), tmp_path / "cache"
    art = str(tiny_2k.folder)
    r = _cli(art, "--task", str(toy), "--max-new-tokens", "2", "--limit", "3", "--json", cache=cache)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tasks"]["toy"]["resumed_items"] == 0
    r = _cli(art, "--task", str(toy), "--max-new-tokens", "2", "--save-reference", str(tmp_path / "ref.json"),
             "--json", cache=cache)
    rep = json.loads(r.stdout)
    assert r.returncode == 0 and rep["tasks"]["toy"]["resumed_items"] == 3, r.stderr  # the first three reused
    assert rep["tasks"]["toy"]["pass@1"] == 0.5 and len(rep["tasks"]["toy"]["per_item"]) == 6
    r = _cli(art, "--task", str(toy), "--max-new-tokens", "2", "--reference", str(tmp_path / "ref.json"),
             "--gate", "toy.pass@1>=reference-2pp", "--gate", "toy.pass@1>=60%", "--junit", str(tmp_path / "r.xml"),
             "--markdown", str(tmp_path / "r.md"), "--json", cache=cache)
    assert r.returncode == 1, r.stderr  # the absolute gate fails
    rep = json.loads(r.stdout)
    rel, absolute = rep["gates"]
    assert rel["passed"] and math.isclose(rel["threshold"], 0.48) and not absolute["passed"]
    assert "within the noise of 6 items" in absolute["message"]
    assert rep["tasks"]["toy"]["paired"]["pass@1"]["model_only"] == 0
    assert 'failures="1"' in (tmp_path / "r.xml").read_text() and "❌" in (tmp_path / "r.md").read_text()


# --- the real int4 on a HumanEval subset, against a saved fp32 result -------------------------------------
@pytest.mark.real
def test_real_int4_humaneval_subset_keeps_fp32_accuracy(real_int4, tmp_path):
    """The first 40 HumanEval problems, greedy: the 410 MiB recipe against fp32's saved outcomes
    (tests/data/humaneval-fp32-0.5b-40.json, made by `qwen-edge eval FP32 --task humaneval --limit 40
    --save-reference`). The gate allows 10 points: 40 items cannot resolve less (docs/ci.md)."""
    ref = DATA / "humaneval-fp32-0.5b-40.json"
    r = _cli(str(real_int4), "--task", "humaneval", "--limit", "40", "--threads", "2", "--reference", str(ref),
             "--gate", "humaneval.pass@1>=reference-10pp", "--json", cache=tmp_path / "cache")
    rep = json.loads(r.stdout) if r.stdout else {}
    print("\n".join(r.stderr.splitlines()[-3:]))
    t = rep["tasks"]["humaneval"]
    print(f"int4 pass@1 {t['pass@1']:.3f}, fp32 {t['reference']['pass@1']:.3f}, paired {t['paired']['pass@1']}")
    assert r.returncode == 0, rep.get("gates")
    assert t["pass@1"] > 0.1  # it does write working code
