"""Input containment: what of a job's input a worker may read.

Only regular files under the input the job was planned from are read
(``open_input``, ``read_input``); a listed entry that is not a plain file is
planned only under the symlink rule (``special_entry_size``), else reported.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import BinaryIO

import fsspec

from .storage import canonical, filesystem, full_uri, is_local, open_read, retried


def within(uri: str, root: str) -> bool:
    """True when ``uri`` is ``root`` or lies below it, compared segment by segment in canonical spelling
    (``/data/in2`` is not under ``/data/in``; ``/data/in/../x`` is not under it either)."""
    return _inside(canonical(uri), canonical(root))


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class RefusedInput(ValueError):
    """An input that is not read: outside the input it was planned from, not a regular file, or too large."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def open_input(uri: str, options: dict | None, root: str) -> BinaryIO:
    """A planned input opened for reading, only if it lies under ``root`` and is a regular file.

    Locally, links are resolved first and the file they lead to must lie
    under ``root`` too; the file is opened without blocking and checked
    with ``fstat``, so a FIFO or a device (which could block forever or
    never end) is refused instead of read. Object stores hold only objects.
    """
    _check_within(uri, root)
    fs, path = filesystem(uri, options)
    if not is_local(fs):
        return open_read(uri, options)
    return _open_local(uri, path, root)


def _check_within(uri: str, root: str) -> None:
    if not within(uri, root):
        raise RefusedInput(f"{uri}: not under the input {root}; only files under it are read")


def _open_local(uri: str, path: str, root: str) -> BinaryIO:
    """A local regular file whose real path lies under ``root``, opened without following a last link."""
    real = os.path.realpath(path)
    real_root = os.path.realpath(canonical(root))
    if not _inside(real, real_root):
        raise RefusedInput(f"{uri}: leads to {real}, outside the input {root}; only files under it are read")
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RefusedInput(f"{uri}: {_kind(st.st_mode)}, not a regular file; only regular files are read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_input(uri: str, options: dict | None, root: str, max_bytes: int) -> bytes:
    """A planned input's bytes (``open_input``'s checks), refused when larger than ``max_bytes``.

    On object stores this is one ranged GET of at most ``max_bytes + 1`` bytes.
    """
    _check_within(uri, root)
    fs, path = filesystem(uri, options)
    if is_local(fs):
        with _open_local(uri, path, root) as f:
            data = f.read(max_bytes + 1)
    else:
        data = retried(fs, lambda: fs.cat_file(path, start=0, end=max_bytes + 1), f"read {uri}")
    if len(data) > max_bytes:
        raise RefusedInput(f"{uri}: over the limit of {max_bytes} bytes per input image")
    return data


Skip = Callable[[str, str], None]  # (URI, why) of a listed entry that is not planned


def special_entry_size(fs: fsspec.AbstractFileSystem, name: str, info: dict, real_root: str,
                       on_skip: Skip) -> int | None:
    """The size to plan a listed entry that is not a plain file with, or None after reporting why it is skipped.

    The rule for local inputs: a symlink to a regular file inside the input
    is followed (planned under the link's name); a symlink leading outside
    the input, to a folder, or to nothing, and every FIFO, socket or device,
    is skipped and reported. Object stores list only objects.
    """
    uri = full_uri(fs, name)
    if not is_local(fs):
        on_skip(uri, f"not a file (listed as {info.get('type')!r})")
        return None
    try:
        st = os.lstat(name)
        if not stat.S_ISLNK(st.st_mode):
            on_skip(uri, f"{_kind(st.st_mode)}, not a regular file")
            return None
        target = os.path.realpath(name)
        if not os.path.exists(target):
            on_skip(uri, "a dangling symlink")
            return None
        if not _inside(target, real_root):
            on_skip(uri, f"a symlink to {target}, outside the input")
            return None
        tst = os.stat(target)
    except OSError as exc:
        on_skip(uri, f"cannot be inspected ({exc})")
        return None
    if not stat.S_ISREG(tst.st_mode):
        on_skip(uri, f"a symlink to {_kind(tst.st_mode)} (only links to regular files are followed)")
        return None
    return int(tst.st_size)
