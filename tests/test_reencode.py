"""Living archives: re-encode with a new target or model, from bitstreams, resume, gc, schedules."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
import torch
from conftest import save_portable_copy
from pipeline_helpers import corrupt_bytes, png_bytes, read_manifest

import msinn
from pipeline.archive import connect, select
from pipeline.reencode import gc_shards, run_reencode
from pipeline.runner import run_job
from pipeline.scheduled import run_scheduled
from pipeline.spec import JobSpec

FS = fsspec.filesystem("file")


def _archive(root: Path, checkpoint: str, n: int = 4) -> tuple[str, set[str]]:
    (root / "in").mkdir(parents=True)
    for i in range(n):
        (root / "in" / f"x{i}.png").write_bytes(png_bytes(400 + i))
    (root / "in" / "broken.png").write_bytes(corrupt_bytes()["truncated"])
    out = str(root / "arch")
    run_job(JobSpec(input=str(root / "in"), output=out, target_kind="qp", target_value=1.0, model=checkpoint,
                    shard_bytes=12_000), actors=1)
    return out, {f"x{i}" for i in range(n)} | {"broken"}


def _current(archive: str) -> dict[str, dict]:
    return {r["key"]: r for r in select(connect(archive), None)}


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory) -> str:
    from msinn import MSINN, MSINNConfig
    from msinn.training.loop import init_gains

    torch.manual_seed(11)
    m = MSINN(MSINNConfig(N=16, M=16, depths=(1, 1, 1, 1), context_channels=16, anchor_num=4, post_process=False))
    m.train()
    with torch.no_grad():
        m(torch.rand(2, 3, 64, 64), [0, 3])
    init_gains(m, 1.5, 10.0)
    m.update()
    m.eval()
    return save_portable_copy(m, tmp_path_factory.mktemp("other") / "other-model.pt")


def test_reencode_with_a_new_target_then_gc(tmp_path, local_ray, tiny_checkpoint):
    archive, keys = _archive(tmp_path, tiny_checkpoint)
    before = _current(archive)
    s = run_reencode(archive, "status = 'ok'", "qp", 3.0, model=tiny_checkpoint, source_prefix=str(tmp_path / "in"))
    assert s["selected"] == len(keys) - 1 and s["shards_failed"] == []
    after = _current(archive)
    assert set(after) == keys
    for k, r in after.items():
        if k == "broken":
            assert r["status"] == "error" and r["run_id"] == before[k]["run_id"]
            continue
        assert r["qp"] == 3.0 and r["run_id"] == s["run_id"] and r["bytes"] > before[k]["bytes"]
        assert r["encoded_from"] == "source" and r["source_sha256"] == before[k]["source_sha256"]
    all_rows = read_manifest(FS, archive)
    assert len(all_rows) == len(keys) + len(keys) - 1  # history kept
    # gc: the first run's shards are no longer referenced; within the retention they stay
    kept = gc_shards(archive, None, retention_hours=1.0)
    assert kept["deleted"] == [] and kept["kept_within_retention"]
    gone = gc_shards(archive, None, retention_hours=0.0)
    referenced = {r["tar_uri"] for r in after.values() if r["status"] == "ok"}
    assert gone["deleted"] and not set(gone["deleted"]) & referenced
    assert all(Path(u).exists() for u in referenced)
    # the current view still decodes completely after gc
    current_ok = {k: r for k, r in after.items() if r["status"] == "ok"}
    model = msinn.load(tiny_checkpoint)
    from msinn.decoding import decode_image

    for r in current_ok.values():
        with open(r["tar_uri"], "rb") as f:
            f.seek(r["offset"])
            assert decode_image(f.read(r["length"]), model).pixels.shape[:2] == (r["height"], r["width"])
    # the same selection again selects nothing: a no-op
    assert run_reencode(archive, "status = 'ok' AND qp < 3", "qp", 3.0, model=tiny_checkpoint)["selected"] == 0


def test_reencode_with_a_new_model_from_bitstreams(tmp_path, local_ray, tiny_checkpoint, other_checkpoint):
    archive, keys = _archive(tmp_path, tiny_checkpoint)
    for f in (tmp_path / "in").iterdir():  # the originals are gone: only the bitstreams remain
        f.unlink()
    new_hash = msinn.load(other_checkpoint).weights_sha256[:16]
    s = run_reencode(archive, f"status = 'ok' AND model_hash <> '{new_hash}'", "qp", 2.0,
                     model=other_checkpoint, source_mode="auto", decode_model=tiny_checkpoint)
    assert s["selected"] == len(keys) - 1
    after = _current(archive)
    ok = {k: r for k, r in after.items() if r["status"] == "ok"}
    assert set(ok) == keys - {"broken"}
    assert all(r["model"] == "other-model.pt" and r["encoded_from"] == "bitstream" for r in ok.values())
    assert all(r["model_hash"] == new_hash for r in ok.values())
    # with --from source and no originals, rows fail with a clear reason and the old rows stay current
    s2 = run_reencode(archive, "status = 'ok'", "qp", 1.0, model=other_checkpoint, source_mode="source",
                      source_prefix=str(tmp_path / "in"))
    assert s2["selected"] == len(ok)
    errs = [r for r in read_manifest(FS, archive) if r["run_id"] == s2["run_id"]]
    assert errs and all(r["status"] == "error" and "no input" in r["error"] for r in errs)
    assert {k: r["run_id"] for k, r in _current(archive).items() if k != "broken"} == {
        k: s["run_id"] for k in ok}


def _as_plan_of_earlier_versions(folder: Path) -> None:
    """Rewrite a frozen re-encode plan as versions before streamed plans wrote it: one plan.parquet."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.plan import read_frozen

    plan = read_frozen(str(folder), None)
    units = list(plan)
    table = pa.table({"unit_id": [u.unit_id for u in units], "rows": [[r.to_json() for r in u.rows] for u in units],
                      "input_bytes": [u.input_bytes for u in units]})
    buf = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({"msinn.reencode": json.dumps(plan.job)}), buf)
    for f in folder.iterdir():
        f.unlink()
    (folder / "plan.parquet").write_bytes(buf.getvalue())


def test_interrupted_reencode_resumes_exactly_once(tmp_path, local_ray, tiny_checkpoint, monkeypatch):
    from pipeline import plan

    monkeypatch.setattr(plan, "PART_UNITS", 2)
    archive, keys = _archive(tmp_path, tiny_checkpoint, n=5)
    first = run_reencode(archive, "status = 'ok'", "qp", 2.5, model=tiny_checkpoint, rows_per_shard=1, max_units=2)
    assert first["images_this_run"] == 2 and first["selected"] == len(keys - {"broken"}) == first["shards"]
    folder = Path(archive) / "_reencode" / first["run_id"]
    assert len(list(folder.glob("units-*.parquet"))) == 3 and (folder / "plan.json").exists()  # frozen in parts
    _as_plan_of_earlier_versions(folder)  # and a plan of an earlier version resumes the same
    second = run_reencode(archive, "status = 'ok'", "qp", 2.5, model=tiny_checkpoint, rows_per_shard=1)
    assert second["run_id"] == first["run_id"] and second["images_this_run"] == 3
    rows = [r for r in read_manifest(FS, archive) if r["run_id"] == first["run_id"]]
    assert sorted(r["key"] for r in rows) == sorted(keys - {"broken"})
    verify_keys = {r["key"] for r in rows}
    assert len(verify_keys) == len(rows)


def test_scheduled_spec(tmp_path, local_ray, tiny_checkpoint):
    archive, keys = _archive(tmp_path, tiny_checkpoint, n=2)
    spec = tmp_path / "job.toml"
    spec.write_text(
        f'archive = "{archive}"\nwhere = "status = \'ok\' AND qp < 2"\nmodel = "{tiny_checkpoint}"\n'
        f'source_prefix = "{tmp_path / "in"}"\ngc = true\nretention_hours = 0\n\n[target]\nkind = "qp"\nvalue = 2\n'
    )
    s = run_scheduled(spec)
    assert s["selected"] == 2 and s["gc"]["deleted"]
    again = run_scheduled(spec)
    assert again["selected"] == 0 and "no-op" in again["note"]
    bad = tmp_path / "bad.toml"
    bad.write_text('archive = "x"\n[target]\nkind = "size"\nvalue = 1\n')
    with pytest.raises(ValueError, match="target"):
        run_scheduled(bad)
    json.dumps(s)  # the summary is JSON-serialisable for the job log (raises if not)
    # a spec's where is one condition on the manifest: it cannot write a file of its author's choosing
    from pipeline.archive import ArchiveError

    hostile = tmp_path / "hostile.toml"
    script = tmp_path / "pwned.sh"
    hostile.write_text(
        f'archive = "{archive}"\nwhere = "1=1); COPY (SELECT \'echo pwned\') TO \'{script}\' (HEADER false); '
        'SELECT * FROM manifest WHERE (1=1"\n\n[target]\nkind = "qp"\nvalue = 2\n'
    )
    with pytest.raises(ArchiveError, match="invalid selection"):
        run_scheduled(hostile)
    assert not script.exists()


def test_reencode_and_verify_on_s3(s3_bucket, local_ray, tiny_checkpoint, capsys):
    from pipeline.cli import main
    fs, bucket = s3_bucket
    for i in range(3):
        fs.pipe(f"{bucket}/in/{i}.png", png_bytes(500 + i))
    src, out = f"s3://{bucket}/in", f"s3://{bucket}/arch"
    opts = {}
    run_job(JobSpec(input=src, output=out, target_kind="qp", target_value=1.0, model=tiny_checkpoint,
                    input_options=opts, output_options=opts), actors=1)
    first = {r["tar_uri"].rsplit("/", 1)[1] for r in _current_s3(out, opts).values()}
    assert main(["reencode", out, "--where", "qp < 2", "--qp", "2", "--model", tiny_checkpoint, "--source-prefix",
                 src]) == 0
    assert json.loads(capsys.readouterr().out)["selected"] == 3
    fs.invalidate_cache()
    in_use = {r["tar_uri"].rsplit("/", 1)[1] for r in _current_s3(out, opts).values()}
    for spelled in (f"{out}/", f"s3://{bucket}/in/../arch", f"s3://{bucket}/./arch"):  # other spellings, same shards
        res = gc_shards(spelled, opts, retention_hours=0.0, dry_run=True)
        assert "refused" not in res and {u.rsplit("/", 1)[1] for u in res["deleted"]} == first - in_use, spelled
    assert main(["reencode", out, "--where", "qp < 2", "--qp", "2", "--model", tiny_checkpoint, "--gc",
                 "--retention-hours", "0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["selected"] == 0 and summary["gc"]["deleted"]
    fs.invalidate_cache()
    current = _current_s3(out, opts)
    assert {r["qp"] for r in current.values()} == {2.0} and len(current) == 3
    assert main(["verify", out, "--model", tiny_checkpoint]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 3


def _current_s3(archive: str, opts: dict) -> dict[str, dict]:
    return {r["key"]: r for r in select(connect(archive, opts), None)}


def test_float_archive_migrates_to_the_portable_profile_from_its_bitstreams(
    tmp_path, local_ray, tiny_float_checkpoint, tiny_checkpoint
):
    """Today's float32 files: decoded with the numerics they record, re-encoded as portable-1."""
    archive, keys = _archive(tmp_path, tiny_float_checkpoint, n=3)
    before = {k: r for k, r in _current(archive).items() if r["status"] == "ok"}
    assert {r["profile"] for r in before.values()} == {"float32"}
    assert all("threads=" in r["numerics"] for r in before.values())
    for f in (tmp_path / "in").iterdir():  # only the bitstreams remain
        f.unlink()
    s = run_reencode(archive, "profile = 'float32' AND status = 'ok'", "qp", 1.0, model=tiny_checkpoint,
                     source_mode="auto", decode_model=tiny_float_checkpoint)
    assert s["selected"] == len(before) and s["shards_failed"] == []
    after = _current(archive)
    assert all(after[k]["profile"] == "portable-1" and after[k]["encoded_from"] == "bitstream" for k in before)
    assert all(after[k]["numerics"] is None for k in before)
    assert run_reencode(archive, "profile = 'float32' AND status = 'ok'", "qp", 1.0,
                        model=tiny_checkpoint)["selected"] == 0


def test_manifests_from_before_profiles_read_as_float32(tmp_path):
    """Shards written before the profile column existed: their rows are float32 files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.manifest import SCHEMA

    old = pa.schema([f for f in SCHEMA if f.name not in ("profile", "numerics")])
    (tmp_path / "arch" / "manifest").mkdir(parents=True)
    row = {"key": "a", "status": "ok", "run_id": "r1", "model": "m", "bytes": 10}
    pq.write_table(pa.Table.from_pylist([row], schema=old), tmp_path / "arch" / "manifest" / "part-000000.parquet")
    rows = select(connect(str(tmp_path / "arch")), "profile = 'float32'")
    assert [r["key"] for r in rows] == ["a"] and rows[0]["numerics"] is None
    new = {**row, "key": "b", "profile": "portable-1"}
    pq.write_table(pa.Table.from_pylist([new], schema=SCHEMA), tmp_path / "arch" / "manifest" / "part-000001.parquet")
    con = connect(str(tmp_path / "arch"))
    assert {r["key"]: r["profile"] for r in select(con, None)} == {"a": "float32", "b": "portable-1"}


@pytest.mark.parametrize("spelling", ["relative", "dot", "file-uri", "trailing-slash", "dotdot"])
def test_gc_matches_shards_whatever_the_archive_spelling(tmp_path, local_ray, tiny_checkpoint, monkeypatch, spelling):
    """Written as ./arch or /x/./arch, collected as file:///x/arch/: shards in use are never garbage."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    for i in range(2):
        (tmp_path / "in" / f"x{i}.png").write_bytes(png_bytes(410 + i))
    run_job(JobSpec(input="./in", output="./arch", target_kind="qp", target_value=1.0, model=tiny_checkpoint,
                    shard_bytes=12_000), actors=1)
    # written where the driver meant (workers run elsewhere), in one canonical spelling
    assert _current("./arch")["x0"]["tar_uri"] == str(tmp_path / "arch" / "bitstreams" / "part-000000.tar")
    # archives written before URIs were canonical recorded ./arch/...: rewrite the rows that way
    import pyarrow.parquet as pq

    from pipeline.manifest import to_parquet

    for m in (tmp_path / "arch" / "manifest").iterdir():
        rows = pq.read_table(m).to_pylist()
        for r in rows:
            if r["tar_uri"]:
                r["tar_uri"] = "./arch/bitstreams/" + r["tar_uri"].rsplit("/", 1)[1]
        m.write_bytes(to_parquet(rows))
    spelled = {
        "relative": "arch",
        "dot": str(tmp_path / "." / "arch"),
        "file-uri": f"file://{tmp_path}/arch",
        "trailing-slash": f"{tmp_path}/arch/",
        "dotdot": str(tmp_path / "in" / ".." / "arch"),
    }[spelling]
    in_use = {r["tar_uri"].rsplit("/", 1)[1] for r in _current("./arch").values() if r["status"] == "ok"}
    res = gc_shards(spelled, None, retention_hours=0.0, dry_run=True)
    assert "refused" not in res and res["deleted"] == []
    assert {p.name for p in (tmp_path / "arch" / "bitstreams").iterdir()} == in_use


def test_gc_refuses_when_rows_reference_shards_it_cannot_find(tmp_path, local_ray, tiny_checkpoint):
    archive, _ = _archive(tmp_path, tiny_checkpoint, n=2)
    run_reencode(archive, "status = 'ok'", "qp", 2.0, model=tiny_checkpoint,
                 source_prefix=str(tmp_path / "in"))  # the first shards become garbage
    # the wrong root (a copy holding only the manifests): everything looks unreferenced, nothing may go
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    for p in (copy / "bitstreams").iterdir():
        if p.name in {r["tar_uri"].rsplit("/", 1)[1] for r in _current(archive).values() if r["status"] == "ok"}:
            p.unlink()
    res = gc_shards(str(copy), None, retention_hours=0.0)
    assert "refused" in res and "not under" in res["refused"] and res["deleted"] == []
    assert any((copy / "bitstreams").iterdir())
    # a row naming something that is not a shard of the archive: refused as well
    bad = tmp_path / "bad"
    shutil.copytree(archive, bad)
    import pyarrow.parquet as pq

    m = sorted((bad / "manifest").iterdir())[-1]
    t = pq.read_table(m).to_pylist()
    for r in t:
        if r["status"] == "ok":
            r["tar_uri"] = "/etc/hostname"
    from pipeline.manifest import to_parquet

    m.write_bytes(to_parquet(t))
    res = gc_shards(str(bad), None, retention_hours=0.0)
    assert "refused" in res and "tar_uri" in res["refused"] and res["deleted"] == []


def test_manifests_from_before_codec_choice_read_as_msinn_files(tmp_path):
    """Shards without the codec columns: their ok rows are .msinn files, their error rows have no codec."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.manifest import SCHEMA

    old = pa.schema([f for f in SCHEMA if f.name not in ("codec", "pixel_hash", "codec_params", "effort")])
    (tmp_path / "arch" / "manifest").mkdir(parents=True)
    rows = [{"key": "a", "status": "ok", "run_id": "r1", "bytes": 10}, {"key": "b", "status": "error", "run_id": "r1"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=old), tmp_path / "arch" / "manifest" / "part-000000.parquet")
    got = {r["key"]: r for r in select(connect(str(tmp_path / "arch")), None)}
    assert got["a"]["codec"] == "msinn" and got["b"]["codec"] is None
    assert got["a"]["pixel_hash"] is None and got["a"]["effort"] is None


def test_an_archive_migrates_between_codec_sets_and_every_codec_verifies(tmp_path, local_ray, tiny_checkpoint, capsys):
    """msinn rows re-encoded to AVIF, AVIF rows back through their decoded files; verify, restore, stats, gc."""
    import io
    import shutil
    import tarfile

    import numpy as np
    from PIL import Image

    from msinn.container import image_digest
    from pipeline.cli import main

    archive, keys = _archive(tmp_path, tiny_checkpoint, n=3)
    s = run_reencode(archive, "key IN ('x0', 'x1')", "psnr", 30.0, model=tiny_checkpoint, codecs="avif",
                     source_prefix=str(tmp_path / "in"))
    assert s["selected"] == 2 and s["shards_failed"] == []
    cur = _current(archive)
    assert {k: cur[k]["codec"] for k in ("x0", "x1", "x2")} == {"x0": "avif", "x1": "avif", "x2": "msinn"}
    for k in ("x0", "x1"):
        r = cur[k]
        assert r["psnr"] >= 30.0 and r["target_met"] and r["probes"] >= 2 and r["model"] is None
        assert "libavif" in r["codec_version"] and "tune=psnr" in r["codec_params"] and r["profile"] is None
        with tarfile.open(r["tar_uri"]) as tf:  # a plain AVIF file under <key>.avif, whatever opens AVIF opens it
            member = tf.extractfile(f"{k}.avif").read()
        assert len(member) == r["bytes"]
        assert image_digest(np.asarray(Image.open(io.BytesIO(member)).convert("RGB"))) == r["pixel_hash"]
    assert cur["x2"]["pixel_hash"] and cur["x2"]["codec_version"] == msinn.__version__
    # verify decodes every codec in Ray tasks and checks each against its recorded pixel hash
    assert main(["verify", archive, "--model", tiny_checkpoint]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 3
    assert main(["restore", archive, str(tmp_path / "out"), "--model", tiny_checkpoint]) == 0
    capsys.readouterr()
    restored = np.asarray(Image.open(tmp_path / "out" / "x0.png"))
    assert image_digest(restored) == cur["x0"]["pixel_hash"]
    assert main(["stats", archive, "--json"]) == 0
    per_codec = {r["name"]: r for r in json.loads(capsys.readouterr().out)["per_codec"]}
    assert per_codec["avif"]["images"] == 2 and per_codec["msinn"]["images"] == 1
    assert per_codec["avif"]["share"] == pytest.approx(2 / 3)
    # a decoder that disagrees with the one that wrote the file is caught, naming the row and the libraries
    copy = tmp_path / "copy"
    shutil.copytree(archive, copy)
    import pyarrow.parquet as pq

    for part in (copy / "manifest").glob("*.parquet"):
        t = pq.read_table(part).to_pylist()
        for r in t:
            if r["key"] == "x1" and r["codec"] == "avif":
                r["pixel_hash"] = "0" * 16
        from pipeline.manifest import to_parquet

        part.write_bytes(to_parquet(t))
    # and an AVIF member damaged in its shard fails with its key and the cause, never silently
    r0 = cur["x0"]
    tar = copy / "bitstreams" / Path(r0["tar_uri"]).name
    blob = bytearray(tar.read_bytes())
    blob[r0["offset"] + r0["length"] // 2: r0["offset"] + r0["length"] // 2 + 64] = bytes(64)
    tar.write_bytes(bytes(blob))
    assert main(["verify", str(copy), "--model", tiny_checkpoint]) == 1
    bad = {m["key"]: m["error"] for m in json.loads(capsys.readouterr().out)["mismatches"]}
    assert set(bad) == {"x0", "x1"}
    assert "differ from those recorded" in bad["x1"] and "libavif" in bad["x1"]
    assert "x0" in bad["x0"] and ("does not decode" in bad["x0"] or "differ from those recorded" in bad["x0"])
    # back to the model (and AVIF), from the decoded AVIF files alone
    for f in (tmp_path / "in").iterdir():
        f.unlink()
    s = run_reencode(archive, "codec = 'avif'", "qp", 1.0, model=tiny_checkpoint, codecs="msinn,avif",
                     source_mode="auto")
    assert s["selected"] == 2 and s["shards_failed"] == []
    cur = _current(archive)
    assert all(cur[k]["encoded_from"] == "bitstream" and cur[k]["codec"] in ("msinn", "avif") for k in ("x0", "x1"))
    assert main(["verify", archive, "--model", tiny_checkpoint]) == 0
    capsys.readouterr()
    # gc removes the shards no current row needs, whatever their members' formats; the plot shows every codec
    assert gc_shards(archive, None, retention_hours=0.0)["deleted"]
    assert main(["verify", archive, "--model", tiny_checkpoint]) == 0
    assert main(["stats", archive, "--plot", str(tmp_path / "dist.png")]) == 0
    assert Image.open(tmp_path / "dist.png").size[0] > 100
