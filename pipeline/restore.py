"""Restore and verify: decode a selection of an archive with one ranged read per image.

Restore writes image files (PNG by default, original mode and alpha). Verify
decodes on whatever device the job runs on and checks every hash the
container carries: the archive's answer to "will this decode on other
hardware". Both run as Ray tasks over chunks of rows.
"""

from __future__ import annotations

import io
import random
import time
from typing import Any

from . import storage
from .sources import safe_key

_MODELS: dict[tuple[str, str], Any] = {}


def _load(spec: str, device: str):
    """A model by registry name or checkpoint path/URI, loaded once per worker process."""
    import msinn

    key = (spec, device)
    if key not in _MODELS:
        _MODELS[key] = msinn.load(spec, device=device)
    return _MODELS[key]


def as_model_list(models: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``--model`` given once (a string), several times (a list) or not at all."""
    if not models:
        return []
    return [models] if isinstance(models, str) else list(models)


def _model(row: dict, models: str | list[str] | None, device: str):
    """The model a row decodes with: a given one holding the row's weights, else the one the row names.

    Matching by weights hash lets one command restore an archive written by several
    models (say a retired model's downloaded file next to the bundled ones): each
    row takes the checkpoint it was encoded with, whatever order they are given in.
    """
    from msinn.codec import model_identity

    given = as_model_list(models)
    want = row.get("model_hash") or ""
    for spec in given:
        m = _load(spec, device)
        name, h = model_identity(m)
        n = min(len(h), len(want))
        if (n and h[:n] == want[:n]) or (not want and name == row.get("model")):
            return m
    if len(given) == 1 and not want:  # no hash to match on: the one given model is the user's word
        return _load(given[0], device)
    try:
        return _load(row["model"], device)
    except Exception as exc:
        if not given:
            raise
        raise ValueError(f"written with {row['model']} (weights {want}), which none of the given models "
                         f"({', '.join(given)}) holds; loading {row['model']}: {exc}") from exc


def _bitstream(row: dict, options: dict | None) -> bytes:
    start = int(row["offset"])
    return storage.read_bytes(row["tar_uri"], options, start=start, end=start + int(row["length"]))


def decode_rows(
    rows: list[dict],
    archive_options: dict | None,
    models: str | list[str] | None,
    device: str = "cpu",
    dest: str | None = None,
    dest_options: dict | None = None,
    image_format: str = "png",
) -> list[dict]:
    """Decode each row; with ``dest``, write the image there. One result per row, never an exception."""
    from msinn.codec import decode_image
    from msinn.errors import BitstreamError

    out = []
    for row in rows:
        res = {"key": row["key"], "ok": False, "error": None, "uri": None}
        t0 = time.perf_counter()
        try:
            if safe_key(row["key"]) is None:
                raise ValueError(f"unsafe key {row['key']!r}")
            model = _model(row, models, device)
            decoded = decode_image(_bitstream(row, archive_options), model, row["key"])
            if row.get("width") is not None and decoded.pixels.shape[:2] != (row["height"], row["width"]):
                raise BitstreamError("decoded size differs from the manifest")
            if dest is not None:
                buf = io.BytesIO()
                decoded.to_pil().save(buf, format=image_format.upper())
                uri = storage.join(dest, f"{row['key']}.{image_format.lower()}")
                storage.write_bytes(uri, buf.getvalue(), dest_options)
                res["uri"] = uri
            res["ok"] = True
        except Exception as exc:  # every failure is reported with its key
            res["error"] = f"{type(exc).__name__}: {exc}"
        res["seconds"] = time.perf_counter() - t0
        out.append(res)
    return out


def run_decode_jobs(
    rows: list[dict],
    archive_options: dict | None,
    models: str | list[str] | None,
    device: str,
    dest: str | None,
    dest_options: dict | None,
    image_format: str,
    chunk: int = 16,
) -> list[dict]:
    import ray

    from .runner import init_ray

    init_ray()
    opts: dict[str, Any] = {"num_gpus": 1} if device == "cuda" else {"num_cpus": 1}
    task = ray.remote(decode_rows).options(max_retries=3, **opts)
    refs = [
        task.remote(rows[i : i + chunk], archive_options, models, device, dest, dest_options, image_format)
        for i in range(0, len(rows), chunk)
    ]
    return [r for part in ray.get(refs) for r in part]


def sample_rows(rows: list[dict], n: int | None, seed: int = 0) -> list[dict]:
    if not n or n >= len(rows):
        return rows
    return sorted(random.Random(seed).sample(rows, n), key=lambda r: r["key"])
