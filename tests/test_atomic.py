"""The one local writer: a file is replaced whole or not at all, with a new file's permissions, and nothing is
left beside it."""

from __future__ import annotations

import os

import pytest

from msinn.atomic import atomic_path, write_atomic


def test_write_atomic_replaces_the_file_whole_and_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    write_atomic(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    write_atomic(target, "text \u00e9\n")
    assert target.read_bytes() == "text \u00e9\n".encode()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_new_file_gets_the_permissions_of_any_new_file(tmp_path):
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a", b"x")
        with atomic_path(tmp_path / "b", suffix=".png") as tmp:
            assert tmp.name.endswith(".png") and tmp.parent == tmp_path
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b").read_bytes() == b"y" and (tmp_path / "b").stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary_one(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]
