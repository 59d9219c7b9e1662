"""What a job is and what one unit of it holds: plain data, shared by the driver and every worker.

``JobSpec`` is identical for every unit of a run. A ``WorkUnit`` is one
shard of work: its inputs (loose files, one tar, one Parquet file, or rows of
an archive to re-encode) and the output shard it becomes (``part-<id>``).
Nothing here imports torch or Ray, so the command line can build jobs cheaply.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from msinn.ratecontrol import Target

INPUT_KINDS = ("files", "tar", "parquet", "rows")  # "rows": a re-encode of archived images

# Every numeric limit a job takes, by the name its command-line option and spec-file key share
# (``--image-timeout``, ``image_timeout``), and the JobSpec fields that carry them: (whole number, lowest
# allowed, whether the lowest itself is allowed).
LIMITS: dict[str, tuple[bool, float, bool]] = {
    "image_memory_mb": (True, 1, True), "image_timeout": (False, 0, False),
    "actors": (True, 1, True), "min_actors": (True, 1, True), "max_actors": (True, 1, True),
    "cpus_per_actor": (False, 0, False), "rows_per_shard": (True, 1, True), "retention_hours": (False, 0, True),
    "shard_bytes": (True, 1, True), "read_ahead_bytes": (True, 1, True), "max_pixels": (True, 1, True),
    "tile_pixels": (True, 1, True), "image_memory": (True, 1, True), "image_seconds": (False, 0, False),
}


def check_limits(values: Mapping[str, Any], option_style: bool = True) -> None:
    """Refuse, in one line naming it, any limit in ``values`` that is not a number in its range (None: the
    default). The one check of every limit: command lines (``--image-timeout``), spec files (``image_timeout``,
    ``option_style`` False) and every JobSpec, so no command takes a value another refuses."""
    for name, value in values.items():
        if name not in LIMITS or value is None:
            continue
        whole, low, inclusive = LIMITS[name]
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = number and (value >= low if inclusive else value > low) and (not whole or float(value).is_integer())
        if not ok:
            label = "--" + name.replace("_", "-") if option_style else name
            kind = "a whole number" if whole else "a number"
            bound = f"of at least {low:g}" if inclusive else f"above {low:g}"
            raise JobError(f"bad {label} {value!r}: must be {kind} {bound}")


def new_run_id() -> str:
    """Sortable by time, unique across drivers: ``20261125T163344Z-1a2b3c4d``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to process units; identical for every unit of a run."""

    input: str
    output: str
    target_kind: str
    target_value: float
    model: str | None = None
    input_options: dict = field(default_factory=dict)
    output_options: dict = field(default_factory=dict)
    input_kind: str = "auto"
    key_column: str = "key"
    image_column: str = "image"
    target_column: str | None = None  # Parquet inputs: per-image target values of target_kind
    shard_bytes: int = 256 << 20
    read_ahead_bytes: int = 64 << 20  # input an actor reads ahead of its encoder, at most
    max_pixels: int = 256 << 20
    tile_pixels: int = 1 << 21
    ms_ssim: bool = False
    run_id: str = ""
    device: str = "cpu"
    image_memory: int = 8 << 30  # estimated working memory one image may need (limits.py); larger are refused
    image_seconds: float = 3600.0  # one image's read or encode, at most: then its actor is stopped (pool.py)
    source_root: str | None = None  # re-encodes: originals are read only under this prefix
    source_mode: str = "auto"  # re-encodes: "auto", "source" or "bitstream" (the command's, never a plan's)
    decode_models: tuple[str, ...] = ()  # re-encodes: checkpoints the user passed for old bitstreams
    codecs: tuple[str, ...] = ("msinn",)  # per-image choice among these (msinn.choice)
    avif_speed: int = 6
    effort: int = 0  # the model's encoder-side refinement level (msinn.refine)
    also_models: tuple[str, ...] = ()  # other weights competing with ``model`` per image (msinn.weights_set)

    def __post_init__(self) -> None:
        check_limits({f: getattr(self, f) for f in ("shard_bytes", "read_ahead_bytes", "max_pixels", "tile_pixels",
                                                    "image_memory", "image_seconds")}, option_style=False)
        from msinn.choice import MODEL_CODEC, ChoiceOptions
        from msinn.lossless import LOSSLESS

        options = ChoiceOptions(self.codecs, self.avif_speed)  # unknown codecs or speeds are refused here
        object.__setattr__(self, "codecs", (LOSSLESS,) if self.target_kind == LOSSLESS else options.codecs)
        if self.target_kind == "qp" and MODEL_CODEC not in options.codecs:
            raise ValueError("a qp target is the model's rate parameter: it needs msinn among the codecs")
        object.__setattr__(self, "also_models", tuple(self.also_models or ()))
        if self.also_models and self.target_kind == LOSSLESS:
            raise ValueError("--also-model names weights of the model, which a --lossless job does not run")
        if self.also_models and MODEL_CODEC not in self.codecs:
            raise ValueError("--also-model names weights of the model: it needs msinn among the codecs")
        from msinn.refine import effort_of  # light: the levels, not torch

        effort_of(self.effort)  # a level this version does not have is refused here

    @property
    def needs_model(self) -> bool:
        """Whether the job runs the model (not for --lossless, nor for classical codecs alone)."""
        from msinn.choice import MODEL_CODEC

        return MODEL_CODEC in self.codecs

    @property
    def max_input_bytes(self) -> int:
        """One input file's size, at most: half the image memory budget (its bytes are held while it decodes)."""
        return self.image_memory // 2

    @property
    def target(self) -> Target:
        return self.target_for(None)

    def target_for(self, value: float | None) -> Target:
        """The job's target, or the same kind with an image's own value."""
        v = self.target_value if value is None else value
        return Target(self.target_kind, int(v) if self.target_kind == "qp" and float(v).is_integer() else v)

    def job_dict(self) -> dict:
        """What must not change between a run and its resumption (no credentials)."""
        return {
            "input": self.input,
            "target_kind": self.target_kind,
            "target_value": self.target_value,
            "model": self.model,
            "input_kind": self.input_kind,
            "key_column": self.key_column,
            "image_column": self.image_column,
            "target_column": self.target_column,
            "run_id": self.run_id,
            **self.coding_dict(),
        }

    def coding_dict(self) -> dict:
        """How images are coded beyond the target, where it differs from the defaults (so plans frozen before
        these options existed still match a job that does not use them)."""
        out: dict = {}
        if tuple(self.codecs) != ("msinn",):
            out["codecs"] = list(self.codecs)
            if "avif" in self.codecs and self.avif_speed != 6:
                out["avif_speed"] = self.avif_speed
        if self.effort:
            out["effort"] = self.effort
        if self.also_models:
            out["also_models"] = list(self.also_models)
        return out


@dataclass(frozen=True)
class ArchivedRow:
    """One image of an archive to re-encode: where its original and its bitstream are, and how to read them."""

    key: str
    status: str
    source_uri: str | None = None
    tar_uri: str | None = None
    offset: int | None = None
    length: int | None = None
    model: str | None = None
    model_hash: str | None = None
    source_bytes: int | None = None
    source_sha256: str | None = None
    source_mode: str = "auto"  # "auto", "source" or "bitstream": what the image is re-encoded from
    decode_model: tuple[str, ...] = ()  # checkpoints the user passed for rows whose model is not bundled

    codec: str | None = None  # the archived file's format (None: a .msinn file, as before codec choice)
    mode: str | None = None  # the layout it decodes to
    width: int | None = None
    height: int | None = None
    pixel_hash: str | None = None  # hash of its decoded pixels, checked when it is decoded
    codec_version: str | None = None
    source_format: str | None = None  # names a stored original's member (<key>.jpg, ...)
    exact: str | None = None  # what its file gives back of the original: bytes, pixels or none
    source_index: int | None = None  # its place in its input container, kept by the new row
    members: tuple[dict, ...] | list[dict] | None = None  # its sample's stored parts, carried to the new shard
    columns_uri: str | None = None  # a Parquet input's other columns, kept by the new row

    MANIFEST_FIELDS = ("key", "status", "source_uri", "tar_uri", "offset", "length", "model", "model_hash",
                       "source_bytes", "source_sha256", "codec", "mode", "width", "height", "pixel_hash",
                       "codec_version", "source_format", "exact", "source_index", "members", "columns_uri")

    @classmethod
    def from_manifest(cls, row: dict, source_mode: str, decode_model: list[str] | None) -> ArchivedRow:
        d = {k: row.get(k) for k in cls.MANIFEST_FIELDS}
        d["members"] = [dict(m) for m in d["members"]] if d["members"] else None
        return cls(**d, source_mode=source_mode, decode_model=tuple(decode_model or ()))

    def to_json(self) -> str:
        """The plan's stored form (the layout of plans written before this type existed)."""
        d = {k: getattr(self, k) for k in self.MANIFEST_FIELDS}
        return json.dumps({**d, "from": self.source_mode, "decode_model": list(self.decode_model) or None})

    @classmethod
    def from_json(cls, text: str) -> ArchivedRow:
        d = json.loads(text)
        known = {f.name for f in fields(cls)}
        dm = d.pop("decode_model", None)
        return cls(**{k: v for k, v in d.items() if k in known}, source_mode=d.get("from", "auto"),
                   decode_model=tuple([dm] if isinstance(dm, str) else dm or ()))

    def manifest_row(self, archive_root: str) -> dict:
        """The row as the bitstream readers take it; its bitstream is read from ``archive_root``'s shards only."""
        return {**asdict(self), "archive_root": archive_root}


@dataclass(frozen=True)
class WorkUnit:
    """One shard of work. Loose-file keys are paths relative to ``root``; a re-encode's ``root`` is its archive."""

    unit_id: str
    kind: str  # one of INPUT_KINDS
    uris: tuple[str, ...]
    input_bytes: int
    root: str
    rows: tuple[ArchivedRow, ...] = ()  # kind "rows" only

    @property
    def shard_name(self) -> str:
        return f"part-{self.unit_id}"

    @property
    def images(self) -> int | None:
        """How many images the unit holds, where that is known before reading it."""
        return len(self.rows) if self.kind == "rows" else len(self.uris) if self.kind == "files" else None


@dataclass(frozen=True)
class Attempt:
    """How the pool hands a unit out this time: decided by the driver, never read from storage."""

    skip: tuple[tuple[int, str], ...] = ()  # record numbers refused unread, with their rows' errors
    careful: bool = False  # no read-ahead, no overlap: each step reported names what the actor is doing


class JobError(RuntimeError):
    """The job cannot run as asked (conflicting plan, no inputs, no workers, a model that does not load)."""
