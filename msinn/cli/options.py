"""The target and coding options, defined once for ``msinn encode`` and every ``msinn-pipeline`` command.

One target per run: a size cap (``--bpp``, ``--bytes``), a quality floor
(``--psnr``), the model's rate parameter (``--qp``) or, where a command
stores exact files, ``--lossless``. The short spellings are the primary
ones; ``--target-bpp``, ``--target-psnr`` and ``--target-bytes`` are the same
options under the names the pipeline has always used. Values are parsed
here and checked once, where the target is built (``msinn.ratecontrol.Target``).
"""

from __future__ import annotations

import argparse

TARGETS = (("bpp", float, "size cap in bits per pixel (largest quality within it)"),
           ("psnr", float, "quality floor in dB (smallest file reaching it)"),
           ("bytes", int, "size cap in bytes for each image's file"))


def add_target_args(p: argparse.ArgumentParser, required: bool = False, lossless: bool = False) -> None:
    """``--bpp/--target-bpp``, ``--psnr/--target-psnr``, ``--bytes/--target-bytes``, ``--qp`` (and ``--lossless``)."""
    g = p.add_mutually_exclusive_group(required=required)
    for name, kind, text in TARGETS:
        g.add_argument(f"--{name}", f"--target-{name}", dest=name, type=kind, help=text)
    g.add_argument("--qp", type=float, help="the model's rate parameter, 0 .. anchors-1 (fractions interpolate)")
    if lossless:
        g.add_argument("--lossless", action="store_true", default=None,
                       help="store every image exactly: JPEGs recompressed to give the original bytes back "
                            "(Lepton, else JPEG XL), other images pixel-lossless (JPEG XL, WebP or PNG), or the "
                            "original file as it is when nothing is smaller")


def target_of(args: argparse.Namespace) -> tuple[str, float] | None:
    """(kind, value) of the target given, or None."""
    if getattr(args, "lossless", None):
        return "lossless", 0.0
    for kind in ("bpp", "psnr", "bytes", "qp"):
        v = getattr(args, kind, None)
        if v is not None:
            return kind, float(v)
    return None


def add_coding_args(p: argparse.ArgumentParser) -> None:
    """``--codecs``, ``--avif-speed``, ``--effort`` and ``--also-model``: how each image may be coded beyond its
    target."""
    p.add_argument("--codecs", default="msinn",
                   help="formats each image may be stored in, comma-separated: msinn, avif, jpeg, webp, jxl, lossless "
                        "(the exact file of --lossless, competing at the target) (default msinn). Per image the best "
                        "file at the target is kept: within a cap the highest PSNR, for a PSNR floor the smallest "
                        "file; with --qp the model's PSNR at that qp is the others' floor")
    p.add_argument("--avif-speed", type=int, default=6, help="AVIF encoder speed, 0 (slowest, smallest) .. 10")
    p.add_argument("--effort", type=int, default=0,
                   help="the model's encoder-side refinement level: 0 none, 1 or 2 (fewer bits at many times the "
                        "encode time: docs/refinement.md)")
    p.add_argument("--also-model", action="append", default=[], metavar="MODEL",
                   help="other weights that compete with --model on each image (repeatable; e.g. the graphics "
                        "specialist msinn-small-graphics-2026-12-p1): the better file is kept, as between codecs, "
                        "at each model's encode time; a --qp means --model's qp, and the files there are compared "
                        "by the loss the weights were trained for (docs/weights-choice.md)")


def coding_of(args: argparse.Namespace) -> dict:
    """The coding options as the job and the codec take them (codec names checked here)."""
    from ..choice import parse_codecs

    return {"codecs": parse_codecs(args.codecs), "avif_speed": args.avif_speed, "effort": args.effort,
            "also_models": tuple(args.also_model or ())}
