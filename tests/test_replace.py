"""An archive that can replace its dataset: every part of every sample kept, originals back, the input's shape back.

Two archives of one mixed input (a webdataset tar with captions, metadata,
an orphan field, links and a damaged image; a folder with captions; a Parquet
file with other columns) are built once for the module: one ``--lossless``,
one lossy. Every test reads them.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import image_file
from PIL import Image
from pipeline_helpers import png_bytes
from test_lossless import photo

from pipeline.archive import connect
from pipeline.restore import run_decode_jobs
from pipeline.runner import run_job
from pipeline.spec import JobSpec


def _tar(members: list[tuple]) -> bytes:
    """(name, data) files, or (name, None, kind, link) links and folders, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data, *rest in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = {"symlink": tarfile.SYMTYPE, "directory": tarfile.DIRTYPE,
                             "hardlink": tarfile.LNKTYPE}[rest[0]]
                info.linkname = rest[1] if len(rest) > 1 else ""
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_input(root: Path) -> dict:
    """The mixed input; returns what each part should come back as."""
    root.mkdir(parents=True)
    jpeg = image_file(photo(192, 128, 1), "JPEG", quality=88)
    members = [
        ("shard/", None, "directory"),
        ("shard/a.json", json.dumps({"caption": "a", "n": 1}).encode()),
        ("shard/a.jpg", jpeg),
        ("shard/a.txt", b"a photo of a gradient"),
        ("shard/b.png", png_bytes(3)),
        ("shard/b.cls", b"7"),
        ("shard/c.txt", b"only a caption"),  # a sample without an image
        ("shard/bad.jpg", b"\xff\xd8\xffnot a jpeg after all"),
        ("shard/link.jpg", None, "symlink", "a.jpg"),
        ("shard/hard.jpg", None, "hardlink", "shard/a.jpg"),
        ("shard/empty.txt", b""),
        ("shard/n\udce9.png", png_bytes(9)),  # a name that is not UTF-8 (latin-1 bytes, as old tars hold)
        ("shard/n\udce9.txt", b"its caption"),
    ]
    (root / "data-000.tar").write_bytes(_tar(members))
    (root / "loose").mkdir()
    (root / "loose" / "p.png").write_bytes(png_bytes(5))
    (root / "loose" / "p.txt").write_text("a caption beside a loose file")
    with open(bytes(root / "loose") + b"/q\xff.png", "wb") as f:  # a file name that is not UTF-8
        f.write(png_bytes(6))
    (root / "README.md").write_text("about this dataset")
    images = [image_file(photo(96, 64, 7), "JPEG", quality=90), png_bytes(8), None, b"junk that is no image"]
    table = pa.table({
        "key": ["r0", "r1", "r2", None],
        "image": pa.array([None if b is None else {"bytes": b, "path": f"orig/{i}.x"} for i, b in enumerate(images)],
                          pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "caption": ["zero", "one", "two", "three"],
        "score": [0.5, 1.5, 2.5, 3.5],
    }).replace_schema_metadata({b"huggingface": b'{"info": 1}'})
    pq.write_table(table, root / "rows.parquet", row_group_size=2)
    return {"tar": members, "jpeg": jpeg}


@pytest.fixture(scope="module")
def archives(tmp_path_factory, local_ray, tiny_checkpoint) -> dict:
    base = tmp_path_factory.mktemp("replace")
    made = make_input(base / "in")
    out = {"base": base, "model": tiny_checkpoint, **made}
    for name, kind, value in (("lossless", "lossless", 0.0), ("lossy", "qp", 1.0)):
        spec = JobSpec(input=str(base / "in"), output=str(base / name), target_kind=kind, target_value=value,
                       model=tiny_checkpoint)
        out[name] = run_job(spec, actors=1)
    return out


def _rows(archive: Path) -> dict[str, dict]:
    con = connect(str(archive))
    cur = con.execute("SELECT * FROM manifest")
    cols = [d[0] for d in cur.description]
    return {r[0]: dict(zip(cols, r)) for r in cur.fetchall()}


def _members(path: Path) -> list[tuple]:
    with tarfile.open(path) as tf:
        return [(m.name, tf.extractfile(m).read() if m.isfile() else None, m.type, m.linkname) for m in tf]


def assert_same_members(got: list[tuple], want: list[tuple]) -> None:
    """The same members in the same order, byte for byte; PNGs (stored pixel-exact) pixel for pixel."""
    assert [m[0] for m in got] == [m[0] for m in want]
    for g, w in zip(got, want):
        if w[0].endswith(".png"):  # the same pixels, another PNG file
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(g[1]))), np.asarray(Image.open(io.BytesIO(w[1]))))
        else:
            assert g == w, w[0]


def _restore(archive: Path, dest: Path, model: str) -> None:
    from pipeline.cli import main

    assert main(["restore", str(archive), str(dest), "--layout", "source", "--model", model]) == 0


def _shard_with(archive: Path, name: str) -> Path:
    """The bitstream shard that holds member ``name``."""
    for tar in sorted((archive / "bitstreams").glob("*.tar")):
        with tarfile.open(tar) as tf:
            if name in tf.getnames():
                return tar
    raise AssertionError(f"no shard holds {name}")


def test_every_part_of_every_sample_is_in_the_manifest(archives):
    """Captions, metadata, labels, links and folders are recorded with their sample (names, sizes, hashes)."""
    rows = _rows(archives["base"] / "lossless")
    # nothing that can be stored is an error: only the Parquet row without image bytes and the one without a key
    errors = {k: r["error"] for k, r in rows.items() if r["status"] == "error"}
    assert sorted(errors.values()) == ["missing image bytes", "missing key"]
    a = rows["shard/a"]
    assert a["codec"] == "lepton" and a["exact"] == "bytes"
    parts = {m["name"]: m for m in a["members"]}
    assert set(parts) == {"shard/a.json", "shard/a.txt"} and parts["shard/a.txt"]["bytes"] == 21
    assert rows["shard/c"]["codec"] == "none" and [m["name"] for m in rows["shard/c"]["members"]] == ["shard/c.txt"]
    link = next(m for m in rows["shard/link"]["members"])
    assert link["kind"] == "symlink" and link["link"] == "a.jpg"
    assert rows["shard/bad"]["codec"] == "stored" and "JPEG header unreadable" in rows["shard/bad"]["note"]
    assert rows["loose/p"]["exact"] == "pixels" and [m["name"] for m in rows["loose/p"]["members"]] == ["loose/p.txt"]
    assert rows["README"]["codec"] == "none"
    # names are bytes: what is not UTF-8 is escaped in keys and manifests (\xHH), and comes back as it was
    assert rows["loose/q\\xff"]["status"] == "ok" and rows["shard/n\\xe9"]["status"] == "ok"
    assert [m["name"] for m in rows["shard/n\\xe9"]["members"]] == ["shard/n\\xe9.txt"]
    hard = rows["shard/hard"]["members"][0]
    assert hard["kind"] == "hardlink" and hard["link"] == "shard/a.jpg"
    assert rows["r0"]["codec"] == "lepton" and rows["r0"]["columns_uri"].endswith("columns/part-000001.parquet")
    lossy = _rows(archives["base"] / "lossy")
    assert lossy["shard/a"]["exact"] == "none" and lossy["shard/bad"]["status"] == "error"
    # the damaged image's bytes are kept though it could not be coded
    assert [m["name"] for m in lossy["shard/bad"]["members"]] == ["shard/bad.jpg"]
    with tarfile.open(_shard_with(archives["base"] / "lossy", "shard/a.msinn")) as tf:
        names = tf.getnames()
    assert names.index("shard/a.json") < names.index("shard/a.msinn") < names.index("shard/a.txt")  # webdataset


def test_a_lossless_archive_gives_the_input_back(archives, tmp_path):
    """restore --layout source: the tar with the same members in the same order (links and folders too), JPEGs
    and every other part byte for byte, PNGs pixel for pixel; the folder and the Parquet file likewise."""
    src, dest = archives["base"] / "in", tmp_path / "back"
    _restore(archives["base"] / "lossless", dest, archives["model"])
    got, want = _members(dest / "data-000.tar"), _members(src / "data-000.tar")
    assert_same_members(got, want)
    assert (dest / "loose" / "p.txt").read_bytes() == (src / "loose" / "p.txt").read_bytes()
    assert np.array_equal(np.asarray(Image.open(dest / "loose" / "p.png")), np.asarray(Image.open(src / "loose" /
                                                                                               "p.png")))
    assert (dest / "README.md").read_text() == "about this dataset"
    assert os.path.exists(bytes(dest / "loose") + b"/q\xff.png")
    a, b = pq.read_table(src / "rows.parquet"), pq.read_table(dest / "rows.parquet")
    assert a.schema == b.schema and a.schema.metadata == b.schema.metadata
    for col in ("key", "caption", "score"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist()
    ai, bi = a.column("image").to_pylist(), b.column("image").to_pylist()
    assert [x and x["path"] for x in ai] == [x and x["path"] for x in bi]
    assert bi[0]["bytes"] == ai[0]["bytes"] and bi[3]["bytes"] == ai[3]["bytes"]  # a JPEG, and unkeyed junk
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(bi[1]["bytes"]))),
                          np.asarray(Image.open(io.BytesIO(ai[1]["bytes"]))))


def test_a_lossy_archive_gives_every_other_part_back(archives, tmp_path):
    """Lossy rows keep their members' names and hold the decoded image in that format; the rest is identical."""
    dest = tmp_path / "back"
    _restore(archives["base"] / "lossy", dest, archives["model"])
    got = {m[0]: m for m in _members(dest / "data-000.tar")}
    want = {m[0]: m for m in _members(archives["base"] / "in" / "data-000.tar")}
    assert list(got) == list(want)
    for name in ("shard/a.json", "shard/a.txt", "shard/b.cls", "shard/c.txt", "shard/bad.jpg", "shard/empty.txt",
                 "shard/link.jpg", "shard"):
        assert got[name] == want[name], name
    assert Image.open(io.BytesIO(got["shard/a.jpg"][1])).format == "JPEG"
    assert Image.open(io.BytesIO(got["shard/b.png"][1])).format == "PNG"
    assert (dest / "loose" / "p.txt").exists() and Image.open(dest / "loose" / "p.png").format == "PNG"


def test_verify_checks_exact_files_and_every_stored_part(archives, tmp_path):
    """verify checks lossless rows against the original's sha256 or pixel hash, and each part's sha256: a
    changed caption in the tar is a mismatch naming its row."""
    import shutil

    copy = tmp_path / "arch"
    shutil.copytree(archives["base"] / "lossless", copy)
    rows = [dict(r, archive_root=str(copy)) for r in _rows(copy).values() if r["status"] == "ok"]
    report = run_decode_jobs([rows], None, None, "cpu", None, None, "png")
    assert report.checked == len(rows) and not report.failed
    tar = _shard_with(copy, "shard/a.txt")
    blob = bytearray(tar.read_bytes())
    at = blob.index(b"a photo of a gradient")
    blob[at] ^= 1
    tar.write_bytes(bytes(blob))
    report = run_decode_jobs([rows], None, None, "cpu", None, None, "png")
    assert [f["key"] for f in report.failed] == ["shard/a"] and "shard/a.txt" in report.failed[0]["error"]


def test_re_encoding_keeps_every_part_and_the_input_still_comes_back(archives, tmp_path):
    """A re-encode to another target carries the samples' stored parts into its new shards."""
    import shutil

    from pipeline.reencode import run_reencode

    copy = tmp_path / "arch"
    shutil.copytree(archives["base"] / "lossy", copy)
    summary = run_reencode(str(copy), "key LIKE 'shard/%'", "lossless", 0.0, source_mode="source", actors=1,
                           source_prefix=str(archives["base"] / "in"),
                           decode_model=archives["model"])
    assert summary["errors_this_run"] == 0
    rows = _rows(copy)
    assert rows["shard/a"]["exact"] == "bytes" and {m["name"] for m in rows["shard/a"]["members"]} == {
        "shard/a.json", "shard/a.txt"}
    dest = tmp_path / "back"
    _restore(copy, dest, archives["model"])
    assert_same_members(_members(dest / "data-000.tar"), _members(archives["base"] / "in" / "data-000.tar"))


def test_the_archive_reads_as_a_dataset(archives):
    """Ray Data over the current rows, and the webdataset package over the shards, with the parts beside."""
    import webdataset as wds

    from pipeline.dataset import read_archive, shard_urls, webdataset_decoder

    rows = {r["key"]: r for r in read_archive(str(archives["base"] / "lossy"), models=archives["model"]).take_all()}
    assert rows["shard/a"]["image"].shape == (128, 192, 3) and rows["shard/a"]["codec"] == "msinn"
    assert {p["name"]: p["data"] for p in rows["shard/a"]["parts"]}["shard/a.txt"] == b"a photo of a gradient"
    samples = {s["__key__"]: s for s in wds.WebDataset(shard_urls(str(archives["base"] / "lossless")),
                                                        shardshuffle=False).decode(webdataset_decoder())}
    a = samples["shard/a"]
    assert a["lep"].shape == (128, 192, 3) and a["txt"] == "a photo of a gradient" and a["json"]["n"] == 1


def test_lossless_is_a_target_on_every_command_and_in_specs(tmp_path):
    """--lossless on transcode and reencode, kind = "lossless" in a scheduled spec; it needs no model."""
    from pipeline.cli import reencode_parser, spec_from_args, target_of, transcode_parser
    from pipeline.scheduled import load_spec

    args = transcode_parser().parse_args(["--input", "in", "--output", "out", "--lossless"])
    spec = spec_from_args(args)
    assert (spec.target_kind, spec.codecs, spec.needs_model) == ("lossless", ("lossless",), False)
    assert target_of(reencode_parser("reencode").parse_args(["arch", "--lossless"])) == ("lossless", 0.0)
    path = tmp_path / "spec.toml"
    path.write_text('archive = "arch"\n[target]\nkind = "lossless"\n')
    assert load_spec(path)["target"] == {"kind": "lossless", "value": 0}
    lossy = spec_from_args(transcode_parser().parse_args(["--input", "i", "--output", "o", "--qp", "2",
                                                          "--codecs", "msinn,avif,lossless"]))
    assert lossy.codecs == ("msinn", "avif", "lossless") and lossy.needs_model
