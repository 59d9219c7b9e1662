"""The manifest row type and the schema stay one thing; statistics read it one way."""

from __future__ import annotations

import pytest

from pipeline.archive import connect_tables
from pipeline.manifest import COLUMNS, RESULT_FIELDS, ROW_FIELDS, ManifestRow, from_parquet, to_parquet
from pipeline.stats import run_stats


def test_the_row_type_has_exactly_the_schemas_columns():
    assert ROW_FIELDS == tuple(COLUMNS)
    assert set(RESULT_FIELDS) < set(COLUMNS)


def test_a_misspelled_column_is_an_error_not_a_null():
    with pytest.raises(ValueError, match="psnrr"):
        to_parquet([{"key": "a", "status": "ok", "psnrr": 30.0}])


def test_a_failed_row_carries_no_result_figures():
    row = ManifestRow(key="a", status="ok", bytes=100, bpp=0.5, tar_uri="x/bitstreams/part-0.tar", source_bytes=7)
    row.fail("bad image: truncated")
    assert (row.status, row.error, row.bytes, row.bpp, row.tar_uri) == ("error", "bad image: truncated", None, None,
                                                                       None)
    assert row.source_bytes == 7  # what is known of the input stays


def test_run_statistics_over_no_committed_shard_and_over_some():
    empty = run_stats(connect_tables([]), "r")
    assert (empty["images"], empty["ok"], empty["bytes_out"], empty["mean_bpp"], empty["models"]) == (0, 0, 0, None,
                                                                                                      [])
    rows = [ManifestRow(key="a", status="ok", bytes=10, bpp=0.5, run_id="r", model="m", target_met=True),
            ManifestRow(key="b", run_id="r").fail("bad image: x"), ManifestRow(key="c", run_id="other").fail("y")]
    s = run_stats(connect_tables([from_parquet(to_parquet(rows))]), "r")
    assert (s["images"], s["ok"], s["errors"], s["bytes_out"], s["target_met"], s["models"]) == (2, 1, 1, 10, 1, ["m"])
    assert s["errors_by_cause"] == {"bad image": 1}


def test_a_run_summary_reads_shards_one_at_a_time_into_a_spilling_database(tmp_path):
    """Only the summary's columns, one shard at a time, into a DuckDB file: the same statistics as whole shards."""
    from pipeline.runner import SUMMARY_COLUMNS

    shards = []
    for i in range(12):
        rows = [ManifestRow(key=f"k{i}-{j}", status="ok", bytes=100 + j, bpp=0.1 * j, psnr=30.0 + j, run_id="r",
                            model="m", target_met=j % 2 == 0, source_bytes=1000) for j in range(5)]
        rows.append(ManifestRow(key=f"bad{i}", run_id="r", source_bytes=5).fail("bad image: truncated"))
        shards.append(to_parquet(rows))
    whole = run_stats(connect_tables([from_parquet(s) for s in shards]), "r")
    pulled = []

    def one_at_a_time():
        for s in shards:
            pulled.append(1)
            yield from_parquet(s, SUMMARY_COLUMNS)

    con = connect_tables(one_at_a_time(), str(tmp_path / "rows.duckdb"))
    assert len(pulled) == 12 and (tmp_path / "rows.duckdb").exists()
    assert run_stats(con, "r") == whole
    assert whole["images"] == 72 and whole["ok"] == 60 and whole["bytes_in"] == 12 * 5005
    con.close()
