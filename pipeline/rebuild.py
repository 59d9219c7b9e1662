"""Giving an input back in its own shape (``restore --layout source``): its tars, Parquet files and folders.

Each container of the input (a webdataset tar, a Parquet file, the loose
files of a folder) is rebuilt from the current rows that came from it, in the
input's own order (``source_index`` and each stored part's ``index``), under
the same names relative to the input the archive was made from. What each
image member then holds depends on its row:

* ``exact = 'bytes'``: the original file, byte for byte (its sha256 checked);
* ``exact = 'pixels'``: the original pixels and metadata, in the original's
  format (its pixel hash checked);
* a lossy row: the decoded image in the format its name says (``.jpg``:
  JPEG at quality 95, 4:4:4; ``.png``, ``.webp``, ``.tif``, ``.bmp``:
  lossless; ``.gif``: Pillow's adaptive palette; Parquet rows: the source's format).

Every other part of a sample comes back byte for byte (checked against the
sha256 its row records). Names come from the manifest, so each is checked
as a key is (no absolute paths, no ``..``) before anything is written.
"""

from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable, Iterator
from typing import Any

from . import storage
from .bitstreams import decode_row, exact_member, is_exact, read_part, row_codec
from .keys import relative_path, safe_key, unescape_name

LOOSE_BATCH = 64  # loose files of one folder restored per task
_JPEG = ("JPEG", {"quality": 95, "subsampling": 0})
_TIFF = ("TIFF", {"compression": "tiff_deflate"})
LOSSY_FORMATS = {"jpg": _JPEG, "jpeg": _JPEG, "png": ("PNG", {}), "webp": ("WEBP", {"lossless": True, "quality": 100}),
                 "tif": _TIFF, "tiff": _TIFF, "bmp": ("BMP", {}), "gif": ("GIF", {}), "ppm": ("PPM", {}),
                 "pgm": ("PPM", {})}
FORMAT_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp", "GIF": "gif"}


class RebuildError(ValueError):
    """A part that cannot be given back (a name that is not safe, a file that does not check)."""


def container_of(source_uri: str) -> tuple[str, str, str | None]:
    """(kind, container URI, name inside it) of a row's ``source_uri``: ``tar#member``, ``parquet#row=N``, a file."""
    head, sep, frag = str(source_uri).partition("#")
    if sep and head.endswith(".tar"):
        return "tar", head, frag
    if sep and head.endswith(".parquet") and frag.startswith("row="):
        return "parquet", head, frag
    return "files", str(source_uri), None


def _safe(name: str, what: str) -> str:
    if safe_key(name) is None:
        raise RebuildError(f"{what} {name[:200]!r} is not a safe relative name: not written")
    return name


def _dest_name(dest: str, rel: str, local: bool) -> str:
    """Where a relative name lands under ``dest``; non-UTF-8 bytes come back where the file system can hold them."""
    return storage.join(dest, unescape_name(rel) if local else rel)


def _relative(uri: str, root: str) -> str:
    """A container's name under the input it came from (a single-file input: its base name)."""
    return relative_path(uri, root) if uri != root else uri.rsplit("/", 1)[-1]


def image_bytes(row: dict, options: dict | None, models: Any, device: str, name: str | None) -> bytes:
    """What an image member holds when its input is given back (see the module's docstring), checked."""
    from msinn.images import to_pil
    from msinn.lossless import write_png

    if is_exact(row):
        got = exact_member(row, options)
        if isinstance(got, bytes):
            return got
        return _exact_in_format(got, row.get("source_format"), write_png)
    pixels, mode = decode_row(row, options, models, device)
    ext = (name or "").rsplit(".", 1)[-1].lower() if name and "." in name else ""
    ext = ext if ext in LOSSY_FORMATS else FORMAT_EXTENSIONS.get(str(row.get("source_format") or ""), "png")
    fmt, opts = LOSSY_FORMATS[ext]
    im = to_pil(pixels, mode)
    if fmt == "JPEG" and im.mode not in ("L", "RGB"):
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, fmt, **opts)
    return buf.getvalue()


def _exact_in_format(px, source_format: str | None, write_png) -> bytes:
    """Exact pixels written in their source's format (PNG, TIFF, BMP), read back to check they are the same."""
    from msinn.lossless import _pillow_image, read_exact  # noqa: PLC2701 -- the writer of the same module

    if source_format in (None, "PNG"):
        return write_png(px)
    fmt = {"TIFF": ("TIFF", {"compression": "tiff_deflate"}), "BMP": ("BMP", {})}.get(str(source_format))
    if fmt is None:
        return write_png(px)
    buf = io.BytesIO()
    opts = dict(fmt[1])
    if px.icc and fmt[0] == "TIFF":
        opts["icc_profile"] = px.icc
    _pillow_image(px).save(buf, fmt[0], **opts)
    data = buf.getvalue()
    back, _ = read_exact(data)
    back.icc, back.exif, back.xmp = px.icc, px.exif, px.xmp  # the format's own metadata rules; pixels must match
    if back.digest() != px.digest():
        raise RebuildError(f"{source_format} written from the exact pixels reads back otherwise")
    return data


def _parts(row: dict, options: dict | None) -> Iterator[tuple[int, str, str, bytes, str | None]]:
    """A row's stored parts as (index, name, kind, data, link), each checked against its recorded sha256."""
    for e in row.get("members") or ():
        if e.get("error"):
            continue
        kind = e.get("kind") or "file"
        data = read_part(row, e, options) if kind == "file" else b""
        yield int(e.get("index") or 0), str(e.get("name")), kind, data, e.get("link")


def _entries(rows: list[dict], options: dict | None, models: Any, device: str, report: dict,
             input_root: str) -> list[tuple]:
    """Every part of every row, in the input's order: (index, name, kind, data, link)."""
    out = []
    for row in rows:
        key = row["key"]
        try:
            if row.get("status") == "ok" and row_codec(row) != "none":
                kind, container, name = container_of(row.get("source_uri") or "")
                if kind == "files":
                    name = _relative(container, input_root)
                out.append((row.get("source_index") or 0, name, "file", image_bytes(row, options, models, device,
                                                                                     name), None))
                report["images"] += 1
                report["exact_images" if row.get("exact") in ("bytes", "pixels") else "lossy_images"] += 1
            out.extend(_parts(row, options))
        except Exception as exc:  # noqa: BLE001 -- every failure is reported with its key, the rest goes on
            report["failed"].append({"key": key, "error": f"{type(exc).__name__}: {exc}"})
    out.sort(key=lambda e: e[0])
    return out


def _tar(entries: list[tuple]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for _, name, kind, data, link in entries:
            info = tarfile.TarInfo(unescape_name(_safe(name, "tar member")))
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = 0, 0o644, 0, 0, "", ""
            if kind == "file":
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            elif kind in ("symlink", "hardlink", "directory"):
                info.type = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                             "directory": tarfile.DIRTYPE}[kind]
                info.linkname = unescape_name(link or "")
                info.mode = 0o755 if kind == "directory" else 0o644
                tf.addfile(info)
    return buf.getvalue()


def rebuild_group(rows: list[dict], archive_options: dict | None, models: Any, device: str, dest: str,
                  dest_options: dict | None, input_root: str) -> dict:  # noqa: C901 -- one branch per container kind
    """One container of the input (or a batch of its loose files) rebuilt under ``dest``; a report, never raises."""
    t0 = time.perf_counter()
    report: dict[str, Any] = {"containers": 0, "files": 0, "images": 0, "exact_images": 0, "lossy_images": 0,
                              "failed": []}
    fs, _ = storage.filesystem(dest, dest_options)
    local = storage.is_local(fs)
    kind, container, _ = container_of(rows[0].get("source_uri") or "")
    try:
        if kind == "tar":
            rel = _safe(_relative(container, input_root), "tar")
            entries = _entries(rows, archive_options, models, device, report, input_root)
            storage.write_bytes(_dest_name(dest, rel, local), _tar(entries), dest_options)
            report["containers"] += 1
            report["files"] += len(entries)
        elif kind == "parquet":
            rel = _safe(_relative(container, input_root), "Parquet file")
            storage.write_bytes(_dest_name(dest, rel, local), _parquet(rows, archive_options, models, device,
                                                                       report), dest_options)
            report["containers"] += 1
        else:
            for _, name, part_kind, data, _ in _entries(rows, archive_options, models, device, report, input_root):
                if part_kind == "file":  # loose inputs hold regular files only (links were followed or skipped)
                    storage.write_bytes(_dest_name(dest, _safe(name, "file"), local), data, dest_options)
                    report["files"] += 1
    except Exception as exc:  # noqa: BLE001 -- the container failed whole: say which
        report["failed"].append({"key": container, "error": f"{type(exc).__name__}: {exc}"})
    report["seconds"] = time.perf_counter() - t0
    return report


def _parquet(rows: list[dict], options: dict | None, models: Any, device: str, report: dict) -> bytes:
    """A Parquet input file again: its other columns as copied (``columns_uri``), the images put back in its
    image column, in its row order and with its schema and metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .bitstreams import UntrustedReference

    uri = rows[0].get("columns_uri")
    name = str(uri or "").rstrip("/").rsplit("/", 2)
    if not uri or len(name) < 3 or name[-2] != "columns" or not name[-1].startswith("part-"):
        raise UntrustedReference(f"columns_uri {str(uri)[:200]!r} does not name a columns shard of the archive")
    table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(rows[0]["archive_root"], "columns", name[-1]),
                                                        options)))
    meta = dict(table.schema.metadata or {})
    schema = pa.ipc.read_schema(pa.py_buffer(meta.pop(b"msinn.source_schema")))
    image_column = meta.pop(b"msinn.image_column").decode()
    images: dict[int, bytes | None] = {}
    for row in rows:
        at = row.get("source_index")
        try:
            if row.get("status") == "ok" and row_codec(row) != "none":
                images[int(at)] = image_bytes(row, options, models, device, None)
                report["images"] += 1
                report["exact_images" if row.get("exact") in ("bytes", "pixels") else "lossy_images"] += 1
            for i, _, _, data, _ in _parts(row, options):  # a raw image kept for a failed row
                images[i] = data
        except Exception as exc:  # noqa: BLE001
            report["failed"].append({"key": row["key"], "error": f"{type(exc).__name__}: {exc}"})
    order = table.column("__row").to_pylist()
    values = [images.get(i) for i in order]
    field = schema.field(image_column)
    if pa.types.is_struct(field.type):
        others = {f.name: table.column(f"__image.{f.name}").combine_chunks() for f in field.type
                  if f.name != "bytes" and f"__image.{f.name}" in table.column_names}
        arrays = [pa.array(values, field.type.field("bytes").type) if f.name == "bytes" else others.get(
            f.name, pa.nulls(len(values), f.type)) for f in field.type]
        image = pa.StructArray.from_arrays(arrays, fields=list(field.type))
    else:
        image = pa.array(values, field.type)
    columns = [image if f.name == image_column else table.column(f.name) for f in schema]
    out = pa.Table.from_arrays(columns, schema=schema)
    buf = io.BytesIO()
    pq.write_table(out, buf)
    report["files"] += len(order)
    return buf.getvalue()


def groups(batches: Iterable[list[dict]]) -> Iterator[list[dict]]:
    """Rows (ordered by ``source_uri``) grouped by the container they came from; loose files in batches."""
    current: list[dict] = []
    ident = None
    for batch in batches:
        for row in batch:
            kind, container, _ = container_of(row.get("source_uri") or "")
            this = container if kind != "files" else "(loose files)"
            if current and (this != ident or (kind == "files" and len(current) >= LOOSE_BATCH)):
                yield current
                current = []
            ident = this
            current.append(row)
    if current:
        yield current


def input_root(archive: str, options: dict | None) -> str:
    """The input the archive was made from (its plan): names are given back relative to it."""
    from .plan import read_plan

    try:
        plan = read_plan(archive, options)
    except Exception:  # noqa: BLE001 -- an unreadable plan: names fall back to the containers' base names
        plan = None
    root = str((plan.job.get("input") if plan else "") or "")
    return storage.canonical(root) if root else ""


def run_rebuild(batches: Iterable[list[dict]], archive_options: dict | None, models: Any, device: str, dest: str,
                dest_options: dict | None, root: str, in_flight: int | None = None) -> dict:
    """Every container the rows came from, rebuilt under ``dest`` as Ray tasks (one per tar or Parquet file, or
    per batch of loose files), a bounded number in flight; the reports summed."""
    import ray

    from msinn.raylocal import init_ray

    init_ray()
    opts: dict[str, Any] = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
    task = ray.remote(_rebuild_task).options(max_retries=3, **opts)
    limit = in_flight or max(2, 2 * int(ray.cluster_resources().get("GPU" if device == "cuda" else "CPU", 1)))
    total: dict[str, Any] = {"rows": 0, "containers": 0, "files": 0, "images": 0, "exact_images": 0,
                             "lossy_images": 0, "not_archived": 0, "failed": []}
    pending: list = []

    def collect(ready: list) -> None:
        for part in ray.get(ready):
            for k, v in part.items():
                if k == "failed":
                    total["failed"] += v
                elif k in total:
                    total[k] += v

    for group in groups(batches):
        total["rows"] += len(group)
        total["not_archived"] += sum(1 for r in group if r.get("status") != "ok" and not r.get("members"))
        if len(pending) >= limit:
            ready, pending = ray.wait(pending, num_returns=1)
            collect(ready)
        pending.append(task.remote(group, archive_options, models, device, dest, dest_options, root))
    if pending:
        collect(pending)
    return total


def _rebuild_task(rows, archive_options, models, device, dest, dest_options, root) -> dict:
    return rebuild_group(rows, archive_options, models, device, dest, dest_options, root)
