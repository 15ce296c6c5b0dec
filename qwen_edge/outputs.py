"""Safe outputs: what may be written where, one writer at a time, staged and renamed into place.

The rules (docs/reliability.md), for every command that writes a folder or a file:
- an output that is a symbolic link is refused;
- an output equal to, inside or containing a source is refused, with or without --force;
- an existing output is replaced only with --force, and then only when it is ours (`is_ours`: an artifact
  folder with our manifest, a report we wrote) or an empty folder;
- writers of one output exclude each other: an flock on `.NAME.lock` beside it, which the kernel drops
  when the holder dies, so a killed writer never blocks the next one;
- the result is built in `.NAME.partial-PID` and renamed into place at the end, after the same checks
  again, with a rename that never replaces what appeared meanwhile;
- `.NAME.partial-*` left by a killed writer are removed by the next writer of NAME (holding the lock
  proves no other writer is alive).
Standard library only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Iterable

from .errors import OutputError

IsOurs = Callable[[Path], bool]


def _resolved(p: Path) -> Path:
    return Path(os.path.abspath(p)).resolve()


def overlaps(out: Path, source: Path) -> str | None:
    """How `out` collides with `source` ('is', 'is inside', 'contains'), or None."""
    o, s = _resolved(out), _resolved(source)
    if o == s:
        return "is"
    if s in o.parents:
        return "is inside"
    if o in s.parents:
        return "contains"
    return None


def check_target(out: Path, *, force: bool, is_ours: IsOurs, sources: Iterable[Path] = (),
                 what: str = "output") -> None:
    """Fail now (before any slow work) if `out` may not be written."""
    out = Path(out)
    for src in sources:
        how = overlaps(out, Path(src))
        if how is not None:
            raise OutputError(f"{what} {out} {how} the source {src}: choose an {what} outside it")
    if out.is_symlink():
        raise OutputError(f"{what} {out} is a symbolic link; give a real path (qwen-edge never writes through links)")
    if not out.exists():
        return
    if not force:
        raise OutputError(f"{what} {out} already exists; pass --force to replace it")
    if not replaceable(out, is_ours):
        kind = "folder" if out.is_dir() else "file"
        raise OutputError(f"{what} {out} is a {kind} qwen-edge did not write; --force replaces only qwen-edge's "
                          "own outputs (or an empty folder): move it away or choose another path")


def replaceable(out: Path, is_ours: IsOurs) -> bool:
    if out.is_symlink():
        return False
    if out.is_dir() and not any(out.iterdir()):
        return True
    try:
        return bool(is_ours(out))
    except Exception:  # a damaged file of ours counts as not ours: never guess
        return False


# --- one writer per output -----------------------------------------------------------------------------
class _Lock:
    """An exclusive lock on `.NAME.lock` that the kernel releases when the process dies."""

    def __init__(self, out: Path):
        self.out = out
        self.path = out.parent / f".{out.name}.lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: an exclusive create, stale when its PID is gone
            return self._acquire_excl()
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"cannot write to {self.out.parent}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = _read_pid(fd)
                os.close(fd)
                raise OutputError(f"{self.out} is being written by another qwen-edge process"
                                  f"{f' (pid {pid})' if pid else ''}; wait for it or choose another output") from None
            # A releasing holder unlinks the file; if ours is no longer the one at the path, start over.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return
            os.close(fd)

    def _acquire_excl(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, str(os.getpid()).encode())
                self.fd = fd
                return
            except FileExistsError:
                with open(self.path, "rb") as f:
                    pid = _parse_pid(f.read())
                if pid and _alive(pid):
                    raise OutputError(f"{self.out} is being written by another qwen-edge process (pid {pid}); "
                                      "wait for it or choose another output") from None
                os.unlink(self.path)
        raise OutputError(f"cannot lock {self.out}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_pid(fd: int) -> int | None:
    try:
        return _parse_pid(os.pread(fd, 32, 0))
    except OSError:
        return None


def _parse_pid(b: bytes) -> int | None:
    try:
        return int(b.decode().strip())
    except ValueError:
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- rename without replacing ----------------------------------------------------------------------------
def _renameat2():
    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


_RENAMEAT2 = _renameat2()
_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename src to dst; FileExistsError if dst exists, even if it appeared a moment ago."""
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err == 17:  # EEXIST
            raise FileExistsError(err, os.strerror(err), str(dst))
        if err not in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: no renameat2 here, fall through
            raise OSError(err, os.strerror(err), str(dst))
    if os.path.lexists(dst):
        raise FileExistsError(17, "File exists", str(dst))
    os.rename(src, dst)


# --- staging -----------------------------------------------------------------------------------------
def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        try:
            p.unlink()
        except OSError:
            pass


class Staged:
    """Context manager: `with Staged(out, ...) as tmp:` write into tmp (a folder, or a file path when
    kind="file"); on success it is renamed to `out`, on any exception (Ctrl-C, SIGTERM) it is removed."""

    def __init__(self, out: str | Path, *, force: bool, is_ours: IsOurs, sources: Iterable[Path] = (),
                 kind: str = "folder", what: str = "output"):
        self.out = Path(out)
        self.force, self.is_ours, self.sources, self.kind, self.what = force, is_ours, list(sources), kind, what
        self.tmp = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        self._lock = _Lock(self.out)
        self._made: list[Path] = []  # parent folders this writer created (removed again on failure)

    def __enter__(self) -> Path:
        check_target(self.out, force=self.force, is_ours=self.is_ours, sources=self.sources, what=self.what)
        self._mkdir_parents()
        try:
            self._lock.acquire()
            if self._clean_stale():  # a replaced output came back: the rules again, now under the lock
                check_target(self.out, force=self.force, is_ours=self.is_ours, sources=self.sources, what=self.what)
            if self.kind == "folder":
                self.tmp.mkdir()
        except OSError as e:
            self._abort()
            raise OutputError(f"cannot write to {self.out.parent}: {e.strerror or e}") from None
        except BaseException:
            self._abort()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._commit()
        except BaseException:
            self._abort()
            raise
        self._lock.release()

    def _commit(self) -> None:
        out = self.out
        if out.is_symlink() or os.path.lexists(out):  # appeared or stayed while we worked: the rules again
            if not self.force:
                raise OutputError(f"{self.what} {out} appeared while it was being written; pass --force to replace it")
            if not replaceable(out, self.is_ours):
                raise OutputError(f"{self.what} {out} is not qwen-edge's own output; it was left untouched")
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.rename(out, old)
            try:
                rename_noreplace(self.tmp, out)
            except BaseException:
                os.rename(old, out)
                raise
            _remove(old)
            return
        try:
            rename_noreplace(self.tmp, out)
        except FileExistsError:
            raise OutputError(f"{self.what} {out} appeared while it was being written; it was left untouched") from None

    def _abort(self) -> None:
        if os.path.lexists(self.tmp):
            _remove(self.tmp)
        self._lock.release()
        for d in reversed(self._made):  # only folders we created, and only while empty
            try:
                d.rmdir()
            except OSError:
                break

    def _mkdir_parents(self) -> None:
        missing = []
        p = self.out.parent
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                self._abort()
                raise OutputError(f"cannot create {d}: {e.strerror or e}") from None
            self._made.append(d)

    def _clean_stale(self) -> bool:
        """Remove leftovers of killed writers of this output (we hold its lock, so none of them is running);
        True when an output that a killed --force writer had moved aside was put back."""
        pat = re.compile(rf"^\.{re.escape(self.out.name)}\.(partial|old)-(\d+)$")
        restored = False
        for p in self.out.parent.iterdir():
            m = pat.match(p.name)
            if not m or int(m.group(2)) == os.getpid():
                continue
            if m.group(1) == "old" and not os.path.lexists(self.out):
                os.rename(p, self.out)  # killed mid-swap: the replaced output comes back
                restored = True
            else:
                _remove(p)
        return restored
