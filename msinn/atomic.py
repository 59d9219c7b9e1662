"""Replacing a local file whole: a reader, a crash or a full disk never leaves half a file at the path.

The one way every local file of the project is written (model files, coded and
decoded images, ``--json`` results, training history, and the pipeline's
files on a local or mounted file system): the data goes to a new temporary
file beside the path (same folder, so the rename cannot cross file systems),
is flushed to disk, and is renamed over the path; the folder is then synced so
the rename itself survives a power cut. The temporary file is created like
any new file (the umask decides its permissions) and removed if writing fails.
Object stores need none of this: one PUT is visible whole or not at all
(``pipeline.storage.write_bytes``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; a no-op where a folder cannot be opened or synced (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temporary(path: Path, suffix: str) -> Path:
    """A fresh name beside ``path``: concurrent writers of one path never share a temporary file."""
    return path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex}{suffix}")


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (``torch.save``, Pillow's ``save``,
    which takes the format from ``suffix``); when the block ends the file is synced and renamed over ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = _temporary(path, suffix)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8), whole or not at all."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:  # "x": a new file, created with the umask's permissions
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
