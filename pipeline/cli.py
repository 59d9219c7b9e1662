"""``msinn-pipeline``: transcode (and, later, re-encode, restore, verify, stats)."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .encoder import JobSpec
from .storage import storage_options_from_env


def add_target_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--target-bpp", type=float, help="size cap per image in bits per pixel")
    g.add_argument("--target-psnr", type=float, help="quality floor per image in dB")
    g.add_argument("--target-bytes", type=int, help="size cap per image in bytes")
    g.add_argument("--qp", type=float, help="fixed rate parameter")


def target_of(args: argparse.Namespace) -> tuple[str, float]:
    for kind, attr in (("bpp", "target_bpp"), ("psnr", "target_psnr"), ("bytes", "target_bytes"), ("qp", "qp")):
        v = getattr(args, attr, None)
        if v is not None:
            return kind, float(v)
    raise SystemExit("a target is required")


def transcode_parser(prog: str = "msinn-pipeline transcode") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Archive an image dataset with MS-INN on Ray.")
    p.add_argument("--input", required=True, help="fsspec URI: folder/prefix of images, *.tar shards or *.parquet")
    p.add_argument("--output", required=True, help="fsspec URI of the archive (bitstreams/, manifest/, summary.json)")
    add_target_args(p)
    p.add_argument("--model", help="bundled model name, or path/URI of a checkpoint (default: bundled weights)")
    p.add_argument("--input-kind", default="auto", choices=["auto", "files", "tar", "parquet"])
    p.add_argument("--key-column", default="key", help="Parquet inputs: column holding the key")
    p.add_argument("--image-column", default="image", help="Parquet inputs: column holding the image bytes")
    p.add_argument("--storage-options", type=json.loads, default=None,
                   help="JSON fsspec options for input and output (default: the storage's own configuration)")
    p.add_argument("--output-storage-options", type=json.loads, default=None)
    p.add_argument("--shard-bytes", type=int, default=256 << 20, help="loose files: input bytes per shard")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--actors", type=int, default=None, help="encoder actors (default: one per GPU, or CPUs/4)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--actor-resources", type=json.loads, default=None,
                   help='custom Ray resources each actor needs, e.g. {"accelerator_type:A100": 0.01}')
    p.add_argument("--max-pixels", type=int, default=256 << 20)
    p.add_argument("--tile-pixels", type=int, default=1 << 21)
    p.add_argument("--ms-ssim", action="store_true", help="also compute MS-SSIM per image")
    return p


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    kind, value = target_of(args)
    in_opts = storage_options_from_env(args.input, args.storage_options)
    out_opts = storage_options_from_env(args.output, args.output_storage_options or args.storage_options)
    return JobSpec(
        input=args.input,
        output=args.output,
        target_kind=kind,
        target_value=value,
        model=args.model,
        input_options=in_opts,
        output_options=out_opts,
        input_kind=args.input_kind,
        key_column=args.key_column,
        image_column=args.image_column,
        shard_bytes=args.shard_bytes,
        max_pixels=args.max_pixels,
        tile_pixels=args.tile_pixels,
        ms_ssim=args.ms_ssim,
        device=args.device,
    )


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stdout)


def cmd_transcode(argv: list[str], prog: str = "msinn-pipeline transcode") -> int:
    from .runner import JobError, run_job

    args = transcode_parser(prog).parse_args(argv)
    setup_logging()
    try:
        summary = run_job(spec_from_args(args), actors=args.actors, actor_resources=args.actor_resources,
                          cpus_per_actor=args.cpus_per_actor)
    except (JobError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 1 if summary["shards_failed"] else 0


COMMANDS = {"transcode": cmd_transcode}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: msinn-pipeline {" + ",".join(COMMANDS) + "} ...", file=sys.stderr if argv else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
