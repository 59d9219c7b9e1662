"""Stats, queries, restore and verify over archives on local files and S3 (moto)."""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path

import fsspec
import numpy as np
import pytest
from PIL import Image
from pipeline_helpers import corrupt_bytes, png_bytes, read_manifest

import msinn
from msinn.decoding import decode_image
from pipeline.cli import main
from pipeline.runner import run_job
from pipeline.spec import JobSpec


@pytest.fixture(scope="module")
def archive(tmp_path_factory, local_ray, tiny_checkpoint) -> Path:
    root = tmp_path_factory.mktemp("arch")
    (root / "in" / "sub").mkdir(parents=True)
    for i in range(5):
        (root / "in" / "sub" / f"k{i}.png").write_bytes(png_bytes(200 + i, mode="L" if i == 2 else "RGB"))
    (root / "in" / "bad.png").write_bytes(corrupt_bytes()["text"])
    run_job(JobSpec(input=str(root / "in"), output=str(root / "out"), target_kind="qp", target_value=2.0,
                    model=tiny_checkpoint, shard_bytes=8_000), actors=1)
    return root / "out"


def _mean_in_key_order(rows: list[dict], col: str) -> float:
    """The mean as stats defines it: the values added one by one in (key, value) order, then divided."""
    values = [v for _, v in sorted((r["key"], r[col]) for r in rows)]
    return functools.reduce(operator.add, values) / len(values)


def _independent_stats(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "images": len(rows),
        "ok": len(ok),
        "errors": len(rows) - len(ok),
        "bytes_in": sum(r["source_bytes"] or 0 for r in rows),
        "bytes_out": sum(r["bytes"] for r in ok),
        "mean_bpp": _mean_in_key_order(ok, "bpp"),
        "mean_psnr": _mean_in_key_order(ok, "psnr"),
    }


def test_stats_match_independent_computation(archive, capsys):
    assert main(["stats", str(archive), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    expected = _independent_stats(read_manifest(fsspec.filesystem("file"), str(archive)))
    for k, v in expected.items():
        assert s[k] == pytest.approx(v), k
    assert s["errors_by_cause"] == {"bad image": 1}
    assert s["bpp_p5"] <= s["bpp_p50"] <= s["bpp_p95"]
    assert s["compression_ratio"] == pytest.approx(expected["bytes_in"] / expected["bytes_out"])
    assert [m["name"] for m in s["per_model"]] == ["tiny-test.pt"] and len(s["per_run"]) == 1


def test_stats_csv(archive, capsys):
    assert main(["stats", str(archive), "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "statistic,value"
    values = dict(line.split(",", 1) for line in lines[1:])
    assert int(values["images"]) == 6 and int(values["errors_by_cause.bad image"]) == 1
    assert any(k.startswith("per_model.tiny-test.pt.") for k in values)


def test_stats_table_and_plot(archive, tmp_path, capsys):
    plot = tmp_path / "dist.png"
    assert main(["stats", str(archive), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "compression ratio" in out and "bad image" in out
    assert Image.open(plot).size[0] > 100


@pytest.mark.parametrize("fmt", ["table", "json", "csv"])
def test_query(archive, capsys, fmt):
    rows = read_manifest(fsspec.filesystem("file"), str(archive))
    expected = sum(1 for r in rows if r["status"] == "ok" and r["width"] == 72)
    assert main(["query", str(archive), "SELECT count(*) AS n FROM manifest WHERE status = 'ok' AND width = 72",
                 "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        assert json.loads(out) == [{"n": expected}]
    else:
        assert str(expected) in out.splitlines()[-1 if fmt == "table" else 1]
    assert main(["query", str(archive), "SELECT count(*) FROM all_rows", "--format", "json"]) == 0
    assert list(json.loads(capsys.readouterr().out)[0].values()) == [len(rows)]


def test_bad_query_and_missing_archive(archive, tmp_path, capsys):
    assert main(["query", str(archive), "SELECT nonsense FROM manifest"]) == 2
    assert "query failed" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "nothing")]) == 2


def test_restore_round_trip(archive, tmp_path, tiny_checkpoint, capsys):
    dest = tmp_path / "restored"
    assert main(["restore", str(archive), str(dest), "--where", "key LIKE 'sub/%'", "--model", tiny_checkpoint]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["selected"] == 5 and report["restored"] == 5 and report["failed"] == []
    model = msinn.load(tiny_checkpoint)
    fs = fsspec.filesystem("file")
    for r in read_manifest(fs, str(archive)):
        if r["status"] != "ok":
            continue
        img = Image.open(dest / f"{r['key']}.png")
        with open(r["tar_uri"], "rb") as f:
            f.seek(r["offset"])
            expected = decode_image(f.read(r["length"]), model)
        assert img.mode == expected.mode
        assert np.array_equal(np.asarray(img), expected.pixels)
    assert (dest / "sub" / "k2.png").exists() and Image.open(dest / "sub" / "k2.png").mode == "L"
    assert not (dest / "bad.png").exists()


def test_verify_catches_an_altered_shard(archive, tmp_path, tiny_checkpoint, capsys):
    rows = [r for r in read_manifest(fsspec.filesystem("file"), str(archive)) if r["status"] == "ok"]
    victim = rows[1]
    tar = Path(victim["tar_uri"])
    backup = tar.read_bytes()
    try:
        data = bytearray(backup)
        data[victim["offset"] + victim["length"] // 2] ^= 0x40
        tar.write_bytes(bytes(data))
        assert main(["verify", str(archive), "--model", tiny_checkpoint]) == 1
        report = json.loads(capsys.readouterr().out)
        assert report["checked"] == len(rows) and [m["key"] for m in report["mismatches"]] == [victim["key"]]
        assert "checksum" in report["mismatches"][0]["error"]
    finally:
        tar.write_bytes(backup)
    assert main(["verify", str(archive), "--sample", "2", "--model", tiny_checkpoint]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == 2 and report["mismatches"] == []


def test_stats_and_restore_on_s3(s3_bucket, local_ray, tiny_checkpoint, tmp_path, capsys):
    fs, bucket = s3_bucket
    for i in range(3):
        fs.pipe(f"{bucket}/in/{i}.png", png_bytes(300 + i))
    src, out = f"s3://{bucket}/in", f"s3://{bucket}/arch"
    run_job(JobSpec(input=src, output=out, target_kind="qp", target_value=1.0, model=tiny_checkpoint,
                    input_options={},
                    output_options={}), actors=1)
    assert main(["stats", out, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    fs.invalidate_cache()
    assert s["images"] == 3 and s == {**s, **_independent_stats(read_manifest(fs, f"{bucket}/arch"))}
    assert main(["restore", out, f"s3://{bucket}/restored", "--model", tiny_checkpoint]) == 0
    capsys.readouterr()
    fs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(f"{bucket}/restored")) == ["0.png", "1.png", "2.png"]


def test_restore_mixed_models_each_row_takes_the_checkpoint_holding_its_weights(
    archive, tmp_path, tiny_checkpoint, tiny_model
):
    """An archive written by two models (one not bundled any more) restores in one command."""
    import copy

    import torch
    from conftest import save_portable_copy

    from pipeline.bitstreams import read_member
    from pipeline.restore import decode_rows

    other_model = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(other_model.parameters()).add_(0.01)  # other weights, same shape
    other = save_portable_copy(other_model, tmp_path / "tiny-other.pt")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.png").write_bytes(png_bytes(300))
    run_job(JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp", target_value=1.0,
                    model=str(other)), actors=1)
    fs = fsspec.filesystem("file")
    rows = [dict(r, archive_root=str(archive)) for r in read_manifest(fs, str(archive)) if r["status"] == "ok"][:2]
    rows += [dict(r, archive_root=str(tmp_path / "out")) for r in read_manifest(fs, str(tmp_path / "out"))]
    assert len({r["model_hash"] for r in rows}) == 2

    for given in ([str(other), tiny_checkpoint], [tiny_checkpoint, str(other)]):
        results = decode_rows(rows, None, given, dest=str(tmp_path / "dest"))
        assert [r["ok"] for r in results] == [True, True, True], results
    expected = decode_image(read_member(rows[2], None), msinn.load(str(other)))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dest" / "x.png")), expected.pixels)
    # Only the first model given: its rows restore, the other row says which weights it needs.
    results = decode_rows(rows, None, [tiny_checkpoint])
    assert [r["ok"] for r in results] == [True, True, False]
    assert "none of the given models" in results[2]["error"] and rows[2]["model_hash"] in results[2]["error"]


def test_manifest_rows_cannot_point_outside_the_archive_or_name_models_to_load(archive, tmp_path, tiny_checkpoint):
    """tar_uri names a shard under the archive root, model a registered name: nothing else is followed."""
    from pipeline.bitstreams import UntrustedReference, read_member, shard_uri
    from pipeline.restore import decode_rows

    fs = fsspec.filesystem("file")
    row = dict(next(r for r in read_manifest(fs, str(archive)) if r["status"] == "ok"), archive_root=str(archive))
    # a relocated archive: the row's shard is found under the root given, whatever its tar_uri spelled
    assert shard_uri("s3://b/moved", row["tar_uri"]) == "s3://b/moved/bitstreams/" + row["tar_uri"].rsplit("/", 1)[1]
    assert len(read_member(row, None)) == row["length"]
    for bad in ("/etc/hostname", "../../etc/bitstreams/part-0.tar/..", "http://127.0.0.1:9/bitstreams/x.tar",
                str(archive / "manifest" / "part-000000.parquet")):
        with pytest.raises(UntrustedReference, match="tar_uri"):
            read_member(dict(row, tar_uri=bad), None)
    with pytest.raises(UntrustedReference, match="offset"):
        read_member(dict(row, length=-5), None)
    # a model that is a path or URL in the manifest is not loaded; the user's --model still works
    for name in (tiny_checkpoint, "http://127.0.0.1:9/m.pt"):
        res = decode_rows([dict(row, model=name, model_hash="0123456789abcdef")], None, None)
        assert not res[0]["ok"] and "not a registered model" in res[0]["error"]
    assert decode_rows([row], None, [tiny_checkpoint])[0]["ok"]


@pytest.mark.parametrize("where", [
    "1=1); COPY (SELECT 42) TO 'PWNED' (FORMAT csv); SELECT * FROM manifest WHERE (1=1",
    "key IN (SELECT column0 FROM read_csv('/etc/hostname'))",
    "1=0) UNION ALL SELECT * FROM all_rows WHERE (1=1",
    "1=1); ATTACH 'PWNED.db' AS x; SELECT * FROM manifest WHERE (1=1",
    "1=1); SET enable_external_access=true; SELECT * FROM manifest WHERE (1=1",
])
def test_a_where_predicate_is_one_condition_on_the_manifest(archive, tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(tmp_path)
    for cmd in (["verify", str(archive)], ["restore", str(archive), str(tmp_path / "dest")]):
        assert main([*cmd, "--where", where]) == 2
        assert "invalid selection" in capsys.readouterr().err
    assert not list(tmp_path.glob("PWNED*")) and not (tmp_path / "dest").exists()


def test_locked_connections_read_the_archive_only(archive, tmp_path):
    from pipeline.archive import ArchiveError, connect, query, select

    con = connect(str(archive))
    assert select(con, "bpp > 0") and query(con, "SELECT count(*) FROM all_rows")[1][0][0] > 0
    for sql in (f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", "SELECT * FROM read_csv('/etc/hostname')",
                "SET enable_external_access=true"):
        with pytest.raises(ArchiveError):
            query(con, sql)
    assert not (tmp_path / "x.csv").exists()


def test_secrets_never_ride_on_the_command_line(archive, tmp_path, capsys):
    """Inline storage options holding a secret are refused (Ray keeps every job's command line); @FILE works."""
    from pipeline.storage_options import redact

    secret = {"key": "AKIAEXAMPLE", "secret": "wJalrXUtnFEMI", "client_kwargs": {"region_name": "us-east-1"}}
    with pytest.raises(SystemExit):
        main(["stats", str(archive), "--storage-options", json.dumps(secret)])
    err = capsys.readouterr().err
    assert "@FILE" in err and "wJalrXUtnFEMI" not in err
    opts = tmp_path / "opts.json"
    opts.write_text(json.dumps({"auto_mkdir": True}))
    assert main(["stats", str(archive), "--json", "--storage-options", f"@{opts}"]) == 0
    assert main(["stats", str(archive), "--json", "--storage-options", '{"auto_mkdir": true}']) == 0
    assert "wJalrXUtnFEMI" not in json.dumps(redact(secret))


def test_decoding_streams_batches_with_few_tasks_in_flight(archive, tiny_checkpoint, monkeypatch):
    """Rows come from the manifest in batches and at most `in_flight` tasks wait at once, whatever the size."""
    import ray

    from pipeline.archive import connect, iter_select
    from pipeline.restore import run_decode_jobs

    batches = [[dict(r, archive_root=str(archive)) for r in b]
               for b in iter_select(connect(str(archive)), "status = 'ok'", batch=2)]
    assert len(batches) >= 3 and all(len(b) <= 2 for b in batches)
    most = []
    real_wait = ray.wait

    def counting_wait(refs, **kw):
        most.append(len(refs))
        return real_wait(refs, **kw)

    monkeypatch.setattr(ray, "wait", counting_wait)
    report = run_decode_jobs(iter(batches), None, tiny_checkpoint, "cpu", None, None, "png", chunk=1, in_flight=2)
    assert report.checked == sum(len(b) for b in batches) and report.failed == []
    assert most and max(most) <= 2
