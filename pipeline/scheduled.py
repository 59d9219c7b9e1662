"""One scheduled re-encode run from a job spec file (TOML), for cron or a Kubernetes CronJob.

Example spec::

    archive = "s3://bucket/archive"
    where = "status = 'error' OR bpp > 0.6"
    model = "msinn-small-2026-12b-p1"    # optional
    from = "auto"                        # auto | source | bitstream
    source_prefix = "s3://bucket/images" # where originals may be read (without it, none is: from = "auto"
                                         # re-encodes from the bitstreams, "source" is refused)
    gc = true
    retention_hours = 168
    codecs = ["msinn", "avif"]           # optional: per-image codec choice (default msinn)
    avif_speed = 6                       # optional
    effort = 0                           # optional: the model's encoder-side refinement level
    also_models = ["msinn-small-graphics-2026-12-p1"]  # optional: weights competing with model per image

    [target]
    kind = "bpp"                         # bpp | psnr | bytes | qp | lossless (no value: --lossless)
    value = 0.5

A run with nothing selected is a no-op; a run interrupted before it finished
is resumed by the next one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

REQUIRED = ("archive", "target")


def load_spec(path: str | Path) -> dict[str, Any]:
    """The spec as a dict, or a ValueError naming the file and what is wrong with it."""
    try:
        spec = tomllib.loads(Path(path).read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from None
    missing = [k for k in REQUIRED if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    codecs = spec.get("codecs")
    if codecs is not None:
        from msinn.choice import parse_codecs  # light: no torch

        if not isinstance(codecs, str | list) or not all(isinstance(c, str) for c in codecs):
            raise ValueError(f"{path}: codecs must be a list of names or a comma-separated string")
        try:
            spec["codecs"] = parse_codecs(codecs)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    also = spec.get("also_models", [])
    if not isinstance(also, list) or not all(isinstance(m, str) and m for m in also):
        raise ValueError(f"{path}: also_models must be a list of model names or checkpoint paths")
    kind = spec["target"].get("kind") if isinstance(spec.get("target"), dict) else None
    if also and (kind == "lossless" or "msinn" not in (spec.get("codecs") or ("msinn",))):
        raise ValueError(f"{path}: also_models names weights of the model, which this job does not run "
                         "(msinn is not among its codecs, or its target is lossless)")
    from .spec import JobError, check_limits  # light: no torch

    try:
        check_limits(spec, option_style=False)  # the same check as the command line's options
    except JobError as exc:
        raise ValueError(f"{path}: {exc}") from None
    t = spec["target"]
    if isinstance(t, dict) and t.get("kind") == "lossless":
        t.setdefault("value", 0)
    if not isinstance(t, dict) or t.get("kind") not in ("bpp", "psnr", "bytes", "qp", "lossless") or "value" not in t:
        raise ValueError(f"{path}: [target] needs kind (bpp, psnr, bytes, qp or lossless) and value (none for "
                         "lossless)")
    return spec


def run_scheduled(path: str | Path) -> dict[str, Any]:
    spec = load_spec(path)
    from .reencode import gc_shards, run_reencode  # after the spec is read: a bad spec fails without torch

    opts = spec.get("storage_options")
    memory_mb, timeout = spec.get("image_memory_mb"), spec.get("image_timeout")
    actors = spec.get("actors")
    summary = run_reencode(
        spec["archive"], spec.get("where"), spec["target"]["kind"], float(spec["target"]["value"]),
        spec.get("model"), spec.get("from", "auto"), opts, spec.get("decode_model"),
        int(spec.get("rows_per_shard", 256)), int(actors) if actors is not None else None,
        device=spec.get("device", "cpu"), source_prefix=spec.get("source_prefix"),
        image_memory=int(memory_mb) << 20 if memory_mb is not None else None,
        image_seconds=float(timeout) if timeout is not None else None,
        codecs=spec.get("codecs"), avif_speed=int(spec.get("avif_speed", 6)), effort=int(spec.get("effort", 0)),
        also_models=spec.get("also_models", ()),
    )
    if spec.get("gc"):
        summary["gc"] = gc_shards(spec["archive"], opts, float(spec.get("retention_hours", 168)))
    return summary
