"""Reading an archive as a dataset, without restoring it: Ray Data, or the ``webdataset`` package over its shards.

An archive's tars are webdataset shards (``KEY.msinn`` or ``KEY.avif`` beside
``KEY.txt``, ``KEY.json``), so training code can read them the way it read
the input. Two ways, each on what those libraries already provide:

* :func:`read_archive`: a ``ray.data.Dataset`` of the current rows, each image
  decoded on the worker (``device``) with every check ``verify`` makes,
  beside its sample's other parts;
* :func:`webdataset_decoder`: a decoder for ``webdataset.WebDataset(...).decode``
  that turns the archive's own formats (``.msinn``, ``.lep`` and the rest)
  into arrays; captions and JSON go through webdataset's own handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import storage

# what a dataset row needs of a manifest row to decode it and give its parts back
ROW_COLUMNS = ("key", "status", "codec", "exact", "tar_uri", "offset", "length", "model", "model_hash",
               "pixel_hash", "mode", "width", "height", "source_format", "source_sha256", "source_bytes",
               "source_uri", "members")


def decoded_sample(row: dict, options: dict | None, models: Any = None, device: str = "cpu",
                   parts: bool = True) -> dict[str, Any]:
    """One current row as a training sample: the image (H x W x C uint8, its layout in ``mode``) and its parts."""
    from msinn.errors import ImageInputError

    from .bitstreams import decode_row, read_part, row_codec

    out: dict[str, Any] = {"key": row["key"], "codec": row.get("codec"), "exact": row.get("exact"), "image": None,
                           "mode": None, "note": None}
    if row_codec(row) != "none":
        try:
            pixels, mode = decode_row(row, options, models, device)
            out["image"], out["mode"] = pixels, mode
        except ImageInputError as exc:  # an original stored as it is because it is no image this reads
            out["note"] = f"stored as it is, not decodable here: {exc}"
    if parts:
        out["parts"] = [{"name": e["name"], "data": read_part(row, e, options)}
                        for e in row.get("members") or () if e.get("member") and not e.get("error")]
    return out


def read_archive(uri: str, where: str | None = None, storage_options: dict | None = None, device: str = "cpu",
                 models: Any = None, parts: bool = True):
    """The archive's current ``ok`` rows (those ``where`` selects) as a ``ray.data.Dataset`` of decoded samples.

    Each row: ``key``, ``image`` (uint8 array, H x W x C or H x W; None for
    an original stored as it is that does not decode, with ``note`` saying
    so), ``mode``, ``codec``, ``exact`` and ``parts`` (a list of ``{name,
    data}``: captions, metadata, any stored file). Decoding runs in Ray tasks, lazily, with the
    model each row names (``models``: checkpoints for rows of unbundled
    weights, as ``restore --model``); a row that fails its checks fails the
    read with its key. The selection itself is read in the driver.
    """
    import ray

    from msinn.raylocal import init_ray

    from .archive import connect, iter_select

    init_ray()
    archive = storage.canonical(uri)
    rows = [{k: r.get(k) for k in ROW_COLUMNS} | {"archive_root": archive}
            for batch in iter_select(connect(archive, storage_options), where, guard="status = 'ok'")
            for r in batch]
    opts: dict[str, Any] = {"num_gpus": 1} if device == "cuda" else {}
    return ray.data.from_items(rows).map(
        decoded_sample, fn_kwargs={"options": storage_options, "models": models, "device": device, "parts": parts},
        **opts)


def shard_urls(uri: str, storage_options: dict | None = None) -> list[str]:
    """The archive's bitstream shards (webdataset tars), sorted: what ``webdataset.WebDataset`` is given."""
    return sorted(u for u in storage.list_files(storage.join(storage.canonical(uri), "bitstreams"), storage_options)
                  if u.endswith(".tar"))


def webdataset_decoder(models: Any = None, device: str = "cpu", max_pixels: int | None = None
                       ) -> Callable[[str, bytes], Any]:
    """A webdataset handler: ``.msinn`` files (with the registered model they name, checked by weights hash, or
    one of ``models``), Lepton and the other formats the archive writes, as uint8 arrays; None for the rest
    (webdataset's own handlers then take captions, JSON and class labels)."""
    from msinn.images import DEFAULT_MAX_PIXELS

    limit = max_pixels or DEFAULT_MAX_PIXELS

    def decode(key: str, data: bytes) -> Any:
        ext = key.rsplit(".", 1)[-1].lower()
        if ext == "msinn":
            from msinn.container import read_header
            from msinn.decoding import decode_image

            from .bitstreams import model_for_row

            header, _ = read_header(data, key)
            model = model_for_row({"model": header.model_name, "model_hash": header.model_hash}, models, device)
            return decode_image(data, model, key, max_pixels=limit).pixels
        if ext == "lep":
            from msinn.lossless import original_bytes

            data = original_bytes("lepton", data)
        elif ext not in ("jxl", "avif", "webp", "jpg", "jpeg", "png"):
            return None
        import numpy as np

        from msinn.images import open_image, restore_image

        if ext == "jxl":
            import pillow_jxl  # noqa: F401  (registers JPEG XL with Pillow)
        img = open_image(data, key, limit)
        return np.asarray(restore_image(img.rgb, img.alpha, img.mode))

    return decode
