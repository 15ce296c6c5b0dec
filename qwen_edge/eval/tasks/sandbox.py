"""Running model-written programs: each in its own process group, with a time limit, a memory limit, a file
size limit, a fresh temporary working folder and an environment without the caller's variables.

A hang, a fork bomb, a crash or an out-of-memory program is a failed sample, never a failed or hung eval:
the whole process group is killed at the time limit and the folder removed. What this does NOT protect
against (docs/ci.md): it is not a security boundary. The program runs as the same user with the same
network and file-system access (it can read and write anything that user can outside its folder); run
untrusted code in a container or VM. As root the kernel does not enforce the process-count limit
(RLIMIT_NPROC); a Python-level guard (os.fork, os.system, subprocess and friends disabled before the
program runs) stops the usual fork bombs, and the group kill ends whatever was started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Prepended to every program: its limits (set by the program itself before any of its code runs: a
# preexec_fn would fork from a process with onnxruntime's threads running, which Python warns can deadlock),
# then process creation and destruction that a solution never needs are disabled. (A determined program can
# undo the second part; the limits and the group kill are what hold.)
_LIMITS = """\
import resource as _r
for _k, _v in (("RLIMIT_AS", {mem}), ("RLIMIT_CPU", {cpu}), ("RLIMIT_FSIZE", 16 << 20), ("RLIMIT_CORE", 0),
               ("RLIMIT_NPROC", 64)):
    _r.setrlimit(getattr(_r, _k), (_v, _v))
"""
_GUARD = """\
import os as _os, subprocess as _sp, shutil as _sh
def _refused(*a, **k):
    raise OSError("disabled in the qwen-edge sandbox")
for _n in ("fork", "forkpty", "system", "kill", "killpg", "execv", "execve", "execvp", "execvpe", "spawnv",
           "spawnve", "spawnl", "spawnle", "posix_spawn", "posix_spawnp", "putenv", "setuid", "chroot"):
    if hasattr(_os, _n):
        setattr(_os, _n, _refused)
_sp.Popen = _sp.run = _sp.call = _sp.check_call = _sp.check_output = _refused
_sh.rmtree = _sh.move = _sh.chown = _refused
del _n
"""


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed | failed | timeout | memory | crashed
    seconds: float
    detail: str = ""  # the last line of stderr (an exception), or why it was stopped


def run_program(code: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Run `code` with this Python; passed when it exits 0 within the limits."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qwen-edge-exec-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(_LIMITS.format(mem=memory_mb << 20, cpu=int(timeout_s) + 2) + _GUARD + "\n" + code)
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
        p = subprocess.Popen([sys.executable, "-I", path],
                             cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)  # its own group: killed whole
        try:
            _, err = p.communicate(timeout=timeout_s)
            status = "passed" if p.returncode == 0 else _failure(p.returncode, err)
            detail = _last_line(err)
        except subprocess.TimeoutExpired:
            status, detail = "timeout", f"no exit within {timeout_s:g} s"
        finally:
            _kill_group(p)
        return Outcome(status == "passed", status, time.perf_counter() - t0, detail)


def _failure(rc: int, err: bytes) -> str:
    if b"MemoryError" in err[-2000:]:
        return "memory"
    if rc < 0:  # killed by a signal: SIGXCPU, SIGSEGV, SIGKILL
        return "crashed"
    return "failed"


def _last_line(err: bytes) -> str:
    lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def _group_running(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs (zombies waiting for a parent to reap them do not)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: any member, zombies included
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for name in entries:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
                return True
    return False


def _kill_group(p: subprocess.Popen) -> None:
    """SIGKILL the program's whole process group (it and everything it started) and reap it; returns once
    none of the group runs (a SIGKILL takes effect asynchronously, and a process forking as it arrives can
    leave a child that needs one more), at most 5 seconds."""
    deadline = time.monotonic() + 5
    while True:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        try:
            p.wait(timeout=0.02)
        except subprocess.TimeoutExpired:
            pass
        if not _group_running(p.pid) or time.monotonic() > deadline:
            break
    try:
        p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    if p.stderr is not None:
        p.stderr.close()
