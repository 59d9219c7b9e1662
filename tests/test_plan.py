"""Planning: a sorted listing streamed into units and frozen a part at a time, never held whole."""

from __future__ import annotations

import logging
import random
import tracemalloc

import pytest

from pipeline import listing, plan, storage
from pipeline.keys import file_key
from pipeline.plan import ListingOrderError, Plan, freeze_plan, iter_units, plan_input, read_plan
from pipeline.readahead import read_ahead


def synthetic_listing(n: int, root: str = "/data/in", pulled: list | None = None):
    """n loose images of 100 bytes under root, in sorted order, made as they are asked for."""
    for i in range(n):
        if pulled is not None:
            pulled.append(i)
        yield f"{root}/d{i // 1000:05d}/img{i % 1000:04d}.png", 100


def test_files_of_one_key_share_a_unit_however_the_listing_interleaves_them():
    """Random names over a tiny alphabet (dots, slashes): every key's files in one unit, cut wherever else."""
    rng = random.Random(7)
    root = "/r"
    for trial in range(200):
        names = set()
        for _ in range(rng.randint(1, 40)):
            stem = "".join(rng.choice("ab./") for _ in range(rng.randint(1, 6))).strip("/").replace("//", "/")
            if not stem or stem.startswith(".") or "/." in stem or stem.endswith("."):
                continue
            names.add(f"{root}/{stem}.{rng.choice(['png', 'jpg'])}")
        listing = sorted((n, 10) for n in names)
        if not listing:
            continue
        units = list(iter_units(listing, root, shard_bytes=1))
        unit_of = {}
        for u in units:
            for uri in u.uris:
                assert uri not in unit_of
                unit_of[uri] = u.unit_id
        assert set(unit_of) == names  # every file planned once
        by_key: dict[str, set[str]] = {}
        for uri in names:
            by_key.setdefault(file_key(uri, root), set()).add(unit_of[uri])
        split = {k: v for k, v in by_key.items() if len(v) > 1}
        assert not split, f"trial {trial}: keys split across units: {split}"
    # files whose names share no key prefix are cut at every file when each one fills a shard
    distinct = [(f"/r/{c}.png", 10) for c in "abcdefg"]
    assert len(list(iter_units(distinct, "/r", shard_bytes=1))) == 7
    # a.gif, a.h.png, a.png: a.h.png sorts between the two files of key "a", which still meet
    meet = list(iter_units(sorted([("/r/a.gif", 5), ("/r/a.h.png", 5), ("/r/a.png", 5), ("/r/b.png", 5)]), "/r",
                           shard_bytes=1))
    assert [u.uris for u in meet] == [("/r/a.gif", "/r/a.h.png", "/r/a.png"), ("/r/b.png",)]


def test_units_stream_out_before_the_listing_ends():
    """The first unit is out after about one shard's worth of listing, not after the whole listing."""
    pulled: list[int] = []
    units = iter_units(synthetic_listing(1_000_000, pulled=pulled), "/data/in", shard_bytes=10_000)
    first = next(units)
    assert len(first.uris) == 100 and len(pulled) <= 101
    second = next(units)
    assert second.uris[0] > first.uris[-1] and len(pulled) <= 202


def test_freezing_a_big_listing_holds_a_part_not_the_listing(tmp_path, monkeypatch):
    """Peak memory while freezing 100,000 files stays a small fraction of holding their listing."""
    monkeypatch.setattr(plan, "PART_ITEMS", 10_000)
    n = 100_000
    # once untraced first: the first freeze in a process imports and initialises pyarrow's writers (tens of MB, paid
    # once whatever the listing), which would count against the listing when this test runs alone
    freeze_plan(str(tmp_path / "warm" / "_plan"), iter_units(synthetic_listing(2_000), "/data/in", shard_bytes=50_000),
                {"input": "/data/in"}, None)
    tracemalloc.start()
    held = list(synthetic_listing(n))
    _, listing_peak = tracemalloc.get_traced_memory()
    del held
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    frozen = freeze_plan(str(tmp_path / "out" / "_plan"), iter_units(synthetic_listing(n), "/data/in",
                                                                     shard_bytes=50_000),
                         {"input": "/data/in"}, None)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(frozen) == n // 500 and frozen.input_bytes == n * 100 and len(frozen.parts) == 10 and frozen.items == n
    assert peak - before < listing_peak / 4, (peak - before, listing_peak)
    again = read_plan(str(tmp_path / "out"), None)
    assert again is not None and len(again) == len(frozen) and again.job == {"input": "/data/in"}
    units = list(again)
    assert [u.unit_id for u in units] == [f"{i:06d}" for i in range(n // 500)]
    assert sum(len(u.uris) for u in units) == n and units[-1].uris[-1] == f"/data/in/d{(n - 1) // 1000:05d}/img0999.png"


def test_a_listing_that_dies_half_way_leaves_no_frozen_plan(tmp_path, monkeypatch):
    monkeypatch.setattr(plan, "PART_ITEMS", 1_000)

    def dying():
        yield from synthetic_listing(5_000)
        raise ConnectionError("listing broke")

    out = str(tmp_path / "out")
    with pytest.raises(ConnectionError):
        freeze_plan(out + "/_plan", iter_units(dying(), "/data/in", shard_bytes=10_000), {}, None)
    assert list((tmp_path / "out" / "_plan").iterdir())  # parts were written as the listing streamed
    assert read_plan(out, None) is None  # but no plan is frozen: the next run lists again
    frozen = freeze_plan(out + "/_plan", iter_units(synthetic_listing(3_000), "/data/in", shard_bytes=10_000), {},
                         None)
    assert len(read_plan(out, None)) == len(frozen) == 30


def tricky_tree(root):
    names = ["a.png", "a-b.png", "a/x.png", "a.b/y.png", "a0.png", "b/c/d.png", "b.png", "B.png", "z.tar", "n.txt"]
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * (len(n) + 1))
    return names


def test_a_folder_walk_lists_in_sorted_uri_order(tmp_path):
    tricky_tree(tmp_path / "in")
    walked = list(listing.iter_file_sizes(str(tmp_path / "in"), None))
    assert walked == sorted(listing.file_sizes(str(tmp_path / "in"), None).items())
    assert len(walked) == 10 and walked[0][0].endswith("/B.png")
    single = list(listing.iter_file_sizes(str(tmp_path / "in" / "z.tar"), None))
    assert single == [(str(tmp_path / "in" / "z.tar"), 6)]


def test_an_s3_prefix_is_listed_flat_a_page_at_a_time(s3_bucket, monkeypatch):
    """Pages pulled through s3fs's own iterator, in key order, and only under the prefix (not 'in' + 'put/')."""
    fs, bucket = s3_bucket
    names = ["a.png", "a-b.png", "a/x.png", "a.b/y.png", "a0.png", "b/c/d.png", "b.png", "B.png", "z.tar"]
    for n in names:
        fs.pipe(f"{bucket}/in/{n}", b"x" * len(n))
    fs.pipe(f"{bucket}/input/other.png", b"no")
    monkeypatch.setattr(listing, "LIST_PAGE", 4)
    listed = list(listing.iter_file_sizes(f"s3://{bucket}/in", None))
    assert [u for u, _ in listed] == sorted(f"s3://{bucket}/in/{n}" for n in names)
    assert dict(listed)[f"s3://{bucket}/in/a.b/y.png"] == len("a.b/y.png")
    frozen = plan_input(f"s3://{bucket}/in", None, "auto", 1, f"s3://{bucket}/out", {"j": 1}, None)
    assert len(frozen) == 9  # 8 loose images each alone (shard_bytes=1) and one tar
    units = list(read_plan(f"s3://{bucket}/out", None))
    assert {u.kind for u in units} == {"files", "tar"} and sum(len(u.uris) for u in units) == 9


def test_a_store_that_lists_out_of_order_is_planned_from_a_sorted_listing(tmp_path, monkeypatch, caplog):
    tricky_tree(tmp_path / "in")

    def shuffled(uri, options, on_skip=None):
        items = list(listing.file_sizes(uri, options).items())
        random.Random(1).shuffle(items)
        yield from items
        raise AssertionError("the out-of-order listing was read to its end")

    with pytest.raises(ListingOrderError):
        list(iter_units(shuffled(str(tmp_path / "in"), None), str(tmp_path / "in")))
    monkeypatch.setattr(listing, "iter_file_sizes", shuffled)
    caplog.set_level(logging.WARNING, logger="pipeline")
    frozen = plan_input(str(tmp_path / "in"), None, "auto", 1, str(tmp_path / "out"), {}, None)
    assert "out of order" in caplog.text
    assert sum(len(u.uris) for u in frozen) == 10  # n.txt too: a part of sample n, not left out


def test_plans_frozen_by_earlier_versions_still_resume(tmp_path):
    """One ``_plan/plan.parquet`` with the job in its metadata, as earlier versions wrote it."""
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"unit_id": ["000000", "000001"], "kind": ["tar", "files"],
                      "uris": [["/in/a.tar"], ["/in/b.png", "/in/c.png"]], "input_bytes": [10, 20],
                      "root": ["/in", "/in"]}).replace_schema_metadata({"msinn.job": json.dumps({"run_id": "r1"})})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(str(tmp_path / "_plan" / "plan.parquet"), buf.getvalue())
    found = read_plan(str(tmp_path), None)
    assert isinstance(found, Plan) and found.job == {"run_id": "r1"} and len(found) == 2 and found.input_bytes == 30
    assert [u.uris for u in found] == [("/in/a.tar",), ("/in/b.png", "/in/c.png")]


class Record:
    def __init__(self, i: int, size: int):
        self.key, self.data, self.original_sha256 = str(i), b"x" * size, None

    @property
    def sha256(self):
        return None


def test_read_ahead_holds_at_most_its_byte_budget_and_keeps_order():
    import threading
    import time

    produced: list[int] = []

    def records():
        for i in range(50):
            produced.append(i)
            yield Record(i, 1000)

    out = []
    for rec in read_ahead(records(), max_bytes=5000):
        time.sleep(0.002)
        ahead = len(produced) - len(out) - 1
        assert ahead <= 6, ahead  # 5 waiting within 5000 bytes, one being read
        out.append(int(rec.key))
    assert out == list(range(50))
    # a record bigger than the budget still passes, alone
    assert [r.key for r in read_ahead(iter([Record(0, 10_000), Record(1, 10)]), max_bytes=100)] == ["0", "1"]

    def failing():
        yield Record(0, 1)
        raise OSError("stream broke")

    got = []
    with pytest.raises(OSError, match="stream broke"):
        for rec in read_ahead(failing(), max_bytes=100):
            got.append(rec.key)
    assert got == ["0"]  # what was read before the failure came first
    stopped = read_ahead(records(), max_bytes=1000)
    next(stopped)
    stopped.close()  # the consumer stops early: the reader thread ends too
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]
