"""The wiki markup cleaner, the dump parser on a tiny fake wheel, and the real Wikipedia text."""

from __future__ import annotations

import bz2
import hashlib
import io
import zipfile
from pathlib import Path
from typing import Sequence

import pytest

from qwen_edge.data import enwiki
from qwen_edge.data.enwiki import WikiSource, clean_wikitext, enwiki_articles, enwiki_text, parse_dump
from qwen_edge.errors import QwenEdgeError


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        # nested templates vanish whole, including a table nested inside one
        ("Before {{outer|a={{inner|{{deep}}}}|b=[[x|y]]}} after.", "Before after."),
        ("A {{box|\n{|\n| cell\n|}\n}} B", "A B"),
        ("Albedo ({{IPAc-en|æ|l}}) is a ratio.", "Albedo is a ratio."),
        # wiki links keep their text; files, categories and interlanguage links go
        ("See [[Paris|the capital]] and [[London]], or [[wikt:anarchy|anarchy]]s.",
         "See the capital and London, or anarchys."),
        ("[[File:X.jpg|thumb|A [[Moon|moon]] in Bicyclo[1.1.0]]]Text.", "Text."),
        ("Body.\n[[Category:Stuff]]\n[[de:Etwas]]\n[[:Category:Stuff]] is linked.",
         "Body.\nCategory:Stuff is linked."),
        ("[http://example.org Example site] and [https://x.org].", "Example site and."),
        # references, comments, tags and entities
        ('Fact.<ref name="a">{{cite web|url=http://x}}</ref> More<ref name=a/> text.',
         "Fact. More text."),
        ("A<!-- hidden\nnote -->B&nbsp;C &ndash; <span style=\"x\">D</span><br/>E",
         "AB C – D E"),
        ("x <math>\\frac{1}{2}</math> y", "x y"),
        # tables, including a table nested in a table
        ('Intro.\n{| class="wikitable"\n|-\n! H\n|-\n| a {{t}} || 1\n|-\n|\n{|\n| inner\n|}\n|}\nOutro.',
         "Intro.\nOutro."),
        # headings, emphasis, list markers, blank lines
        ("== History ==\n'''Bold''' and ''italic'' and '''''both'''''.\n\n* item one\n# item two\n"
         ":indented\n=== Sub ===\n----\n__NOTOC__",
         "History\nBold and italic and both.\nitem one\nitem two\nindented\nSub"),
        # appendix sections are cut off
        ("Text.\n== See also ==\n* [[Other]]\n== References ==\n{{reflist}}", "Text."),
        # whitespace
        ("  many    spaces\t here  \n\n\n  next  ", "many spaces here\nnext"),
    ],
)
def test_clean_wikitext(markup: str, expected: str) -> None:
    assert clean_wikitext(markup) == expected


NS = "http://www.mediawiki.org/xml/export-0.10/"
LONG = "The quick brown fox jumps over the lazy dog and the cat. " * 12


def page(title: str, text: str, ns: int = 0, redirect: str | None = None) -> str:
    red = f'<redirect title="{redirect}" />' if redirect else ""
    body = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return (f"<page><title>{title}</title><ns>{ns}</ns><id>1</id>{red}<revision><id>2</id>"
            f'<text xml:space="preserve">{body}</text></revision></page>')


DUMP = (
    f'<mediawiki xmlns="{NS}" version="0.10" xml:lang="en"><siteinfo><sitename>W</sitename></siteinfo>'
    + page("Fox", "'''Fox''' {{Infobox|x=1}}" + LONG + "<ref>cite</ref>\n== See also ==\n* [[Dog]]")
    + page("Old name", "#REDIRECT [[Fox]]", redirect="Fox")
    + page("Wikipedia:Project", LONG, ns=4)
    + page("Stub", "Too short.")
    + page("Fox (disambiguation)", "'''Fox''' may refer to:\n" + "* [[Fox]], an animal\n" * 20)
    + page("Dog", "A [[dog]] & a cat. " + LONG)
    + "</mediawiki>"
)


def test_parse_dump_keeps_real_articles_in_order() -> None:
    arts = parse_dump(io.BytesIO(DUMP.encode()))
    assert [a.split("\n")[0] for a in arts] == ["Fox", "Dog"]
    assert arts[0] == "Fox\nFox " + LONG.strip()
    assert arts[1].startswith("Dog\nA dog & a cat. The quick")


def test_cleaning_is_deterministic() -> None:
    runs = [parse_dump(io.BytesIO(DUMP.encode())) for _ in range(2)]
    assert runs[0] == runs[1]


def fake_source(tmp_path: Path) -> tuple[WikiSource, bytes]:
    """A tiny wheel laid out like gensim's, and a source pinned to its exact digest."""
    member = "gensim/test/test_data/enwiki-test.xml.bz2"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr(member, bz2.compress(DUMP.encode()))
    wheel = buf.getvalue()
    src = WikiSource("gensim==0.0.1", "gensim-0.0.1-cp311-cp311-manylinux_2_28_x86_64.whl",
                     hashlib.sha256(wheel).hexdigest(), member)
    return src, wheel


class FakePip:
    def __init__(self, name: str, data: bytes) -> None:
        self.name, self.data, self.calls = name, data, 0

    def __call__(self, requirement: str, dest: Path, options: Sequence[str] = ()) -> None:
        self.calls += 1
        (dest / self.name).write_bytes(self.data)


def test_load_articles_downloads_once_then_uses_the_text_cache(tmp_path: Path) -> None:
    src, wheel = fake_source(tmp_path)
    pip = FakePip(src.wheel, wheel)
    first = enwiki.load_articles(tmp_path, source=src, pip_download=pip)
    assert [a.split("\n")[0] for a in first] == ["Fox", "Dog"]
    assert (tmp_path / "dl" / src.wheel).exists()
    cached = list((tmp_path / "data").iterdir())
    assert [p.name for p in cached] == [f"enwiki-{src.sha256[:12]}-v{enwiki.CLEANER_VERSION}.txt"]
    (tmp_path / "dl" / src.wheel).unlink()  # the text cache alone must suffice now
    assert enwiki.load_articles(tmp_path, source=src, pip_download=pip) == first
    assert pip.calls == 1


def test_wheel_digest_mismatch_is_an_error(tmp_path: Path) -> None:
    src, wheel = fake_source(tmp_path)
    with pytest.raises(QwenEdgeError, match=f"expected {src.sha256}, got "):
        enwiki.load_articles(tmp_path, source=src, pip_download=FakePip(src.wheel, wheel + b"x"))
    assert not (tmp_path / "dl" / src.wheel).exists()
    assert not (tmp_path / "data").exists()


def test_unexpected_wheel_name_is_an_error(tmp_path: Path) -> None:
    src, wheel = fake_source(tmp_path)
    with pytest.raises(QwenEdgeError, match="not gensim-0.0.1-cp311"):
        enwiki.load_articles(tmp_path, source=src, pip_download=FakePip("gensim-0.0.1-other.whl", wheel))


@pytest.mark.real
def test_real_enwiki_text_is_plain_english() -> None:
    arts = enwiki_articles()
    text = enwiki_text()
    assert text == "\n\n".join(arts)
    assert len(arts) >= 50 and arts[0].startswith("Anarchism\n")
    assert len(text) >= 100_000
    assert text.count(" the ") >= 5_000
    for junk in ("{{", "}}", "[[", "]]", "<ref", "&nbsp;", "thumb|"):
        assert junk not in text, junk
