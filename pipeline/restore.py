"""Restore and verify: decode a selection of an archive with one ranged read per image.

Restore writes image files (PNG by default, original mode and alpha). Verify
decodes on whatever device the job runs on and checks every hash the file
and its row carry (``bitstreams.decode_row``): the archive's answer to "will
this decode on other hardware", for every codec. Both run as Ray tasks over
chunks of rows.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import storage
from .bitstreams import decode_row, exact_member, is_exact, read_part, row_codec
from .keys import safe_key


def decode_rows(
    rows: list[dict],
    archive_options: dict | None,
    models: str | list[str] | None,
    device: str = "cpu",
    dest: str | None = None,
    dest_options: dict | None = None,
    image_format: str = "png",
) -> list[dict]:
    """Decode each row; with ``dest``, write the image there. One result per row, never an exception.

    Each row carries ``archive_root``: its bitstream is read from that archive's shards only. Without ``dest``
    (verify) every stored part of the row's sample is read and checked too. An exact row is written as its
    exact file: the original (``<key>.<its extension>``) or a PNG of the exact pixels and metadata.
    """
    from msinn.images import to_pil
    from msinn.lossless import stored_extension, write_png

    out = []
    for row in rows:
        res = {"key": row["key"], "ok": False, "error": None, "uri": None}
        t0 = time.perf_counter()
        try:
            if safe_key(row["key"]) is None:
                raise ValueError(f"unsafe key {row['key']!r}")
            data, ext = None, image_format.lower()
            if row_codec(row) == "none":
                pass  # a sample without an image: only its stored parts
            elif is_exact(row):
                got = exact_member(row, archive_options)
                data, ext = (got, stored_extension(row.get("source_format"))) if isinstance(got, bytes) else (
                    write_png(got), "png")
            else:
                pixels, mode = decode_row(row, archive_options, models, device)
                if dest is not None:
                    buf = io.BytesIO()
                    to_pil(pixels, mode).save(buf, format=image_format.upper())
                    data = buf.getvalue()
            if dest is None:
                for entry in row.get("members") or ():
                    if not entry.get("error") and entry.get("member"):
                        read_part(row, entry, archive_options)
            elif data is not None:
                uri = storage.join(dest, f"{row['key']}.{ext}")
                storage.write_bytes(uri, data, dest_options)
                res["uri"] = uri
            res["ok"] = True
        except Exception as exc:  # every failure is reported with its key
            res["error"] = f"{type(exc).__name__}: {exc}"
        res["seconds"] = time.perf_counter() - t0
        out.append(res)
    return out


@dataclass
class DecodeReport:
    """What a restore or verify run found: counts and the failures (never every row)."""

    checked: int = 0
    failed: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.checked - len(self.failed)


def run_decode_jobs(
    batches: Iterable[list[dict]],
    archive_options: dict | None,
    models: str | list[str] | None,
    device: str,
    dest: str | None,
    dest_options: dict | None,
    image_format: str,
    chunk: int = 16,
    in_flight: int | None = None,
) -> DecodeReport:
    """Decode rows as Ray tasks of ``chunk`` rows, with at most ``in_flight`` tasks submitted at a time.

    Rows arrive in batches from the manifest and results are reduced as they
    come, so the driver's memory and the object store stay bounded whatever
    the archive's size.
    """
    import ray

    from msinn.raylocal import init_ray

    init_ray()
    opts: dict[str, Any] = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
    task = ray.remote(decode_rows).options(max_retries=3, **opts)
    limit = in_flight or max(2, 2 * int(ray.cluster_resources().get("GPU" if device == "cuda" else "CPU", 1)))
    report = DecodeReport()
    pending: list = []

    def collect(ready: list) -> None:
        for part in ray.get(ready):
            report.checked += len(part)
            report.failed += [{"key": r["key"], "error": r["error"]} for r in part if not r["ok"]]

    for batch in batches:
        for i in range(0, len(batch), chunk):
            if len(pending) >= limit:
                ready, pending = ray.wait(pending, num_returns=1)
                collect(ready)
            pending.append(task.remote(batch[i : i + chunk], archive_options, models, device, dest, dest_options,
                                       image_format))
    if pending:
        collect(pending)
    return report
