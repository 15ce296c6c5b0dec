#!/usr/bin/env bash
# The test command (README): installs everything the tests need, then runs every test, Python and JavaScript.
#   Python: torch first from its CPU wheel (a later resolve must never pull a CUDA build), then .[all].
#   npm: js/ with npm ci (ONNXRUNTIME_NODE_INSTALL=skip: no CUDA download; Electron's binary is not fetched).
#   Debian: chromium (the browser test) and qemu-user-static (the ARM64 check), when missing and installable.
# Extra arguments go to pytest (e.g. -m "not real" for the quick suite).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[all]"
(cd js && ONNXRUNTIME_NODE_INSTALL=skip ELECTRON_SKIP_BINARY_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
if ! command -v chromium >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium qemu-user-static; }; then
    echo "warning: could not install chromium / qemu-user-static: the browser test fails, the ARM64 check is skipped" >&2
  fi
fi
python -m pytest -q tests "$@"
