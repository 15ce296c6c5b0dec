"""Calibration that survives being stopped: GPTQ / AWQ keep their finished layers on disk.

A GPTQ run of a 7B takes hours on two cores; a killed run should not start from zero. After each decoder
layer the driver (layer_by_layer.py) saves that layer's packed linears, the hidden states the next layer reads
and the running figures into a hidden folder beside the output, `.NAME.calibration/`. The same command run
again finds it, checks that it belongs to the same job (source files, plan, options, calibration windows:
one fingerprint) and carries on from the first unfinished layer; the result is bit for bit what an
uninterrupted run gives. The folder is removed once the artifact is written. A folder from a different
job is replaced, never mixed in. Each file is written beside its final name and renamed into place, and
the state file last, so a run stopped mid-save resumes from the previous layer.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import QwenEdgeError
from ..pack import NBits

STATE = "state.json"


def folder_for(out: Path) -> Path:
    return out.parent / f".{out.name}.calibration"


def fingerprint(job: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()


def source_identity(paths: list[str | Path]) -> list[list]:
    """Each source file's path, size and modification time (hashing a 15 GB checkpoint would take minutes)."""
    files: list[str] = []
    for p in map(str, paths):  # a folder (a Hugging Face checkpoint): the files in it
        files += sorted(os.path.join(p, f) for f in os.listdir(p)) if os.path.isdir(p) else [p]
    out = []
    for f in sorted(files):
        st = os.stat(f)
        out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return out


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


class Checkpoint:
    """The saved progress of one calibration job (layers 0..done-1 finished)."""

    def __init__(self, folder: Path, key: str):
        self.folder, self.key = folder, key
        self.done = 0
        state = folder / STATE
        if state.is_file():
            try:
                s = json.loads(state.read_text())
            except (OSError, ValueError):
                s = {}
            if s.get("key") == key:
                self.done = int(s.get("done", 0))
                self.figures = s.get("figures", {})
                return
            shutil.rmtree(folder, ignore_errors=True)  # another job's progress: not ours to reuse
        self.figures: dict[str, Any] = {}

    def load_layer(self, i: int) -> tuple[dict[str, NBits], dict[str, np.ndarray]]:
        try:
            return self._load_layer(i)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # a truncated or edited file
            raise self._damaged(e) from None

    def _damaged(self, e: Exception) -> QwenEdgeError:
        return QwenEdgeError(f"the saved calibration in {self.folder} is damaged ({type(e).__name__}): delete that "
                             "folder to start the calibration over")

    def _load_layer(self, i: int) -> tuple[dict[str, NBits], dict[str, np.ndarray]]:
        with np.load(self.folder / f"layer{i}.npz") as z:
            names = json.loads(str(z["names"]))
            linears = {n: NBits(z[f"{n}.B"], z[f"{n}.scales"], z[f"{n}.zp"] if f"{n}.zp" in z else None,
                                int(z[f"{n}.shape"][0]), int(z[f"{n}.shape"][1]), int(z[f"{n}.shape"][2]),
                                int(z[f"{n}.shape"][3])) for n in names["linears"]}
            overrides = {n: z[f"override.{n}"] for n in names["overrides"]}
        return linears, overrides

    def hidden(self) -> np.ndarray:
        """The input of the first unfinished layer."""
        try:
            return np.load(self.folder / f"hidden{self.done}.npy")
        except (OSError, ValueError) as e:
            raise self._damaged(e) from None

    def save_layer(self, i: int, linears: dict[str, NBits], overrides: dict[str, np.ndarray], hidden: np.ndarray,
                   figures: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {"names": np.array(json.dumps({"linears": list(linears),
                                                                       "overrides": list(overrides)}))}
        for n, p in linears.items():
            arrays[f"{n}.B"], arrays[f"{n}.scales"] = p.B, p.scales
            if p.zero_points is not None:
                arrays[f"{n}.zp"] = p.zero_points
            arrays[f"{n}.shape"] = np.array([p.K, p.N, p.bits, p.block_size])
        for n, w in overrides.items():
            arrays[f"override.{n}"] = w

        def npz(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        def npy(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, hidden)
        _write_atomic(self.folder / f"layer{i}.npz", npz)
        _write_atomic(self.folder / f"hidden{i + 1}.npy", npy)
        _write_atomic(self.folder / STATE, lambda t: t.write_text(json.dumps({"key": self.key, "done": i + 1,
                                                                              "figures": figures})))
        (self.folder / f"hidden{i}.npy").unlink(missing_ok=True)  # only now: the state no longer points at it
        self.done, self.figures = i + 1, figures

    def saved_linears(self, layers: int, names: tuple[str, ...]) -> "SavedLinears":
        return SavedLinears(self, layers, names)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class SavedLinears(Mapping):
    """Every layer's packed linears, read from the checkpoint one layer at a time as the writer asks for them:
    at 7B the packed layers are ~4.4 GB that no longer sit in memory until the artifact is written."""

    def __init__(self, checkpoint: Checkpoint, layers: int, names: tuple[str, ...]):
        self.checkpoint, self.layers, self.names = checkpoint, layers, names
        self._layer, self._cached = -1, {}

    def __getitem__(self, key: str) -> NBits:
        parts = key.split(".")
        if len(parts) < 4 or parts[0] != "model" or parts[1] != "layers" or not parts[2].isdigit():
            raise KeyError(key)
        i = int(parts[2])
        if not 0 <= i < self.layers:
            raise KeyError(key)
        if i != self._layer:
            self._cached, _ = self.checkpoint.load_layer(i)
            self._layer = i
        return self._cached[key]

    def __iter__(self) -> Iterator[str]:
        return (f"model.layers.{i}.{n}" for i in range(self.layers) for n in self.names)

    def __len__(self) -> int:
        return self.layers * len(self.names)
