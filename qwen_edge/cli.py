"""The `qwen-edge` command: a thin Typer layer over the stages. Errors print one line and exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import QwenEdgeError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="Qwen dense models to fast, small, verified ONNX models for CPUs.")


@app.callback()
def _root() -> None:
    """Qwen dense models to fast, small, verified ONNX models for CPUs."""


def _emit(data: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))


@app.command()
def export(
    source: str = typer.Argument(..., help="HF folder, hub id (org/name) or .gguf file"),
    output: Path = typer.Option(..., "-o", "--output", help="artifact folder to write"),
    dtype: str = typer.Option("fp32", help="fp32 or fp16"),
    max_length: Optional[int] = typer.Option(None, help="context length (default: the model's)"),
    revision: Optional[str] = typer.Option(None, help="hub revision (branch, tag or commit)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output folder"),
    as_json: bool = typer.Option(False, "--json", help="print the manifest summary as JSON"),
) -> None:
    """Export a model to ONNX with an in-place KV cache."""
    from .export.writer import export as run_export
    m = run_export(source, output, dtype=dtype, max_length=max_length, force=force, revision=revision)
    size = sum((output / n).stat().st_size for n in m["files"])
    summary = {"output": str(output), "dtype": m["dtype"], "max_length": m["max_length"],
               "model_type": m["model"]["model_type"], "layers": m["model"]["num_layers"],
               "size_bytes": size, "export_seconds": m["export_seconds"], "source": m["source"]}
    _emit(summary, as_json, [f"exported {m['model']['model_type']} ({m['model']['num_layers']} layers, {m['dtype']}) "
                             f"to {output}: {size / 1e6:.0f} MB in {m['export_seconds']:.1f} s"])


def main() -> None:
    try:
        app()
    except QwenEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
