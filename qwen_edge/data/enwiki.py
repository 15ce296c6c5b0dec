"""Real English text (Wikipedia articles) for perplexity checks and quantization calibration.

The gensim wheel on PyPI ships a shortened dump of real English Wikipedia articles as
test data. PyPI is reachable everywhere we run, so we fetch one pinned wheel with pip,
read the bz2 member straight out of the zip (gensim itself is never installed), parse
the MediaWiki XML and strip the wiki markup with a small deterministic regex cleaner.
The cleaned text is cached, so only the first call pays for download and parsing.
"""

from __future__ import annotations

import bz2
import html
import os
import re
import shutil
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator, Union

from qwen_edge import assets
from qwen_edge.assets import PipDownload
from qwen_edge.errors import QwenEdgeError


@dataclass(frozen=True)
class WikiSource:
    """A pinned wheel and the bz2 MediaWiki export inside it."""

    requirement: str
    wheel: str  # exact file name pip must produce
    sha256: str
    member: str
    pip_options: tuple[str, ...] = ()


# gensim wheels are platform-specific; asking pip for one fixed target (CPython 3.11,
# manylinux x86_64) makes the file, and so its digest, the same on every host.
ENWIKI_SOURCE = WikiSource(
    requirement="gensim==4.4.0",
    wheel="gensim-4.4.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
    sha256="91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
    member="gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    pip_options=("--python-version", "3.11", "--implementation", "cp", "--abi", "cp311",
                 "--platform", "manylinux_2_28_x86_64"),
)

# Bump when the cleaner's output changes, so stale caches are not reused.
CLEANER_VERSION = 1
MIN_ARTICLE_CHARS = 500  # stubs and near-empty pages add little real prose

# Sections from here on are reference lists and link farms, not prose.
_APPENDIX = re.compile(
    r"^==\s*(?:See also|References|Notes|Notes and references|Footnotes|Citations|Sources|"
    r"Bibliography|Further reading|External links)\s*==\s*$",
    re.M | re.I,
)
_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
# Tags whose content is not running prose: dropped whole.
_DROP_TAGS = ("ref|math|chem|ce|gallery|timeline|imagemap|score|hiero|graph|"
              "syntaxhighlight|source|pre")
_SELF_CLOSING = re.compile(rf"<(?:{_DROP_TAGS})\b[^>]*/>", re.I)
_DROP_BLOCK = re.compile(rf"<({_DROP_TAGS})\b[^>]*>.*?</\1\s*>", re.S | re.I)
# Innermost template / table: no opener of the same kind inside, so repeated passes unwrap nesting.
_TEMPLATE = re.compile(r"\{\{(?:(?!\{\{|\}\}).)*\}\}", re.S)
_TABLE = re.compile(r"^[ \t]*\{\|(?:(?!^[ \t]*\{\|).)*?^[ \t]*\|\}[^\n]*", re.S | re.M)
# Anything still open was never closed in the source: a template to the end of its
# line, a table to the end of its paragraph.
_UNCLOSED = re.compile(r"\{\{[^\n]*|^[ \t]*\{\|.*?(?=\n\n|\Z)", re.S | re.M)
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:[ \t]+([^\]\n]*))?\]", re.I)
# Innermost link; single brackets may occur inside (captions like "Bicyclo[1.1.0]"), and
# in "]]]" the link closes on the last two.
_WIKI_LINK = re.compile(r"\[\[((?:(?!\[\[|\]\](?!\])).)*)\]\]")
# Links that render as something other than their text (or not at all).
_HIDDEN_NS = re.compile(r"^\s*(?:file|image|media|category)\s*:", re.I)
_UNCLOSED_FILE = re.compile(r"\[\[\s*(?:file|image|media|category)\s*:[^\n]*", re.I)
_INTERLANG = re.compile(r"^\s*[a-z]{2,3}(?:-[a-z]{2,8})*\s*:", re.I)
_TAG = re.compile(r"</?[a-zA-Z][^<>]*?/?>")
_BR = re.compile(r"<br\s*/?>", re.I)
_QUOTES = re.compile(r"'''''|'''|''")
_HEADING = re.compile(r"^(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.M)
_LIST = re.compile(r"^[ \t]*[*#:;]+[ \t]*", re.M)
_RULE = re.compile(r"^-{4,}", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_EMPTY_PARENS = re.compile(r"\([\s,;]*\)")
_LEADING_SEP = re.compile(r"\([\s,;]+")
_SPACE_BEFORE_PUNCT = re.compile(r"[ \t]+([,.;)])")
_SPACES = re.compile(r"[ \t\u00a0\u2009\u200b]+")
_LETTER = re.compile(r"[^\W\d_]")


_Repl = Union[str, Callable[[re.Match[str]], str]]


def _fixpoint(text: str, *steps: tuple[re.Pattern[str], _Repl]) -> str:
    """Apply substitutions until nothing changes (each pass peels one level of nesting)."""
    while True:
        before = text
        for pat, repl in steps:
            text = pat.sub(repl, text)
        if text == before:
            return text


def _link_text(m: re.Match[str]) -> str:
    target, _, label = m.group(1).partition("|")
    if target.startswith(":"):  # [[:Category:X]] is an inline link, not a categorization
        target = target[1:]
    elif _HIDDEN_NS.match(target) or (_INTERLANG.match(target) and not label):
        return ""  # files, categories and interlanguage links show no text in the article
    return label if label.strip() else target


def clean_wikitext(text: str) -> str:
    """Plain text from MediaWiki markup: one paragraph per line, no blank lines."""
    cut = _APPENDIX.search(text)
    if cut:
        text = text[: cut.start()]
    text = _COMMENT.sub("", text)
    text = _SELF_CLOSING.sub("", text)
    text = _DROP_BLOCK.sub("", text)
    text = _fixpoint(text, (_TEMPLATE, ""), (_TABLE, ""))
    text = _UNCLOSED.sub("", text)
    text = _EXT_LINK.sub(lambda m: m.group(1) or "", text)
    text = _fixpoint(text, (_WIKI_LINK, _link_text))
    text = _UNCLOSED_FILE.sub("", text)
    text = text.replace("[[", "").replace("]]", "")
    text = _BR.sub(" ", text)
    text = _TAG.sub("", text)
    text = html.unescape(text)
    text = _QUOTES.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _LIST.sub("", text)
    text = _RULE.sub("", text)
    text = _MAGIC.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    text = _LEADING_SEP.sub("(", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    lines = (ln.strip() for ln in text.split("\n"))
    return "\n".join(ln for ln in lines if _LETTER.search(ln))


def _iter_pages(xml_stream: IO[bytes]) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of each main-namespace, non-redirect page, in file order."""
    for _, el in ET.iterparse(xml_stream, events=("end",)):
        if el.tag.rpartition("}")[2] != "page":
            continue
        title = el.findtext("{*}title") or ""
        ns = el.findtext("{*}ns")
        body = el.findtext("{*}revision/{*}text") or ""
        is_redirect = el.find("{*}redirect") is not None or body.lstrip()[:9].upper() == "#REDIRECT"
        el.clear()  # keep memory flat over the whole dump
        # Disambiguation pages are link lists, not prose.
        if ns == "0" and not is_redirect and not title.endswith("(disambiguation)"):
            yield title, body


def parse_dump(xml_stream: IO[bytes], min_chars: int = MIN_ARTICLE_CHARS) -> list[str]:
    """Articles ("title\\ncleaned text") from a MediaWiki XML export, short ones dropped."""
    out = []
    for title, body in _iter_pages(xml_stream):
        text = clean_wikitext(body)
        if len(text) >= min_chars:
            out.append(f"{title.strip()}\n{text}")
    return out


def _fetch_wheel(src: WikiSource, dl_dir: Path, pip: PipDownload) -> Path:
    """The pinned wheel in `dl_dir`, downloaded and digest-checked if not there yet."""
    final = dl_dir / src.wheel
    if final.exists() and assets.sha256_file(final) == src.sha256:
        return final
    dl_dir.mkdir(parents=True, exist_ok=True)
    print(f"downloading {src.requirement} ({src.wheel}) from PyPI ...", file=sys.stderr, flush=True)
    tmp = Path(tempfile.mkdtemp(prefix=".pip-", dir=dl_dir))
    try:
        pip(src.requirement, tmp, src.pip_options)
        got = tmp / src.wheel
        if not got.exists():
            names = ", ".join(sorted(p.name for p in tmp.iterdir())) or "nothing"
            raise QwenEdgeError(f"pip download of {src.requirement} gave {names}, not {src.wheel}")
        digest = assets.sha256_file(got)
        if digest != src.sha256:
            raise QwenEdgeError(
                f"sha256 mismatch for {src.wheel}: expected {src.sha256}, got {digest}")
        os.replace(got, final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_articles(
    cache: Path | None = None,
    *,
    source: WikiSource = ENWIKI_SOURCE,
    pip_download: PipDownload = assets.pip_download,
) -> list[str]:
    """Cleaned articles of `source`, from the text cache or built (and cached) from the wheel."""
    root = Path(cache) if cache is not None else assets.cache_dir()
    cached = root / "data" / f"enwiki-{source.sha256[:12]}-v{CLEANER_VERSION}.txt"
    if cached.exists():
        # Articles never contain blank lines, so "\n\n" is an unambiguous separator.
        articles = cached.read_text(encoding="utf-8").split("\n\n")
    else:
        wheel = _fetch_wheel(source, root / "dl", pip_download)
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(source.member) as raw, bz2.open(raw) as xml:
                articles = parse_dump(xml)
        except KeyError as e:
            raise QwenEdgeError(f"{wheel.name} has no member {source.member}") from e
        except (zipfile.BadZipFile, OSError, EOFError, ET.ParseError) as e:
            raise QwenEdgeError(f"could not read the Wikipedia dump in {wheel.name}: {e}") from e
        if not articles:
            raise QwenEdgeError(f"no articles found in {source.member}")
        _write_atomic(cached, "\n\n".join(articles))
    chars = sum(map(len, articles))
    print(f"enwiki: {len(articles)} articles, {chars:,} characters", file=sys.stderr, flush=True)
    return articles


def enwiki_articles(cache: Path | None = None, *, pip_download: PipDownload = assets.pip_download
                    ) -> list[str]:
    """Real English Wikipedia articles, each "title\\ncleaned text", in dump order."""
    return load_articles(cache, pip_download=pip_download)


# Calibration (quantize) and evaluation (eval, quality figures) read disjoint articles, so a quantized
# model is never scored on the text it was calibrated on.
CALIBRATION_ARTICLES = 60
SPLITS = ("all", "calibration", "evaluation")


def enwiki_text(cache: Path | None = None, *, split: str = "all",
                pip_download: PipDownload = assets.pip_download) -> str:
    """Articles of `enwiki_articles` joined by a blank line: all of them, the first CALIBRATION_ARTICLES
    ("calibration") or the rest ("evaluation")."""
    if split not in SPLITS:
        raise ValueError(f"unknown enwiki split {split!r}")
    articles = enwiki_articles(cache, pip_download=pip_download)
    if split == "calibration":
        articles = articles[:CALIBRATION_ARTICLES]
    elif split == "evaluation":
        articles = articles[CALIBRATION_ARTICLES:]
    return "\n\n".join(articles)


if __name__ == "__main__":
    text = enwiki_text()
    print(text[:2000])
