"""Key rules, in one place: how an input's key is made, which keys are refused, and what shared keys become.

A key names an image in the archive, a tar member ``<key>.msinn`` and a
restored file, so every reader (listing, tars, Parquet, re-encode, restore)
must apply the same rules; they live here and nowhere else.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Callable
from typing import Any, TypeVar

from .storage import ESCAPED_BYTE, escape_name, unescape_name  # noqa: F401  (names as text: the rules' home)

MAX_KEY_BYTES = 1024  # keys become file names on restore: keep them within what file systems take
MAX_KEY_PART_BYTES = 200
UNSAFE_KEY = ("unsafe key {key!r} (absolute path, '.' or '..', control characters, or a name too long for a "
              "file system)")


def relative_path(uri: str, root: str) -> str:
    """A listed file's path under the input root (its base name if it lies elsewhere)."""
    return uri[len(root) :].lstrip("/") if uri.startswith(root) else uri.rsplit("/", 1)[-1]


def file_key(uri: str, root: str) -> str:
    """A loose file's key: its path under the input root, without its extension."""
    rel = relative_path(uri, root)
    base, dot, ext = rel.rpartition(".")
    return base if dot and "/" not in ext else rel


def webdataset_key(member: str) -> str:
    """A tar member's sample key by the webdataset convention: its folder and its basename up to the first dot.

    ``a/b.c.png`` and ``a/b.c.json`` are fields ``c.png`` and ``c.json`` of sample ``a/b``.
    A member whose basename starts with a dot keeps its whole name.
    """
    folder, _, base = member.rpartition("/")
    stem = base.split(".", 1)[0] or base
    return f"{folder}/{stem}" if folder else stem


def printable(text: object) -> str:
    """A name as it may be printed in a log line or message: control, bidirectional and other invisible
    characters escaped (``repr`` without its quotes), so a key cannot forge or reorder what a reader sees."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def part_of(key: str, name: str) -> bool:
    """Whether a stored part's name belongs to the sample ``key``: by the webdataset rule (``key.field``) or as a
    loose file of that key (``key.ext``), whatever suffix made a repeated name or key unique (``~N``, ``~dupN``)."""
    base = re.sub(r"~dup\d+$", "", key)
    name = re.sub(r"~\d+$", "", name)
    return webdataset_key(name) == base or file_key(name, "") == base or name == base


def safe_key(key: str) -> str | None:
    """A key usable as a tar member and a restored file name, or None.

    No absolute paths, '.', '..', backslashes (other than the ``\\xHH`` escapes
    of :func:`escape_name`) or control characters, and no path component
    longer than 200 bytes (file systems stop at 255 with the extension added
    on restore).
    """
    if not key or key.startswith("/") or "\\" in ESCAPED_BYTE.sub("", key) or any(ord(c) < 32 for c in key):
        return None
    if any("\ud800" <= c <= "\udfff" for c in key):
        return None
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY_BYTES or any(len(p.encode("utf-8", "surrogatepass")) > MAX_KEY_PART_BYTES
                                       for p in key.split("/")):
        return None
    if key in (".", "..") or key.endswith("/"):
        return None
    norm = posixpath.normpath(key)
    if norm != key or norm.startswith("..") or "/../" in f"/{norm}/":
        return None
    return key


def stand_in_key(key: str) -> str:
    """The key an unsafe key's error row is filed under: stable, and safe itself."""
    return "unsafe-" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()[:16]


Keyed = TypeVar("Keyed")  # an InputRecord or a ManifestRow: anything with .key and .source_uri


def refuse_duplicates(items: list[Keyed], fail: Callable[[Keyed, str], None]) -> list[Keyed]:
    """A key shared by several inputs names none of them: every one is failed with the same reason.

    The first keeps the key, the others become ``key~dupN``, so no image is
    archived under another's name and no ``source_uri`` (``tar#member``
    resolves to the last member of that name) points at other bytes. Items
    are input records or manifest rows: anything with ``key`` and ``source_uri``.
    """
    sharing: dict[str, list[Any]] = {}
    for it in items:
        sharing.setdefault(it.key, []).append(it)
    taken = set(sharing)
    for key, group in sharing.items():
        if len(group) < 2:
            continue
        where = ", ".join(str(g.source_uri) for g in group[:4]) + (" ..." if len(group) > 4 else "")
        for i, it in enumerate(group):
            fail(it, duplicate_reason(key, len(group), where))
            if i:
                n = i + 1
                while f"{key}~dup{n}" in taken:
                    n += 1
                it.key = f"{key}~dup{n}"
                taken.add(it.key)
    return items


def duplicate_reason(key: str, count: int, where: str) -> str:
    """The one wording of a shared key's error, whichever reader found it."""
    return f"duplicate key {key!r}: {count} inputs share it ({where}); none is archived"
