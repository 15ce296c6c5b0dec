"""An ARM64 Python with PyPI's aarch64 onnxruntime wheel, run under qemu-user on this x86 machine.

Debian's arm64 python3.11 and the libraries it needs are downloaded (apt-get download with an arm64 package
list kept in the cache: nothing is installed on the system) and unpacked into a sysroot; numpy and
onnxruntime come from their manylinux aarch64 wheels. qemu-aarch64-static runs that interpreter with the
sysroot as its file-system prefix. Cached under ~/.cache/qwen-edge/arm64.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

DEBS = ["libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5",
        "libuuid1", "libcrypt1", "libssl3", "libpython3.11-minimal", "libpython3.11-stdlib",
        "python3.11-minimal"]
# Measured here: the aarch64 wheels of onnxruntime 1.28 and later end in a segmentation fault while their
# native library loads under Debian 12's qemu-user 7.2 (with every -cpu model tried: max, cortex-a72,
# neoverse-n1, a64fx); 1.20 to 1.27 load and run. So the check pins the newest that runs under emulation.
ORT_UNDER_QEMU = "1.27.0"


def _wheels() -> list[str]:
    import numpy
    return [f"numpy=={numpy.__version__}", f"onnxruntime=={ORT_UNDER_QEMU}"]
QEMU = "qemu-aarch64-static"


class Unavailable(Exception):
    """qemu-user or the arm64 packages cannot be had here (the reason is the message)."""


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise Unavailable(f"{' '.join(cmd[:3])} ... failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def ensure(cache: Path) -> tuple[Path, Path]:
    """(sysroot, site-packages) for the ARM64 interpreter; Unavailable if they cannot be had."""
    if shutil.which(QEMU) is None:
        raise Unavailable(f"{QEMU} is not installed (apt-get install qemu-user-static)")
    root, site = cache / "sysroot", cache / "site"
    if (root / "usr" / "bin" / "python3.11").is_file() and \
            (site / f"onnxruntime-{ORT_UNDER_QEMU}.dist-info").is_dir():
        return root, site
    apt = ["-o", "APT::Architecture=arm64", "-o", "APT::Architectures=arm64",
           "-o", f"Dir::State::Lists={cache / 'lists'}", "-o", f"Dir::Cache={cache / 'apt'}"]
    (cache / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (cache / "apt" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    debs = cache / "debs"
    debs.mkdir(exist_ok=True)
    _run(["apt-get", *apt, "update", "-qq"])
    _run(["apt-get", *apt, "download", *DEBS], cwd=debs)
    tmp_root = cache / "sysroot.partial"
    shutil.rmtree(tmp_root, ignore_errors=True)
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(tmp_root)])
    wheels = cache / "wheels"
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
          "--implementation", "cp", "--abi", "cp311", "--platform", "manylinux_2_28_aarch64",
          "--platform", "manylinux_2_27_aarch64", "--platform", "manylinux2014_aarch64", "-d", str(wheels), *_wheels()])
    tmp_site = cache / "site.partial"
    shutil.rmtree(tmp_site, ignore_errors=True)
    for whl in glob.glob(str(wheels / "*.whl")):
        with zipfile.ZipFile(whl) as z:
            z.extractall(tmp_site)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(site, ignore_errors=True)
    os.rename(tmp_root, root)
    os.rename(tmp_site, site)
    return root, site


def run(cache: Path, script: str, args: list[str], extra_path: list[Path], timeout: int = 1200) -> str:
    """Run `script` (a Python file) on the ARM64 interpreter; its stdout."""
    root, site = ensure(cache)
    env = {"PYTHONPATH": os.pathsep.join(str(p) for p in [site, *extra_path]), "PYTHONHOME": "/usr",
           "PATH": "/usr/bin:/bin", "QEMU_LD_PREFIX": str(root), "HOME": str(cache)}
    r = subprocess.run([QEMU, "-L", str(root), str(root / "usr" / "bin" / "python3.11"), script, *args],
                       capture_output=True, text=True, env=env, timeout=timeout)
    if r.returncode:
        raise AssertionError(f"the ARM64 run failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout
