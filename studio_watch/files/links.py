"""Browser link files dropped in a watched folder: the URL inside a Windows .url or a macOS .webloc."""

from __future__ import annotations

from studio_watch.errors import SourceUnreadable, SourceVanished
from studio_watch.files import sources

SUFFIXES = (".url", ".webloc")
LINK_FILE_MAX = 64 << 10  # a .url or .webloc holds one URL: a few hundred bytes


def is_link_name(lower_name: str) -> bool:
    """A name (already lower-cased) that a browser gives a saved link."""
    return lower_name.endswith(SUFFIXES)


def parse_link_file(path: str, identity: sources.Identity | None = None) -> str:
    """The URL in a Windows Internet Shortcut (.url) or a macOS .webloc (XML or binary plist).

    Opened as every source is (never through a symlink, never blocking on a FIFO, a regular file only) and
    read only up to LINK_FILE_MAX: a link file is a few hundred bytes, and a huge one is not a link file.
    With `identity`, it must be the file that settled (else SourceChanged)."""
    try:
        with sources.open_source(path, identity, limit=LINK_FILE_MAX) as f:
            data = f.read(LINK_FILE_MAX + 1)
    except SourceVanished:
        raise SourceVanished(f"link file vanished: {path!r}") from None
    except SourceUnreadable as exc:
        raise SourceUnreadable(f"link file: {exc}") from None
    except OSError as exc:
        raise SourceUnreadable(f"cannot read link file {path!r}: {exc.strerror}") from None
    if len(data) > LINK_FILE_MAX:
        raise SourceUnreadable(f"link file {path!r} is larger than {LINK_FILE_MAX:,} bytes: not a link file")
    lower = path.lower()
    if lower.endswith(".url"):
        url = _internet_shortcut_url(_decode(data))
    elif lower.endswith(".webloc"):
        url = _webloc_url(data, path)
    else:
        raise SourceUnreadable(f"not a link file (.url or .webloc): {path!r}")
    if not url:
        raise SourceUnreadable(f"malformed link file {path!r}: it holds no URL")
    return url


def _decode(data: bytes) -> str:
    """Text of a .url file: UTF-16 with a BOM, UTF-8 (with or without a BOM), else Windows-1252."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16", "replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _internet_shortcut_url(text: str) -> str | None:
    """`URL=` in the `[InternetShortcut]` section (names case-insensitive, CRLF or LF)."""
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
        elif section == "internetshortcut" and "=" in line:
            key, _, value = line.partition("=")
            if key.strip().lower() == "url":
                return value.strip()
    return None


def _webloc_url(data: bytes, path: str) -> str | None:
    import plistlib  # start-up cost (XML parser): only a .webloc needs it

    try:
        doc = plistlib.loads(data)
    except Exception as exc:  # plistlib raises InvalidFileException, ExpatError, ValueError...
        raise SourceUnreadable(f"malformed .webloc {path!r}: not a property list ({type(exc).__name__})") from None
    url = doc.get("URL") if isinstance(doc, dict) else None
    return url.strip() if isinstance(url, str) else None
