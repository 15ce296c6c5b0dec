"""Bad input: one clear line on stderr, exit code 2, and nothing left behind."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.export.writer import export
from tiny_models import make_tiny


def cli(*args):
    return subprocess.run([sys.executable, "-m", "qwen_edge.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def assert_clean_error(r, pattern):
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("export ")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert pattern in lines[0], lines[0]


def leftovers(parent: Path, name: str):
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("tiny") / "hf")[1]


def test_missing_folder(tmp_path):
    assert_clean_error(cli("export", tmp_path / "nope", "-o", tmp_path / "out"), "no such file or folder")
    assert not (tmp_path / "out").exists()


def test_unsupported_model_type(tmp_path, tiny):
    bad = tmp_path / "moe"
    shutil.copytree(tiny, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "model_type": "qwen2_moe"}))
    assert_clean_error(cli("export", bad, "-o", tmp_path / "out"), "unsupported model_type 'qwen2_moe'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_corrupt_safetensors(tmp_path, tiny, damage):
    bad = tmp_path / "bad"
    shutil.copytree(tiny, bad)
    st = bad / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2] if damage == "truncate" else data[:8] + b"{not json" + data[17:])
    assert_clean_error(cli("export", bad, "-o", tmp_path / "out"), "corrupt safetensors file model.safetensors")
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


def test_pickled_weights_are_never_loaded(tmp_path, tiny):
    bad = tmp_path / "pickled"
    shutil.copytree(tiny, bad)
    (bad / "model.safetensors").rename(bad / "pytorch_model.bin")
    assert_clean_error(cli("export", bad, "-o", tmp_path / "out"), "pickled weights are never loaded")


def test_truncated_gguf(tmp_path, example_gguf):
    for size, what in ((1 << 20, "corrupt or truncated GGUF"), (300, "corrupt or truncated GGUF")):
        bad = tmp_path / f"cut{size}.gguf"
        with open(example_gguf, "rb") as f:
            bad.write_bytes(f.read(size))
        assert_clean_error(cli("export", bad, "-o", tmp_path / "out"), what)
    (tmp_path / "x.gguf").write_bytes(b"NOPE" * 10)
    assert_clean_error(cli("export", tmp_path / "x.gguf", "-o", tmp_path / "out"), "not a GGUF file")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_clean_error(cli("export", tiny, "-o", out), "already exists; pass --force")
    # --force never replaces a folder qwen-edge did not write
    assert_clean_error(cli("export", tiny, "-o", out, "--force"), "is a folder qwen-edge did not write")
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()  # an empty folder may be replaced
    assert cli("export", tiny, "-o", out, "--force").returncode == 0
    (out / "extra.txt").write_text("ours now")  # an artifact of ours is replaced whole
    r = cli("export", tiny, "-o", out, "--force", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == 2
    assert not (out / "extra.txt").exists() and (out / "qwen_edge.json").is_file()
    assert not leftovers(tmp_path, "out")


def test_read_only_output_folder(tmp_path, tiny):
    parent = tmp_path / "ro"
    parent.mkdir()
    # root ignores mode bits, so as root the folder is made immutable instead
    lock = ["chattr", "+i", str(parent)] if os.geteuid() == 0 else ["chmod", "555", str(parent)]
    subprocess.run(lock, check=True)
    try:
        r = cli("export", tiny, "-o", parent / "out")
        assert_clean_error(r, f"cannot write to {parent}")
        assert list(parent.iterdir()) == []
    finally:
        subprocess.run(["chattr", "-i", str(parent)] if os.geteuid() == 0 else ["chmod", "755", str(parent)])


def test_bad_options(tmp_path, tiny):
    assert_clean_error(cli("export", tiny, "-o", tmp_path / "o", "--dtype", "bf16"), "unknown dtype 'bf16'")
    assert_clean_error(cli("export", tiny, "-o", tmp_path / "o", "--max-length", "0"), "--max-length 0 is outside")
    assert_clean_error(cli("export", tiny, "-o", tmp_path / "o", "--max-length", "99999"), "is outside 1..256")
    assert not (tmp_path / "o").exists() and not leftovers(tmp_path, "o")


def test_a_failure_mid_export_leaves_nothing(tmp_path, tiny, monkeypatch):
    from qwen_edge.sources.hf_folder import HFFolderWeights
    real_get = HFFolderWeights.get

    def failing(self, name):
        if name.startswith("model.layers.1."):
            raise KeyboardInterrupt  # as if Ctrl-C arrived in the middle of layer 1
        return real_get(self, name)

    monkeypatch.setattr(HFFolderWeights, "get", failing)
    with pytest.raises(KeyboardInterrupt):
        export(str(tiny), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path, "out")


def test_hub_id_offline_is_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run([sys.executable, "-m", "qwen_edge.cli", "export", "Qwen/Qwen2.5-1.5B-Instruct", "-o",
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert_clean_error(r, "cannot download 'Qwen/Qwen2.5-1.5B-Instruct' from the Hugging Face Hub")
    assert not (tmp_path / "out").exists()


def test_hub_id_downloads_through_snapshot_download(tmp_path, tiny):
    """The hub path with a fake downloader: only safe file patterns are asked for; the revision is recorded."""
    from qwen_edge.export.writer import write_artifact
    from qwen_edge.sources import open_source
    seen = {}
    commit = "0123456789abcdef0123456789abcdef01234567"

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        seen.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        snap = tmp_path / "cache" / commit
        shutil.copytree(tiny, snap)
        return str(snap)

    src = open_source("Qwen/Tiny-Test", revision="main", snapshot_download=fake_snapshot_download)
    m = write_artifact(src, tmp_path / "out", progress=False)
    assert seen["repo_id"] == "Qwen/Tiny-Test" and seen["revision"] == "main"
    assert not any(p.endswith((".bin", ".pt", ".py")) or p == "*" for p in seen["allow_patterns"])
    assert m["source"] == {"kind": "hub", "id": "Qwen/Tiny-Test", "revision": commit}
    with pytest.raises(QwenEdgeError, match="cannot download"):
        open_source("Qwen/Missing", snapshot_download=lambda *a, **k: (_ for _ in ()).throw(OSError("404")))
