"""A submission's files as a grader reads them: a listing of the stored ``files/`` and
one file at a time as highlighted, escaped text.

The files are a student's: hostile until shown otherwise. Nothing here ever serves one
as it is: a file is read (at most :data:`MAX_SHOWN` bytes), decoded as text and shown
inside a page (``text/html``, every character escaped by Pygments' formatter or by
markupsafe), so no browser runs or renders what a student wrote, whatever its name or
content. A file with NUL bytes is binary: its size is shown, not its bytes. A path from
the URL names a regular file below ``files/`` through no link (the unpacking refuses
links; this is checked again here).

Highlighting is Pygments', chosen by the file's name, on the server: the pages carry
no script. Pygments' CSS (:func:`stylesheet`) is served from this site, as the
Content-Security-Policy wants. Without Pygments the text is shown plain.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from markupsafe import Markup, escape

from vmchecker.errors import NotFound

log = logging.getLogger(__name__)

MAX_FILES = 2000             # entries listed; an archive may hold more (the listing says so)
MAX_SHOWN = 512 * 1024       # bytes of one file read and shown
MAX_HIGHLIGHT = 256 * 1024   # larger text is shown plain: a lexer's time grows with it
CSS_CLASS = "hl"


@dataclass(frozen=True)
class Entry:
    path: str          # relative to files/, with '/'
    size: int


@dataclass(frozen=True)
class Source:
    path: str
    size: int
    html: Markup | None    # the text, escaped and highlighted; None for a binary file
    truncated: bool = False
    language: str = ""


def list_files(root: Path) -> tuple[list[Entry], bool]:
    """Every regular file below ``root`` (no link followed), by path; and whether the
    listing was cut at :data:`MAX_FILES`."""
    found: list[Entry] = []
    if not root.is_dir() or root.is_symlink():
        return found, False
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs.sort()
        base = Path(folder)
        for name in sorted(files):
            path = base / name
            try:
                st = path.lstat()
            except OSError:
                continue
            if not path.is_symlink() and path.is_file():
                found.append(Entry(path.relative_to(root).as_posix(), st.st_size))
                if len(found) >= MAX_FILES:
                    return sorted(found, key=lambda e: e.path), True
    return sorted(found, key=lambda e: e.path), False


def resolve(root: Path, relative: str) -> Path:
    """The regular file ``relative`` names below ``root``; NotFound for anything else
    (a missing file, a folder, '..', an absolute path, a link on the way)."""
    parts = PurePosixPath(relative).parts
    if not parts or relative.startswith("/") or any(p in ("", ".", "..") or "\x00" in p for p in parts):
        raise NotFound(f"no file {relative!r} in this submission")
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise NotFound(f"no file {relative!r} in this submission")
    if root.is_symlink() or not path.is_file():
        raise NotFound(f"no file {relative!r} in this submission")
    return path


def read_source(root: Path, relative: str) -> Source:
    """One file below ``root`` as a page shows it."""
    path = resolve(root, relative)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(MAX_SHOWN)
    if b"\x00" in raw:
        return Source(relative, size, None)
    text = raw.decode("utf-8", errors="replace")
    html, language = highlight(path.name, text)
    return Source(relative, size, html, size > MAX_SHOWN, language)


def highlight(name: str, text: str) -> tuple[Markup, str]:
    """``text`` as escaped HTML with line numbers (anchors ``#L-N``), highlighted for the
    language ``name`` suggests; and that language's name ("" when shown plain)."""
    try:
        from pygments import highlight as render
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import TextLexer, get_lexer_for_filename
        from pygments.util import ClassNotFound
    except ImportError:
        return Markup(f'<div class="{CSS_CLASS}"><pre>') + escape(text) + Markup("</pre></div>"), ""
    lexer = TextLexer(stripnl=False)
    if len(text) <= MAX_HIGHLIGHT:
        try:
            lexer = get_lexer_for_filename(name, stripnl=False)
        except ClassNotFound:
            pass
    formatter = HtmlFormatter(linenos="table", lineanchors="L", anchorlinenos=True, cssclass=CSS_CLASS)
    language = "" if isinstance(lexer, TextLexer) else lexer.name
    return Markup(render(text, lexer, formatter)), language


def stylesheet() -> str:
    """Pygments' CSS for :func:`highlight`'s markup ("" without Pygments)."""
    try:
        from pygments.formatters import HtmlFormatter
    except ImportError:
        return ""
    return HtmlFormatter(cssclass=CSS_CLASS).get_style_defs(f".{CSS_CLASS}")
