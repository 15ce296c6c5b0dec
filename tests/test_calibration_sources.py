"""Calibration sources (issue 30): prose and code by default, a user's files and folders, equal shares, and the
held-out code text never calibrated on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qwen_edge.data import python_source as P
from qwen_edge.errors import InputError, QwenEdgeError
from qwen_edge.quantize.calibration_text import calibration_windows, label, sample_windows, sources


def word_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return lambda d: tok.save(str(Path(d) / "tokenizer.json"))


def test_mix_is_prose_and_code_and_unknown_sources_are_refused(tmp_path):
    assert sources("mix") == ["enwiki", "python"] and label("mix") == "enwiki+python"
    f = tmp_path / "mine.txt"
    f.write_text("x")
    assert sources(["mix", str(f), "enwiki"]) == ["enwiki", "python", str(f)]  # each once, in order
    with pytest.raises(InputError, match="no such file: nope.txt"):
        sources(["mix", "nope.txt"])
    with pytest.raises(InputError, match="at least one"):
        sources([])


def test_each_source_gets_an_equal_share_of_windows_from_its_own_text(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "code"
    a.write_text(" ".join(["alpha"] * 400))
    b.mkdir()
    (b / "m.py").write_text(" ".join(["beta"] * 300))
    (b / "n.rs").write_text(" ".join(["gamma"] * 300))
    (b / ".hidden.py").write_text(" ".join(["delta"] * 300))  # hidden files are not read
    (b / "blob.bin").write_bytes(b"\xff\xfe")  # nor files that are not text or source
    wt = word_tokenizer(["alpha", "beta", "gamma", "delta"])
    w = calibration_windows([str(a), str(b)], wt, samples=5, seq_len=16, seed=3)
    assert w.shape == (5, 16)
    assert (w[:3] == 1).all()  # the first source takes the remainder: 3 windows of alpha
    assert set(np.unique(w[3:])) <= {2, 3}  # the folder's .py and .rs files, never the hidden one
    again = calibration_windows([str(a), str(b)], wt, samples=5, seq_len=16, seed=3)
    assert np.array_equal(w, again)
    # one source alone gives exactly the windows it always gave (the enwiki default before `mix`)
    ids = np.ones(400, dtype=np.int64)
    assert np.array_equal(calibration_windows(str(a), wt, 4, 16, 3), sample_windows(ids, 4, 16, 3))
    with pytest.raises(InputError, match="fewer than the 2 calibration sources"):
        calibration_windows([str(a), str(b)], wt, samples=1, seq_len=16, seed=3)
    with pytest.raises(QwenEdgeError, match=f"calibration source {a}: .*not enough"):
        calibration_windows([str(a), str(b)], wt, samples=80, seq_len=16, seed=3)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(QwenEdgeError, match="has no text or source files"):
        calibration_windows(str(empty), wt, 1, 16, 3)


def test_code_text_evaluates_on_ten_modules_never_calibrated_on():
    assert not set(P.EVAL_MODULES) & set(P.CALIBRATION_MODULES)
    ev, cal = P.python_text("evaluation"), P.python_text("calibration")
    for m in P.EVAL_MODULES:  # every held-out module is in the evaluation text, each cut to EVAL_CHARS
        head = P.module_source(m)[:200]
        assert head in ev and head not in cal, m
    assert len(ev) <= len(P.EVAL_MODULES) * (P.EVAL_CHARS + 2)
    assert len(cal) > 500_000  # whole modules: far more than 16 windows of 512 tokens
    assert "def " in ev and "class " in ev
    with pytest.raises(ValueError):
        P.python_text("all")


def test_eval_reads_the_held_out_code_and_source_folders(tmp_path):
    from qwen_edge.eval.datasets import load_dataset
    assert load_dataset("python").text == P.python_text("evaluation")
    (tmp_path / "a.py").write_text("def f():\n    return 1\n")
    (tmp_path / "b.md").write_text("# notes\n")
    assert load_dataset(str(tmp_path)).text == "def f():\n    return 1\n\n\n# notes\n"
    with pytest.raises(QwenEdgeError, match="give enwiki, python, wikitext2"):
        load_dataset(str(tmp_path / "missing"))
