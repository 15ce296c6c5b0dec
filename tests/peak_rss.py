"""A child's own peak RSS. Measured from a small launcher process, not from pytest: Linux folds the memory of
the process that forked a child into that child's ru_maxrss when it execs (the old address space's
high-water mark counts), so a child forked by a pytest process holding a real model reports gigabytes
it never used."""

from __future__ import annotations

import os
import subprocess
import sys

_LAUNCHER = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as log:
    p = subprocess.Popen(sys.argv[3:], stdout=log, stderr=subprocess.STDOUT)
    _, status, ru = os.wait4(p.pid, 0)
open(sys.argv[2], "w").write(f"{os.waitstatus_to_exitcode(status)} {ru.ru_maxrss * 1024}")
"""


def run_measured(cmd: list[str], log: str | os.PathLike = os.devnull, env: dict | None = None) -> tuple[int, int]:
    """(exit code, peak RSS in bytes) of `cmd`, its output to `log`."""
    import tempfile
    with tempfile.NamedTemporaryFile("r", suffix=".peak", delete=False) as f:
        res = f.name
    try:
        subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), res, *map(str, cmd)], check=True,
                       env={**os.environ, **(env or {})})
        code, peak = open(res).read().split()
        return int(code), int(peak)
    finally:
        os.unlink(res)
