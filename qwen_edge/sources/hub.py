"""Hub ids: download a snapshot (safetensors and JSON only, never pickles or remote code)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

from ..errors import QwenEdgeError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
ALLOW = ["*.json", "*.safetensors", "*.jinja", "merges.txt", "vocab.json"]


def looks_like_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and not source.startswith((".", "/"))


def download(repo_id: str, revision: str | None = None,
             snapshot_download: Callable[..., str] | None = None) -> tuple[Path, str | None]:
    """Return (local folder, resolved commit) for a hub model; a clear error when offline."""
    if snapshot_download is None:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise QwenEdgeError("hub downloads need huggingface_hub: pip install 'qwen-edge[export]'") from None
    try:
        path = Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW))
    except Exception as e:  # network, auth and not-found errors all end here
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QwenEdgeError(f"cannot download '{repo_id}' from the Hugging Face Hub ({reason[:160]}); "
                            "check the id and the network, or pass a local folder or GGUF file") from None
    commit = path.name if re.fullmatch(r"[0-9a-f]{40}", path.name) else revision
    return path, commit
