"""The JavaScript package's own tests (js/test, node --test), run from here so the one test command covers
them: golden outputs come from the Python runtime (tests/js_fixtures.py and the real int4 0.5B), the
browser suite drives headless Chromium, and the Electron example is type-checked (Electron cannot run on
this machine's Node 20). js/node_modules must exist: scripts/test.sh installs it (npm ci)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "js"


def _need_node():
    if shutil.which("node") is None or not (JS / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail("Node 20 and js/node_modules are needed: run scripts/test.sh (it runs npm ci in js/)")


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory):
    out = tmp_path_factory.mktemp("jsfix")
    subprocess.run([sys.executable, str(ROOT / "tests" / "js_fixtures.py"), str(out)], check=True,
                   capture_output=True)
    return out


@pytest.fixture(scope="session")
def real_golden(real_int4, tmp_path_factory):
    """32 greedy tokens of the real int4 0.5B from the Python runtime (end tokens ignored)."""
    from qwen_edge import Model
    msgs = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    r = Model.load(real_int4, max_length=1024).complete(msgs, max_new_tokens=32, temperature=0.0, ignore_eos=True)
    path = tmp_path_factory.mktemp("jsreal") / "golden.json"
    path.write_text(json.dumps({"messages": msgs, "tokens": r.tokens, "text": r.text}))
    return path


def _node_test(files: list[str], env: dict, timeout: int = 1800) -> str:
    _need_node()
    r = subprocess.run(["node", "--test", "--test-concurrency=1", *files], cwd=JS, capture_output=True, text=True,
                       env={**os.environ, **env}, timeout=timeout)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "# fail 0" in out, out[-6000:]
    return out


def test_node_runtime_against_python_golden(fixtures):
    out = _node_test(["test/runtime.test.js"], {"QWEN_EDGE_JS_FIXTURES": str(fixtures)})
    assert "# pass 25" in out, out[-3000:]  # every test but the real-model one (test_js_real_model runs it)


def test_browser_page_in_headless_chromium(fixtures, tmp_path):
    out = _node_test(["test/browser.test.js"], {"QWEN_EDGE_JS_FIXTURES": str(fixtures),
                                                "QWEN_EDGE_REQUIRE_BROWSER": "1",
                                                "QWEN_EDGE_SCREENSHOTS": str(tmp_path)})
    assert "# pass 2" in out and (tmp_path / "web-tiny-int4.png").stat().st_size > 10_000, out[-3000:]
    assert (tmp_path / "web-tiny-fp16.png").stat().st_size > 10_000


def test_hand_written_types_match_src(tmp_path):
    """js/types/index.d.ts against declarations TypeScript generates from src/: the same public methods and
    option keys (it had drifted: render() took tools the types did not declare). The check fails on drift."""
    _need_node()
    r = subprocess.run(["node", "scripts/check-types.js"], cwd=JS, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "matches src/" in r.stdout, r.stdout + r.stderr
    drifted = tmp_path / "index.d.ts"
    text = (JS / "types" / "index.d.ts").read_text()
    drifted.write_text(text.replace("; tools?: Tool[] | null }): string;", " }): string;"))
    r = subprocess.run(["node", "scripts/check-types.js", str(drifted)], cwd=JS, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1 and "Model.render(options): src/ takes tools" in r.stderr, r.stdout + r.stderr


def test_electron_example_type_checks():
    _need_node()
    r = subprocess.run(["npx", "tsc", "-p", "../examples/electron/tsconfig.json"], cwd=JS, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.real
def test_js_real_model_in_node_and_chromium(fixtures, real_int4, real_golden, tmp_path):
    env = {"QWEN_EDGE_JS_FIXTURES": str(fixtures), "QWEN_EDGE_REAL_INT4": str(real_int4),
           "QWEN_EDGE_REAL_GOLDEN": str(real_golden), "QWEN_EDGE_REQUIRE_REAL": "1",
           "QWEN_EDGE_REQUIRE_BROWSER": "1", "QWEN_EDGE_SCREENSHOTS": str(tmp_path)}
    out = _node_test(["test/runtime.test.js", "test/browser.test.js"], env)
    assert "# skipped 0" in out and "# pass 29" in out, out[-3000:]
    assert (tmp_path / "web-real-int4.png").stat().st_size > 10_000
