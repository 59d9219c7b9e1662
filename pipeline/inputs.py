"""A unit's records, whatever its kind: the one way an encoder reads its unit.

Listed inputs come from ``sources``, a re-encode's rows from ``archived``.
Reads are bounded by the job, not by the plan: listed inputs only under
the job's input, originals only under its source prefix, bitstreams only
from its archive. Every record's key is then checked here, so no reader can
let an unsafe key through; keys shared by several records are refused by the
consumer, once it has them all (``keys.refuse_duplicates``).
"""

from __future__ import annotations

from collections.abc import Iterator

from .keys import UNSAFE_KEY, escape_name, safe_key, stand_in_key
from .reencode_inputs import read_archived
from .sources import InputRecord, read_files, read_parquet, read_tar
from .spec import JobSpec, WorkUnit


def stream_unit(unit: WorkUnit, spec: JobSpec, skip: dict[int, str] | None = None) -> Iterator[InputRecord]:
    """A unit's records one at a time, each with bytes or with an error; unsafe keys already refused.

    ``skip`` maps record numbers (stream order) to the reason they are
    refused unread.
    """
    options, root, limit = spec.input_options, spec.input, spec.max_input_bytes
    if unit.kind == "rows":
        records: Iterator[InputRecord] = read_archived(unit, spec, skip)
    elif unit.kind == "files":
        records = read_files(unit, options, root, limit, skip)
    elif unit.kind == "tar":
        records = read_tar(unit, options, root, limit, skip)
    else:
        records = read_parquet(unit, options, spec.key_column, spec.image_column, spec.target_column, root, skip)
    for r in records:
        # names are bytes: what is not UTF-8 is escaped (keys.escape_name), and what cannot be a file name is refused
        raw_key, raw_member = r.key, r.member
        r.key, r.source_uri = escape_name(r.key), escape_name(r.source_uri)
        r.member = escape_name(r.member) if r.member is not None else None
        # a backslash in a name read from the input is refused (escapes use it); archived keys are escaped already
        literal_backslash = unit.kind != "rows" and ("\\" in raw_key or "\\" in (raw_member or ""))
        if literal_backslash or safe_key(r.key) is None or (r.member is not None and safe_key(r.member) is None):
            named = r.key if literal_backslash or safe_key(r.key) is None else r.member  # what is refused
            r.error, r.data = UNSAFE_KEY.format(key=named[:80]), None
            r.key, r.sidecar = stand_in_key(named), False
        yield r
