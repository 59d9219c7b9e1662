"""``msinn encode``, ``msinn decode`` and ``msinn info``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import BitstreamError, ImageInputError
from ..images import DEFAULT_MAX_PIXELS
from .options import add_coding_args, add_target_args, target_of


def _encode_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msinn encode", description="Encode an image to a .msinn file.")
    p.add_argument("input", help="any image Pillow opens")
    p.add_argument("output", help="the .msinn file to write")
    add_target_args(p)  # shared with msinn-pipeline (``--psnr`` or ``--target-psnr``, ...)
    p.add_argument("--model", help="registered model name or checkpoint path (default: bundled weights)")
    add_coding_args(p)  # an output named .msinn, .avif, .jpg, .webp, .jxl or .lep takes the written format's name
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--tile-pixels", type=int, help="images above this many pixels are coded as tiles")
    p.add_argument("--tile-size", type=int, help="tile side in pixels (multiple of 64)")
    p.add_argument("--max-pixels", type=int, help="refuse inputs with more pixels than this")
    return p


def _target(args: argparse.Namespace):
    from ..ratecontrol import Target

    found = target_of(args)
    if found is None:
        return None
    kind, value = found
    return Target(kind, int(value) if kind in ("qp", "bytes") and float(value).is_integer() else value)


def _load_model(name: str | None, device: str):
    import msinn

    return msinn.load(name, device=device)


def _registered_name(header, source: str) -> str:
    """The model a file names, if it is a registered one with the weights the file records.

    A file is data: the name in its header is looked up in the registry, never
    opened as a path or fetched as a URL. Other weights come only from --model.
    """
    from ..registry import lookup

    entry = lookup(header.model_name)
    if entry is None or not entry.sha256.startswith(header.model_hash):
        raise BitstreamError(
            f"{source}: written with model {header.model_name!r} (weights {header.model_hash}), which is not a "
            "registered model with those weights; pass its checkpoint with --model"
        )
    return entry.name


def _output_path(path: str, extension: str) -> str:
    """Where the kept file goes: an output named with one of the formats' extensions takes the winner's (a
    ``.msinn`` name never holds AVIF bytes, however many codecs competed); any other name is kept as given, and
    the printed ``codec`` says what it holds."""
    from ..classical import EXTENSIONS

    p = Path(path)
    known = {"msinn", "jpeg", "lep", *EXTENSIONS}
    suffix = p.suffix.lower().lstrip(".")
    if suffix in known and suffix != extension and {suffix, extension} != {"jpeg", "jpg"}:
        return str(p.with_suffix("." + extension))
    return path


def cmd_encode(argv: list[str]) -> int:
    args = _encode_parser().parse_args(argv)
    try:  # its size from its header first (light: no torch yet): an image over the limit costs a few bytes
        from ..images import open_image

        data = Path(args.input).read_bytes()
        img = open_image(data, args.input, args.max_pixels or DEFAULT_MAX_PIXELS)
    except (ImageInputError, ValueError, OSError) as exc:
        print(f"msinn encode: {exc}", file=sys.stderr)
        return 1
    from dataclasses import replace

    from ..choice import MODEL_CODEC, ChoiceOptions, encode_best, missing_codecs
    from ..encoding import EncodeOptions, default_target
    from ..lossless import LOSSLESS, store_exactly

    opts = {}
    if args.tile_pixels:
        opts["tile_pixels"] = args.tile_pixels
    if args.tile_size:
        opts["tile_size"] = args.tile_size
    if args.max_pixels:
        opts["max_pixels"] = args.max_pixels
    try:  # the library's option objects check their values, the CLI none (docs/architecture.md, "One image through")
        choice = ChoiceOptions(args.codecs, args.avif_speed)
        coding = EncodeOptions(effort=args.effort)  # an unknown --effort: a usage error, before any work
    except ValueError as exc:
        print(f"msinn encode: {exc}", file=sys.stderr)
        return 2
    if args.qp is not None and MODEL_CODEC not in choice.codecs:
        print("msinn encode: --qp is the model's rate parameter: it needs msinn among the --codecs", file=sys.stderr)
        return 2
    if args.also_model and MODEL_CODEC not in choice.codecs:
        print("msinn encode: --also-model names weights of the model: it needs msinn among the --codecs",
              file=sys.stderr)
        return 2
    missing = missing_codecs(choice.codecs)
    if missing:
        print(f"msinn encode: not available in this Pillow build: "
              f"{'; '.join(f'{c} ({why})' for c, why in missing.items())}", file=sys.stderr)
        return 2
    try:
        options = replace(coding, **opts)  # a bad tile size ends with exit code 1, as it always has
        model = _load_model(args.model, args.device)
        target = _target(args) or default_target(model)  # a qp is checked against the model by the encoder
        exact = None
        if LOSSLESS in choice.codecs:  # the exact file competes: the original bytes (JPEG) or pixels back
            exact = store_exactly(data, args.input, options.max_pixels)
        also = [_load_model(name, args.device) for name in args.also_model]
        result = encode_best(model, img, target, choice, options, exact, also)
    except (ImageInputError, ValueError, FileNotFoundError, OSError) as exc:
        print(f"msinn encode: {exc}", file=sys.stderr)
        return 1
    winner = result.winner
    for name, why in result.failed.items():
        if name.startswith("msinn "):  # other weights left out: the kept file is still the best of the rest
            print(f"msinn encode: warning: {name[6:]} could not code {args.input}: {why}", file=sys.stderr)
    out = _output_path(args.output, winner.extension)
    from ..atomic import write_atomic

    write_atomic(out, winner.data)
    summary = {**result.summary(img.width * img.height), "output": out}
    if winner.header is not None:
        summary.update({"qp": winner.quality if not float(winner.quality).is_integer() else int(winner.quality),
                        "width": img.width, "height": img.height, "mode": img.mode, "model": winner.header.model_name})
    else:
        summary.update({"qp": None, "width": img.width, "height": img.height, "mode": img.mode})
    summary["target"] = {"kind": target.kind, "value": target.value}
    print(json.dumps(summary))
    return 0


def cmd_decode(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="msinn decode",
        description="Decode a .msinn file to an image (an .avif, .jpg, .webp or .jxl file written by --codecs "
        "decodes too, through Pillow, with the same size limit; a .lep file gives its original JPEG back, byte for "
        "byte when the output is named .jpg).")
    p.add_argument("input")
    p.add_argument("output", help="image file; the format follows the extension (png, webp, tiff, ...)")
    p.add_argument("--model", help="model name or checkpoint path (default: the registered model the file names)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="refuse files claiming more pixels than this, before allocating (default %(default)s)")
    args = p.parse_args(argv)
    from ..container import MAGIC, read_header

    try:
        data = Path(args.input).read_bytes()
        if Path(args.input).suffix.lower() == ".lep":  # a losslessly recompressed JPEG (--codecs lossless)
            from ..lossless import original_bytes

            data = original_bytes("lepton", data)
            if Path(args.output).suffix.lower() in (".jpg", ".jpeg"):  # the original file, byte for byte
                from ..atomic import write_atomic

                write_atomic(args.output, data)
                return 0
        if data[: len(MAGIC)] == MAGIC:
            from ..decoding import decode_image  # torch: only for the model's own files

            header, _ = read_header(data, args.input)
            model = _load_model(args.model or _registered_name(header, args.input), args.device)
            img = decode_image(data, model, args.input, max_pixels=args.max_pixels).to_pil()
        else:
            img = _decode_classical(data, args.input, args.max_pixels)
        ext = Path(args.output).suffix.lower()
        if ext in (".jpg", ".jpeg") and img.mode in ("RGBA", "LA"):
            img = img.convert("RGB" if img.mode == "RGBA" else "L")
        from ..atomic import atomic_path

        with atomic_path(args.output, suffix=ext) as tmp:  # Pillow takes the format from the name's extension
            img.save(tmp)
    except (BitstreamError, ImageInputError, FileNotFoundError, OSError, ValueError) as exc:
        print(f"msinn decode: {exc}", file=sys.stderr)
        return 1
    return 0


def _decode_classical(data: bytes, source: str, max_pixels: int):
    """A standard image file (what --codecs may write) as a Pillow image, in its own layout."""
    from ..classical import decode
    from ..images import open_image, to_pil

    mode = open_image(data, source, max_pixels).mode
    return to_pil(decode(data, mode, source, max_pixels), mode)


def cmd_info(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="msinn info", description="Print a .msinn file's header as JSON.")
    p.add_argument("input")
    args = p.parse_args(argv)
    from ..container import read_header

    try:
        data = Path(args.input).read_bytes()
        header, start = read_header(data, args.input)
    except (BitstreamError, OSError) as exc:
        print(f"msinn info: {exc}", file=sys.stderr)
        return 1
    info = header.to_json()
    info["file_bytes"] = len(data)
    info["header_bytes"] = start
    info["bpp"] = len(data) * 8 / (header.width * header.height)
    print(json.dumps(info))
    return 0


def main(cmd: str, argv: list[str]) -> int:
    return {"encode": cmd_encode, "decode": cmd_decode, "info": cmd_info}[cmd](argv)
