"""Where qwen-edge keeps downloads and small state: `$QWEN_EDGE_CACHE`, else `~/.cache/qwen-edge`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$QWEN_EDGE_CACHE`, else `~/.cache/qwen-edge`."""
    env = os.environ.get("QWEN_EDGE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qwen-edge"
