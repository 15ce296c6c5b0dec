"""The trade-off plot: perplexity (or mean KL against the reference) versus size on disk, one point per
model. Needs matplotlib (`pip install qwen-edge[eval]`); drawn with the Agg backend, no display needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import QwenEdgeError

SIGNATURE = "qwen-edge eval"  # in the PNG's tEXt chunk: how --force knows the file is ours


def require() -> None:
    """Fails up front, before any model runs, when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise QwenEdgeError("--plot needs matplotlib: pip install 'qwen-edge[eval]' (or pip install matplotlib)") from None


def plot(rep: dict[str, Any], path: str | Path) -> None:
    require()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = rep["models"]
    use_kl = all("kl_mean" in r["metrics"] for r in models)
    key, se_key = ("kl_mean", "kl_mean_se") if use_kl else ("ppl", "ppl_se")
    xs = [r["size_bytes"] / 1e6 for r in models]
    ys = [r["metrics"][key] for r in models]
    es = [r["metrics"][se_key] for r in models]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    try:
        ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=4)
        for x, y, r in zip(xs, ys, models):
            ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(6, 6))
        ax.set_xlabel("size on disk (MB)")
        ax.set_ylabel("mean KL vs reference (nats/token)" if use_kl else "perplexity")
        m = rep["method"]
        ax.set_title(f"{rep['dataset']['name']}: window {m['ctx']}, stride {m['stride']}")
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        fig.savefig(str(path), format="png", metadata={"Software": SIGNATURE})
    except OSError as e:
        raise QwenEdgeError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        plt.close(fig)


def is_ours(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096)
    return head.startswith(b"\x89PNG") and SIGNATURE.encode() in head
