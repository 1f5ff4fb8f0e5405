"""Offline English from Debian's text packages, cleaned to plain paragraphs (issue 18, stage A).

The world's procedural text has a few hundred words; general English gives the language model
syntax beyond the world's templates (organism notes: "syntax, not scale", some 10 M tokens).
`download_and_extract` fetches the packages with `apt-get download` (no root needed, no install)
and unpacks them with `dpkg -x`; `documents` yields cleaned documents, one per fortune or per
dictionary entry. bible-kjv-text is left out: its `bible.data` is the package's own compressed
format, readable only through its `bible` program.
"""

from __future__ import annotations

import gzip
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

PACKAGES = ("fortunes", "fortunes-min", "dict-jargon", "dict-foldoc", "dict-gcide")
_FORTUNE_DIR = "usr/share/games/fortunes"
_DICTS = ("jargon", "foldoc", "gcide")  # usr/share/dictd/<name>.dict.dz (gzip-compatible)

_MARKUP = re.compile(r"[{}<>\[\]|]")
_SPACES = re.compile(r"\s+")
_GCIDE_HEAD = re.compile(r"^\S.*\\.*\\")  # "Abdication \Ab`di*ca"tion\, n. [L. ...]"
_SOURCE_NOTE = re.compile(r"\[(1913 Webster|PJC|WordNet 1\.5|Century Dict\.)[^\]]*\]")


def download_and_extract(folder: Path, packages: tuple[str, ...] = PACKAGES) -> Path:
    """`apt-get download` the packages into `folder/deb` and unpack them into `folder/x`."""
    debs, root = folder / "deb", folder / "x"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return root


def clean(text: str) -> str:
    """One line of plain prose: markup brackets dropped, whitespace collapsed."""
    text = _SOURCE_NOTE.sub(" ", text)
    text = _MARKUP.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def fortunes(root: Path) -> Iterator[str]:
    """Each fortune cookie (files are '%'-separated; the binary .dat and .u8 twins skipped)."""
    folder = root / _FORTUNE_DIR
    for path in sorted(folder.iterdir()):
        if path.suffix or not path.is_file() or path.name.startswith("ascii"):
            continue
        for item in path.read_text(encoding="latin-1").split("\n%\n"):
            item = clean(item)
            if len(item.split()) >= 4:
                yield item


def dictionary_entries(root: Path, name: str) -> Iterator[str]:
    """Entries of a dictd dictionary: paragraphs after the headword, headword lines dropped."""
    raw = gzip.decompress((root / "usr/share/dictd" / f"{name}.dict.dz").read_bytes()).decode("utf-8", "replace")
    for entry in re.split(r"\n\s*\n(?=\S)", raw):  # a new entry starts at column 0 after a blank line
        lines = entry.split("\n")
        if not lines or lines[0].startswith("00-database"):
            continue
        body = [ln for ln in lines[1:] if not _GCIDE_HEAD.match(ln)]
        text = clean(" ".join(body))
        if len(text.split()) >= 6:
            yield text


def documents(root: Path) -> Iterator[tuple[str, str]]:
    """(source, document) for every cleaned document, in a fixed order."""
    for doc in fortunes(root):
        yield "fortunes", doc
    for name in _DICTS:
        for doc in dictionary_entries(root, name):
            yield name, doc
