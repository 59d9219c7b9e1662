"""A re-encode's inputs: each archived row's original, read only where the archive's input was, or its bitstream.

A manifest row is data, not an instruction. Its ``source_uri`` is followed
only when it lies under the prefix the user passed (``--source-prefix``: the
input the archive records in its ``_plan/plan.json`` is data in the archive
too, and never a permission to read), names
a regular file there, and holds exactly one input of the row's key by the
rules the transcode used (``keys``): so a row can neither make a worker read
a file of its choosing nor take another key's image, and a key that two
inputs share stays refused. Otherwise the row falls back to its bitstream
(``--from auto``), read from this archive's own shards, or gets an error row
that says why.
"""

from __future__ import annotations

import io
import re
import tarfile
from collections.abc import Iterator

from msinn.images import IMAGE_EXTENSIONS

from . import containment, listing, storage
from .keys import duplicate_reason, escape_name, file_key, unescape_name, webdataset_key
from .sources import InputRecord, refused_or_failed
from .spec import ArchivedRow, JobSpec, WorkUnit

FRAGMENT = re.compile(r"(.+?\.(?:tar|parquet))#(.+)", flags=re.DOTALL)


def read_archived(unit: WorkUnit, spec: JobSpec, skip: dict[int, str] | None = None) -> Iterator[InputRecord]:
    """Inputs of a re-encode unit, one at a time: the original image if readable (and asked for), else the
    decoded bitstream; then the sample's stored parts, read from this archive's shard, so the new row keeps
    them. What is read, from where and with which models is the job's (``spec``: the user's command), never
    the plan's: a row brings only its key and where its original and bitstream are."""
    n = 0
    for row in unit.rows:
        if skip and n in skip:
            rec = InputRecord(row.key, row.source_uri or "", None, skip[n])
        else:
            rec = _read_row(row, spec)
        rec.index = row.source_index if row.source_index is not None else 0
        rec.columns_uri = row.columns_uri
        yield rec
        n += 1
        for entry in row.members or ():
            yield _stored_part(row, entry, spec)
            n += 1


def _stored_part(row: ArchivedRow, entry: dict, spec: JobSpec) -> InputRecord:
    """One stored part of an archived sample, read from its shard and checked, as a sidecar for the new row."""
    from .bitstreams import read_part

    data, why = None, entry.get("error")
    if why is None and entry.get("member"):
        try:
            data = read_part(row.manifest_row(spec.input), entry, spec.input_options)
        except Exception as exc:  # noqa: BLE001 -- the part is named in the new row with why it is missing
            why = f"stored part unreadable: {type(exc).__name__}: {exc}"
    elif why is None:
        data = b""  # a link or folder: nothing stored
    return InputRecord(row.key, row.source_uri or "", data, why, member=str(entry.get("name")),
                       index=int(entry.get("index") or 0), sidecar=True, member_kind=entry.get("kind") or "file",
                       link=entry.get("link"))


def _read_row(row: ArchivedRow, spec: JobSpec) -> InputRecord:
    src_err = None
    options = spec.input_options
    if spec.source_mode in ("auto", "source") and row.source_uri:
        try:
            data = read_source(row.key, unescape_name(row.source_uri), options, spec.source_root,
                               spec.key_column, spec.image_column, spec.max_input_bytes)
            return InputRecord(row.key, row.source_uri, data, encoded_from="source")
        except Exception as exc:  # the original may be gone, or not ours to read: fall back when allowed
            src_err = refused_or_failed(exc)
    if spec.source_mode in ("auto", "bitstream") and row.tar_uri and row.status == "ok":
        try:
            return decoded_bitstream(row, spec.input, options, spec.decode_models)
        except Exception as exc:
            why = f"bitstream unreadable: {type(exc).__name__}: {exc}"
            return InputRecord(row.key, row.source_uri or "", None, why)
    why = f"source {src_err}" if src_err else "no bitstream to decode"
    return InputRecord(row.key, row.source_uri or "", None, f"no input: {why}")


def read_source(key: str, source_uri: str, options: dict | None, root: str | None, key_column: str = "key",
                image_column: str = "image", max_bytes: int = 4 << 30) -> bytes:
    """The bytes of the one input of ``key`` that ``source_uri`` names (plain, ``tar#member``, ``parquet#row=N``).

    Refused (``containment.RefusedInput``) when no root is known, when the file
    lies outside ``root``, is not a regular file, holds another key, or when
    several inputs share the key there. A plain file whose name holds a
    ``#`` is read as itself: the fragment form applies only after ``.tar`` or
    ``.parquet``.
    """
    if not root:
        raise containment.RefusedInput(f"{source_uri}: originals are read only under the prefix the command names; "
                                   "pass --source-prefix")
    m = FRAGMENT.fullmatch(source_uri)
    if m is None or (containment.within(source_uri, root) and storage.exists(source_uri, options)):
        return _loose_file(key, source_uri, options, root, max_bytes)
    uri, frag = m.group(1), m.group(2)
    if frag.startswith("row=") and uri.endswith(".parquet"):
        return _parquet_row(key, uri, frag, options, root, key_column, image_column)
    return _tar_member(key, uri, frag, options, root, max_bytes)


def _loose_file(key: str, uri: str, options: dict | None, root: str, max_bytes: int) -> bytes:
    if not containment.within(uri, root):
        raise containment.RefusedInput(f"{uri}: not under the input {root}; only files under it are read")
    base = storage.canonical(root)
    its_key = escape_name(file_key(storage.canonical(uri), base if storage.canonical(uri) != base else
                                   base.rsplit("/", 1)[0]))
    if its_key != key:
        raise containment.RefusedInput(f"{uri}: holds key {its_key!r}, not the row's {key!r}")
    stem = uri.rsplit("/", 1)[-1].rpartition(".")[0]
    same = [u for u in listing.named_like(uri, options, stem + ".")
            if u.rsplit("/", 1)[-1].rpartition(".")[0] == stem and u.lower().endswith(IMAGE_EXTENSIONS)]
    if len(same) > 1:
        raise containment.RefusedInput(duplicate_reason(key, len(same), ", ".join(same[:4])))
    return containment.read_input(uri, options, root, max_bytes)


def _tar_member(key: str, uri: str, member: str, options: dict | None, root: str, max_bytes: int) -> bytes:
    """The member, streamed out of its tar, if it is the only image member of ``key`` there (as transcode requires)."""
    if escape_name(webdataset_key(member)) != key:
        raise containment.RefusedInput(f"{uri}#{member}: holds key {webdataset_key(member)!r}, not the row's {key!r}")
    found: list[str] = []
    data = None
    with containment.open_input(uri, options, root) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        for m in tf:
            if not m.isfile() or not m.name.lower().endswith(IMAGE_EXTENSIONS) or escape_name(
                    webdataset_key(m.name)) != key:
                continue
            found.append(m.name)
            if m.name == member and len(found) == 1:
                if m.size > max_bytes:
                    raise containment.RefusedInput(f"{uri}#{member}: {m.size} bytes, over the limit of {max_bytes}")
                extracted = tf.extractfile(m)
                data = extracted.read() if extracted is not None else None
    if len(found) > 1:
        raise containment.RefusedInput(duplicate_reason(key, len(found), ", ".join(f"{uri}#{n}" for n in found[:4])))
    if data is None:
        raise FileNotFoundError(f"{uri}#{member}: no such image member")
    return data


def _parquet_row(key: str, uri: str, frag: str, options: dict | None, root: str, key_column: str,
                 image_column: str) -> bytes:
    """Row N's image, if row N holds ``key`` and no other row of the file does."""
    import pyarrow.parquet as pq

    try:
        row = int(frag[4:])
    except ValueError:
        raise containment.RefusedInput(f"{uri}#{frag}: not a row number") from None
    with containment.open_input(uri, options, root) as f:
        pf = pq.ParquetFile(f)
        keys = pf.read(columns=[key_column]).column(0).to_pylist()
        if not 0 <= row < len(keys) or keys[row] is None or str(keys[row]) != key:
            held = repr(str(keys[row])) if 0 <= row < len(keys) else "no row"
            raise containment.RefusedInput(f"{uri}#{frag}: holds {held}, not the row's key {key!r}")
        same = [i for i, k in enumerate(keys) if k is not None and str(k) == key]
        if len(same) > 1:
            raise containment.RefusedInput(
                duplicate_reason(key, len(same), ", ".join(f"{uri}#row={i}" for i in same[:4])))
        start = 0
        for g in range(pf.metadata.num_row_groups):  # read only the row group that holds the row
            n = pf.metadata.row_group(g).num_rows
            if row < start + n:
                v = pf.read_row_group(g, columns=[image_column]).column(0)[row - start].as_py()
                return v["bytes"] if isinstance(v, dict) else v
            start += n
    raise FileNotFoundError(f"{uri}#{frag}: no such row")


def decoded_bitstream(row: ArchivedRow, archive: str, options: dict | None, models: tuple[str, ...] = ()
                      ) -> InputRecord:
    """The archived image as a PNG, decoded from its file in this archive's shards (any codec, every check:
    ``bitstreams.decode_row``), a ``.msinn`` file with a registered model or one of ``models`` (the user's)."""
    from msinn.images import to_pil
    from msinn.lossless import write_png

    from .bitstreams import decode_row, exact_member, is_exact

    mrow = row.manifest_row(archive)
    if is_exact(mrow):  # the original's bytes, or its exact pixels and metadata, checked against the row
        got = exact_member(mrow, options)
        data, original = (got, "bytes") if isinstance(got, bytes) else (write_png(got), "pixels")
        if row.exact == "none":
            original = "none"  # an exact copy of what was already not the original
    else:
        pixels, mode = decode_row(mrow, options, list(models) or None, "cpu")
        buf = io.BytesIO()
        to_pil(pixels, mode).save(buf, format="PNG")
        data, original = buf.getvalue(), "none"
    return InputRecord(row.key, row.source_uri or "", data, encoded_from="bitstream",
                       original_bytes=row.source_bytes, original_sha256=row.source_sha256, original=original)
