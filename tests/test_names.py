"""Names are bytes: any name a file system or a tar can hold is archived under a reversible key or gets a row
naming it; printed names cannot forge or reorder what a reader sees (issue #29, finding 3)."""

from __future__ import annotations

import io
import logging
import os
import random
import tarfile

from pipeline_helpers import png_bytes, unit_spec

from pipeline import manifest
from pipeline.keys import escape_name, printable, safe_key, unescape_name


def test_escaping_is_reversible_for_any_bytes_and_yields_text():
    rng = random.Random(7)
    for _ in range(500):
        raw = bytes(rng.choice(b"ab/.\x80\xe9\xff\\x8") for _ in range(rng.randint(1, 12)))
        name = raw.decode("utf-8", "surrogateescape")
        text = escape_name(name)
        text.encode("utf-8")  # always valid text: Parquet and JSON take it
        if "\\" not in name:  # literal backslashes in input names are refused as keys before escaping
            assert unescape_name(text).encode("utf-8", "surrogateescape") == raw


def test_escaped_keys_pass_the_key_rules_and_literal_escapes_do_not_collide():
    assert safe_key(escape_name("d/caf\udce9")) == "d/caf\\xe9"
    assert safe_key("a\\b") is None and safe_key("a\\x41") is None  # only escapes of non-UTF-8 bytes


def test_printed_names_escape_control_and_bidirectional_characters():
    for ch in ("\u202e", "\u2028", "\x85", "\x7f", "\n"):
        shown = printable(f"cat{ch}gpj.png")
        assert ch not in shown and shown.startswith("cat") and shown.endswith("gpj.png")
    assert printable("plain/name.png") == "plain/name.png"


def test_a_manifest_holds_any_name_as_text():
    row = manifest.ManifestRow(key="k", source_uri="/in/bad\udcff.png", error="read failed: /in/bad\udcff.png")
    table = manifest.from_parquet(manifest.to_parquet([row]))
    assert table.column("source_uri")[0].as_py() == "/in/bad\\xff.png"
    assert unescape_name(table.column("source_uri")[0].as_py()) == "/in/bad\udcff.png"


def test_a_folder_with_a_name_that_is_not_utf8_is_planned_and_read(tmp_path, caplog):
    """No planning failure: the file is planned, frozen, read back and keyed with its byte escaped."""
    from pipeline.inputs import stream_unit
    from pipeline.plan import plan_input

    src = tmp_path / "in"
    src.mkdir()
    with open(bytes(src) + b"/bad\xff.png", "wb") as f:
        f.write(png_bytes(1))
    (src / "good.png").write_bytes(png_bytes(2))
    caplog.set_level(logging.WARNING, logger="pipeline")
    plan = plan_input(str(src), None, "auto", 1 << 20, str(tmp_path / "out"), {}, None)
    units = list(plan)
    records = [r for u in units for r in stream_unit(u, unit_spec(u))]
    assert sorted(r.key for r in records) == ["bad\\xff", "good"]
    assert all(r.data is not None and r.error is None for r in records)
    assert "not planned" not in caplog.text


def test_tar_links_and_undecodable_member_names_are_records_never_skipped(tmp_path):
    from pipeline.inputs import stream_unit
    from pipeline.spec import WorkUnit

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in (("x\udce9.png", png_bytes(1)), ("x\udce9.txt", b"caption")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, kind, target in (("sym.png", tarfile.SYMTYPE, "x.png"), ("hard.png", tarfile.LNKTYPE, "x.png"),
                                   ("\u202eevil.png", tarfile.SYMTYPE, "x.png")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    unit = WorkUnit("000000", "tar", (str(tmp_path / "s.tar"),), 1, str(tmp_path))
    recs = list(stream_unit(unit, unit_spec(unit)))
    assert [(r.key, r.sidecar, r.member_kind) for r in recs] == [
        ("x\\xe9", False, "file"), ("x\\xe9", True, "file"), ("sym", True, "symlink"), ("hard", True, "hardlink"),
        ("\u202eevil", True, "symlink")]
    assert recs[0].data == png_bytes(1) and recs[2].link == "x.png"
    assert os.path.basename(recs[0].source_uri) == "s.tar#x\\xe9.png"
