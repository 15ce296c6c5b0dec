"""`qwen-edge run` and `qwen-edge bench` end to end (subprocesses) on a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from qwen_edge.export.writer import export
from qwen_edge.runtimes.model import Model
from tiny_models import make_tiny


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    _, hf = make_tiny(root / "hf", max_position_embeddings=512)
    export(str(hf), root / "onnx", max_length=512, progress=False)
    return root / "onnx"


@pytest.fixture(scope="module")
def model(folder):
    return Model.load(folder, threads=1)


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run([sys.executable, "-m", "qwen_edge.cli", *args], input=stdin, capture_output=True,
                          text=True, env=env, timeout=120)


def test_run_streams_the_chat_reply(folder, model):
    p = cli("run", str(folder), "-p", "Hello there", "--temperature", "0", "--max-new-tokens", "12", "--threads", "1")
    assert p.returncode == 0, p.stderr
    expected = model.generate([{"role": "user", "content": "Hello there"}], temperature=0.0, max_new_tokens=12)
    assert p.stdout == expected + "\n"
    raw = cli("run", str(folder), "-p", "-", "--raw", "--temperature", "0", "--max-new-tokens", "12",
              stdin="The quick brown fox")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == model.generate("The quick brown fox", temperature=0.0, max_new_tokens=12) + "\n"


def test_run_json_with_every_sampling_option(folder, model):
    p = cli("run", str(folder), "-p", "def main", "--temperature", "0.7", "--top-p", "0.8", "--top-k", "20",
            "--min-p", "0.05", "--repetition-penalty", "1.05", "--seed", "7", "--max-new-tokens", "16",
            "--stop", "\\n\\n", "--stop", "zzzz", "--threads", "2", "--system", "You are terse.", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"text", "tokens", "timings", "finish_reason"} <= set(out)
    assert {"ttft_s", "prefill_tps", "decode_tps", "prompt_tokens", "new_tokens"} <= set(out["timings"])
    r = model.complete([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "def main"}],
                       temperature=0.7, top_p=0.8, top_k=20, min_p=0.05, repetition_penalty=1.05, seed=7,
                       max_new_tokens=16, stop=["\n\n", "zzzz"])
    assert out["tokens"] == r.tokens and out["text"] == r.text and out["finish_reason"] == r.finish_reason


def test_interactive_chat_from_stdin(folder, model):
    p = cli("run", str(folder), "--chat", "--system", "You are terse.", "--temperature", "0",
            "--max-new-tokens", "5", "--json", stdin="Hello\n\nWhat next?\n/exit\nnever read\n")
    assert p.returncode == 0, p.stderr
    turns = [json.loads(line) for line in p.stdout.splitlines()]
    assert len(turns) == 2
    assert turns[1]["timings"]["cached_tokens"] > 0  # the second turn reused the first turn's cache
    chat = model.chat(system="You are terse.", temperature=0.0, max_new_tokens=5)
    assert [chat.say("Hello"), chat.say("What next?")] == [t["text"] for t in turns]
    plain = cli("run", str(folder), "--chat", "--temperature", "0", "--max-new-tokens", "5",
                stdin="Hello\n/reset\nHello\n")
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.split("\n")
    first = model.chat(temperature=0.0, max_new_tokens=5).say("Hello")
    assert plain.stdout == (first + "\n") * 2, lines


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1"], "temperature must be"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--top-k", "-3"], "top_k must be"),
    (["--max-new-tokens", "0"], "max_new_tokens must be"),
    (["--provider", "nosuch"], "execution provider 'nosuch' is not available"),
    (["--max-length", "8"], "the prompt is"),
    (["--threads", "-1"], "threads must be"),
])
def test_bad_values_exit_2_with_one_line(folder, args, message):
    p = cli("run", str(folder), "-p", "Hello there, how are you today?", *args)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    assert p.stdout == ""


def test_run_errors(folder, tmp_path):
    for args, message in [(["run", str(tmp_path / "nope"), "-p", "x"], "no such model folder"),
                          (["run", str(folder)], "give a prompt"),
                          (["run", str(folder), "-p", "x", "--raw", "--system", "s"], "--system needs")]:
        p = cli(*args)
        assert p.returncode == 2 and message in p.stderr and p.stderr.count("\n") == 1, p.stderr
    ok = cli("run", str(folder), "-p", "Hello there " * 20, "--max-length", "32", "--truncate", "--max-new-tokens", "4")
    assert ok.returncode == 0, ok.stderr


def test_bench_json(folder):
    p = cli("bench", str(folder), "--prompt-tokens", "64", "--new-tokens", "16", "--runs", "3", "--warmup", "1",
            "--threads", "1", "--json")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    for k in ("ttft_s", "prefill_tps", "decode_tps", "peak_rss_bytes", "size_bytes", "decode_step_ms"):
        assert r[k] and (r[k] > 0 if not isinstance(r[k], dict) else True), k
    assert r["prompt_tokens"] == 64 and r["new_tokens"] == 16 and r["runs"] == 3
    assert r["size_bytes"] == sum(f.stat().st_size for f in folder.iterdir())
    text = cli("bench", str(folder), "--prompt-tokens", "16", "--new-tokens", "4", "--runs", "1")
    assert text.returncode == 0 and "decode" in text.stdout and "tokens/s" in text.stdout
    bad = cli("bench", str(folder), "--prompt-tokens", "600", "--new-tokens", "4")
    assert bad.returncode == 2 and "exceeds the model's context (512)" in bad.stderr
