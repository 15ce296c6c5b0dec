"""The llama.cpp side of the benchmarks, built from source inside the benchmarks' own environment.

    python scripts/llamacpp_env.py          # builds once (about 15 minutes on 2 cores), prints the paths

One PyPI sdist, llama-cpp-python (pinned below), provides both halves:
- its vendored llama.cpp, built once with CMake: the shared library plus `llama-quantize`,
  `llama-imatrix` and `llama-bench`;
- the `llama_cpp` Python package (logits for the quality harness, `llama_cpp.server` for the serving
  benchmark), installed into a venv with its own C++ build switched off and pointed at that library
  through LLAMA_CPP_LIB_PATH.
The venv sees this interpreter's packages (numpy, qwen_edge) and adds only llama_cpp and its server
extras. Everything lives under ~/.cache/qwen-edge/bench/ and is reused by later runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
TOOLS = ("llama-quantize", "llama-imatrix", "llama-bench")


def root() -> Path:
    from qwen_edge.cache import cache_dir
    return cache_dir() / "bench" / f"llama-cpp-python-{VERSION}"


def _run(cmd: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> None:
    print("$ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    with open(log, "a") as f:
        r = subprocess.run(list(map(str, cmd)), stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if r.returncode:
        sys.exit(f"failed ({r.returncode}): {' '.join(map(str, cmd))}; see {log}")


def ensure() -> dict[str, str]:
    """Build what is missing; return {python, bin, lib, log}."""
    base = root()
    base.mkdir(parents=True, exist_ok=True)
    done = base / "ready.json"
    if done.is_file():
        info = json.loads(done.read_text())
        if all(Path(info["bin"], t).is_file() for t in TOOLS) and Path(info["python"]).is_file():
            return info
    log = base / "build.log"
    sdist_dir = base / "sdist"
    if not list(sdist_dir.glob("*.tar.gz")):
        sdist_dir.mkdir(exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:", "-d", sdist_dir,
              f"llama-cpp-python=={VERSION}"], log)
    sdist = next(sdist_dir.glob("*.tar.gz"))
    src = base / "src"
    if not (src / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        shutil.rmtree(src, ignore_errors=True)
        with tarfile.open(sdist) as t:
            t.extractall(base / "unpack", filter="data")
        (base / "unpack" / f"llama_cpp_python-{VERSION}").rename(src)
        shutil.rmtree(base / "unpack", ignore_errors=True)
    build = base / "build"
    jobs = str(os.cpu_count() or 2)
    _run(["cmake", "-S", src / "vendor" / "llama.cpp", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
          "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=ON", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
          "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON",
          "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_APP=OFF"], log)
    _run(["cmake", "--build", build, "-j", jobs, "--target", *TOOLS, "llama"], log)
    venv = base / "venv"
    if not (venv / "bin" / "python").is_file():
        _run([sys.executable, "-m", "venv", "--system-site-packages", venv], log)
    py = venv / "bin" / "python"
    env = {**os.environ, "CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    _run([py, "-m", "pip", "install", "-q", f"{sdist}[server]"], log, env=env)
    info = {"python": str(py), "bin": str(build / "bin"), "lib": str(build / "bin"), "log": str(log),
            "version": VERSION}
    done.write_text(json.dumps(info, indent=2))
    return info


def ensure_examples(targets: tuple[str, ...] = ("llama-lookup", "llama-speculative")) -> dict[str, str]:
    """Also build llama.cpp's example programs (the speculative decoding peers), in the same build folder."""
    info = ensure()
    if all(Path(info["bin"], t).is_file() for t in targets):
        return info
    base = root()
    log = base / "build.log"
    build = base / "build"
    _run(["cmake", "-S", base / "src" / "vendor" / "llama.cpp", "-B", build, "-DLLAMA_BUILD_EXAMPLES=ON"], log)
    _run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2), "--target", *targets], log)
    return info


def env_for(info: dict[str, str]) -> dict[str, str]:
    """Environment for running the venv's python or the tools: the built library on the path."""
    return {**os.environ, "LLAMA_CPP_LIB_PATH": info["lib"],
            "LD_LIBRARY_PATH": info["lib"] + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")}


if __name__ == "__main__":
    print(json.dumps(ensure_examples() if "--examples" in sys.argv else ensure(), indent=2))
