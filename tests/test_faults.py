"""Faults while writing: signals in the middle of an export or a quantize, two writers of one output, an
output that appears mid-write, leftovers of a killed writer (docs/reliability.md).

The writer is slowed from the outside (tests/slow_writer.py: the command line with a sleep after each layer
it writes; the product has no test hook), so a signal lands while the partial folder is being filled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serve_process import default_sigint
from tiny_models import make_tiny

SLOW_WRITER = Path(__file__).resolve().parent / "slow_writer.py"


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("faults") / "src", num_hidden_layers=4)[1]


def start(args: list[str], pause: float = 0.0, cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # SIGINT's default disposition in the child: run as a shell's background job the suite inherits SIGINT
    # ignored, Python then installs no KeyboardInterrupt handler, and the SIGINT cases would see exit 0.
    return subprocess.Popen([sys.executable, str(SLOW_WRITER), str(pause), *map(str, args)], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)


def partials(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def wait_for_partial(parent: Path, name: str, proc: subprocess.Popen, timeout: float = 60) -> Path:
    """The writer's partial folder, once it holds some weights."""
    t = time.time()
    while time.time() - t < timeout:
        for p in parent.glob(f".{name}.partial-*"):
            data = p / "model.onnx.data"
            if data.is_file() and data.stat().st_size > 0:
                return p
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the writer never started writing")


COMMANDS = {
    "export": lambda src, out: ["export", src, "-o", out],
    "quantize": lambda src, out: ["quantize", src, "-o", out, "--method", "rtn", "--bits", "4", "--group-size", "32"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_cleans_up_like_ctrl_c(tmp_path, src, command, sig):
    out = tmp_path / "out"
    p = start(COMMANDS[command](src, out), pause=1.0)
    wait_for_partial(tmp_path, "out", p)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    assert "Traceback" not in err, err
    assert not out.exists() and partials(tmp_path, "out") == [], partials(tmp_path, "out")


@pytest.mark.parametrize("command", list(COMMANDS))
def test_sigkill_leftovers_are_removed_by_the_next_run(tmp_path, src, command):
    out = tmp_path / "out"
    p = start(COMMANDS[command](src, out), pause=1.0)
    partial = wait_for_partial(tmp_path, "out", p)
    p.kill()
    p.communicate(timeout=60)
    assert partial.is_dir() and not out.exists()  # SIGKILL cannot be caught: the partial stays ...
    r = start(COMMANDS[command](src, out))
    _, err = r.communicate(timeout=300)
    assert r.returncode == 0, err
    assert (out / "qwen_edge.json").is_file()
    assert partials(tmp_path, "out") == []  # ... until the next writer of the same output removes it


def test_two_writers_exclude_each_other(tmp_path, src):
    out = tmp_path / "out"
    first = start(["export", src, "-o", out, "--dtype", "fp32"], pause=0.5)
    wait_for_partial(tmp_path, "out", first)
    second = start(["export", src, "-o", out, "--dtype", "fp16", "--force"])
    _, err2 = second.communicate(timeout=120)
    _, err1 = first.communicate(timeout=120)
    assert first.returncode == 0, err1
    assert second.returncode == 2 and f"{out} is being written by another qwen-edge process (pid {first.pid})" in err2
    import json
    assert json.loads((out / "qwen_edge.json").read_text())["dtype"] == "fp32"  # the first writer's result
    assert partials(tmp_path, "out") == []


def test_many_concurrent_writers_one_wins(tmp_path, src):
    out = tmp_path / "out"
    procs = [start(["export", src, "-o", out]) for _ in range(4)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes.count(0) == 1 and codes.count(2) == 3, codes
    assert (out / "qwen_edge.json").is_file() and partials(tmp_path, "out") == []


def test_output_that_appears_mid_write_is_left_untouched(tmp_path, src):
    out = tmp_path / "out"
    p = start(["export", src, "-o", out], pause=0.5)
    wait_for_partial(tmp_path, "out", p)
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "appeared while it was being written" in err, err
    assert (out / "mine.txt").read_text() == "user data" and sorted(os.listdir(out)) == ["mine.txt"]
    assert partials(tmp_path, "out") == []


def test_force_replaces_an_artifact_that_appeared_mid_write(tmp_path, src):
    out = tmp_path / "out"
    p = start(["export", src, "-o", out, "--force"], pause=0.5)
    wait_for_partial(tmp_path, "out", p)
    empty = out
    empty.mkdir()  # an empty folder counts as replaceable
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert (out / "qwen_edge.json").is_file() and partials(tmp_path, "out") == []


def test_killed_mid_swap_restores_the_old_output(tmp_path, src):
    """A --force writer killed between moving the old artifact aside and renaming the new one in."""
    from qwen_edge.export.writer import export
    out = tmp_path / "out"
    export(str(src), out, progress=False)
    os.rename(out, tmp_path / ".out.old-999999")  # what a writer killed mid-swap leaves
    assert not out.exists()
    r = start(["export", src, "-o", out])  # no --force: the old one comes back first, so this must refuse
    _, err = r.communicate(timeout=120)
    assert r.returncode == 2 and "already exists" in err, err
    assert (out / "qwen_edge.json").is_file() and partials(tmp_path, "out") == []


@pytest.mark.parametrize("target", ["source", "parent", "user-folder", "symlink"])
def test_force_never_touches_what_is_not_ours(tmp_path, src, target):
    import shutil
    work = tmp_path / "work"
    shutil.copytree(src, work / "src")
    user = work / "user"
    user.mkdir()
    (user / "a.txt").write_text("keep")
    (work / "link").symlink_to(user)
    out = {"source": work / "src", "parent": work, "user-folder": user, "symlink": work / "link"}[target]
    before = sorted((str(p.relative_to(tmp_path)), p.stat().st_size if p.is_file() else 0)
                    for p in tmp_path.rglob("*"))
    r = start(["export", work / "src", "-o", out, "--force"])
    _, err = r.communicate(timeout=120)
    assert r.returncode == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    after = sorted((str(p.relative_to(tmp_path)), p.stat().st_size if p.is_file() else 0)
                   for p in tmp_path.rglob("*"))
    assert after == before
