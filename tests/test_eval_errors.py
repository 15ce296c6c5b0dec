"""`qwen-edge eval` bad input: one clear line on stderr and exit code 2, before any model runs."""

import subprocess
import sys

import pytest

from qwen_edge.export.writer import export
from tiny_models import make_tiny


def cli(*args):
    return subprocess.run([sys.executable, "-m", "qwen_edge.cli", "eval", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def assert_clean_error(r, pattern):
    assert r.returncode == 2, (r.returncode, r.stderr, r.stdout)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and pattern in lines[0], lines[0]
    assert r.stdout == ""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalerr")
    _, hf = make_tiny(root / "hf")
    export(str(hf), root / "m", max_length=128, progress=False)
    (root / "a.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    (root / "b.txt").write_text("Rust is a language empowering everyone to build reliable software. " * 40)
    assert cli(root / "m", "--dataset", root / "a.txt", "--ctx", 32, "--max-tokens", 100,
               "--save-reference", root / "ref.npz").returncode == 0
    return root


@pytest.mark.parametrize("gate,words", [
    ("foo<=1", "unknown metric 'foo'"), ("ppl<=abc", "gate 'ppl<=abc' is not METRIC OP NUMBER"),
    ("kl_mean<=0.1", "needs --reference"), ("ppl<=3%", "% only applies to ratios"),
    ("ppl_vs_baseline<=1%", "needs --baseline")])
def test_bad_gates(setup, gate, words):
    assert_clean_error(cli(setup / "m", "--dataset", setup / "a.txt", "--gate", gate), words)


def test_missing_model_folder(setup):
    assert_clean_error(cli(setup / "nope", "--dataset", setup / "a.txt"), "no such model folder")


def test_folder_that_is_not_a_model(setup):
    assert_clean_error(cli(setup, "--dataset", setup / "a.txt"), "is not a qwen-edge model folder")


def test_empty_dataset(setup, tmp_path):
    (tmp_path / "e.txt").write_text("\n  \n")
    assert_clean_error(cli(setup / "m", "--dataset", tmp_path / "e.txt"), "is empty")


def test_one_token_dataset(setup, tmp_path):
    (tmp_path / "one.txt").write_text("T")
    assert_clean_error(cli(setup / "m", "--dataset", tmp_path / "one.txt"), "at least 2")


def test_missing_dataset(setup):
    assert_clean_error(cli(setup / "m", "--dataset", setup / "nope.txt"), "dataset '")


@pytest.mark.parametrize("args,words", [
    (("--ctx", 16), "its window (--ctx) is 32, this run's is 16"),
    (("--dataset", "b.txt"), "dataset tokens"),
    (("--max-tokens", 90), "number of tokens (--max-tokens) is 100, this run's is 90"),
    (("--stride", 16), "stride (--stride) is 32, this run's is 16")])
def test_mismatched_reference(setup, args, words):
    args = tuple(setup / a if a == "b.txt" else a for a in args)
    base = ("--dataset", setup / "a.txt") if "--dataset" not in args else ()
    assert_clean_error(cli(setup / "m", "--reference", setup / "ref.npz", *base, *args), words)


def test_reference_not_a_reference(setup):
    assert_clean_error(cli(setup / "m", "--reference", setup / "a.txt"), "is not a qwen-edge reference file")
    assert_clean_error(cli(setup / "m", "--reference", setup / "nope.npz"), "not found")


def test_other_bad_options(setup):
    assert_clean_error(cli(setup / "m", "--dataset", setup / "a.txt", "--ctx", 1000), "longer than")
    assert_clean_error(cli(setup / "m", "--dataset", setup / "a.txt", "--ctx", 16, "--stride", 17), "--stride")
    assert_clean_error(cli(setup / "m", setup / "m", "--save-reference", setup / "x.npz"), "exactly one model")
    assert_clean_error(cli(setup / "m", "--update-baseline"), "needs --baseline")
    assert_clean_error(cli(setup / "m", "--dataset", setup / "a.txt", "--baseline", setup / "nob.json",
                           "--gate", "ppl_vs_baseline<=1%"), "run once with --update-baseline")
