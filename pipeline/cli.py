"""``msinn-pipeline``: transcode, re-encode, scheduled runs, restore, verify, stats and queries.

Exit codes, the same for every command and for the ``jobs/*.py`` entry points:
0 everything succeeded; 1 the command ran but some shards, images or checks
failed (the JSON on stdout says which); 2 usage or configuration error (bad
arguments, an unreadable spec or archive, a model that does not load).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys

from msinn.cli.options import add_coding_args, add_target_args, coding_of
from msinn.cli.options import target_of as given_target

from .spec import JobSpec, check_limits
from .storage_options import options_arg


def target_of(args: argparse.Namespace) -> tuple[str, float]:
    """The job's target from the shared options (``msinn.cli.options``): every command needs one."""
    found = given_target(args)
    if found is None:
        raise SystemExit("a target is required")
    return found


def add_limit_args(p: argparse.ArgumentParser) -> None:
    """Per-image limits (``pipeline/limits.py``, ``pipeline/pool.py``): defaults a user can raise."""
    p.add_argument("--image-memory-mb", type=int, default=8192,
                   help="working memory one image may need, estimated from its header before decoding; larger "
                        "images get an error row (default 8192)")
    p.add_argument("--image-timeout", type=float, default=3600.0,
                   help="seconds one image may take to read or to encode before its actor is stopped; an image "
                        "that costs two actors gets an error row (default 3600)")


def transcode_parser(prog: str = "msinn-pipeline transcode") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Archive an image dataset with MS-INN on Ray.")
    p.add_argument("--input", required=True, help="fsspec URI: folder/prefix of images, *.tar shards or *.parquet")
    p.add_argument("--output", required=True, help="fsspec URI of the archive (bitstreams/, manifest/, summary.json)")
    add_target_args(p, required=True, lossless=True)
    p.add_argument("--model", help="bundled model name, or path/URI of a checkpoint (default: bundled weights)")
    p.add_argument("--input-kind", default="auto", choices=["auto", "files", "tar", "parquet"])
    p.add_argument("--key-column", default="key", help="Parquet inputs: column holding the key")
    p.add_argument("--image-column", default="image", help="Parquet inputs: column holding the image bytes")
    p.add_argument("--target-column", default=None,
                   help="Parquet inputs: column of per-image target values (same kind as the job's target; "
                        "null rows use the job's value)")
    p.add_argument("--storage-options", type=options_arg, default=None,
                   help="fsspec options for input and output, as @FILE.json (secrets belong there or in the "
                        "storage's environment, never on the command line) or inline JSON without secrets "
                        "(default: the storage's own configuration)")
    p.add_argument("--output-storage-options", type=options_arg, default=None)
    p.add_argument("--shard-bytes", type=int, default=256 << 20, help="loose files: input bytes per shard")
    p.add_argument("--read-ahead-bytes", type=int, default=64 << 20,
                   help="input bytes each actor reads ahead of its encoder (the actor's input memory bound)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--actors", type=int, default=None,
                   help="a fixed number of encoder actors (sets both --min-actors and --max-actors)")
    p.add_argument("--min-actors", type=int, default=None,
                   help="actors asked of the autoscaler at once, before any is placed (default 1)")
    p.add_argument("--max-actors", type=int, default=None,
                   help="the most actors at a time (default: as many as fit the cluster now: one per GPU with "
                        "--device cuda, CPUs/4 on CPU). On an autoscaling cluster that starts empty, set this: "
                        "actors that do not fit yet wait, and the autoscaler adds nodes for them")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--actor-resources", type=json.loads, default=None,
                   help='custom Ray resources each actor needs, e.g. {"accelerator_type:A100": 0.01}')
    p.add_argument("--max-pixels", type=int, default=256 << 20)
    p.add_argument("--tile-pixels", type=int, default=1 << 21)
    p.add_argument("--ms-ssim", action="store_true", help="also compute MS-SSIM per image")
    add_coding_args(p)
    add_limit_args(p)
    return p


def spec_from_args(args: argparse.Namespace) -> JobSpec:
    kind, value = target_of(args)
    # only options the user passed travel with tasks: credentials, endpoint and region resolve on each node
    in_opts = dict(args.storage_options or {})
    out_opts = dict(args.output_storage_options or args.storage_options or {})
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
        target_column=args.target_column,
        shard_bytes=args.shard_bytes,
        read_ahead_bytes=args.read_ahead_bytes,
        max_pixels=args.max_pixels,
        tile_pixels=args.tile_pixels,
        ms_ssim=args.ms_ssim,
        device=args.device,
        image_memory=args.image_memory_mb << 20,
        image_seconds=args.image_timeout,
        **coding_of(args),
    )


def setup_logging() -> None:
    """Log lines go to stderr, so that stdout carries only the JSON result."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def quiet_stdout() -> contextlib.AbstractContextManager:
    """While a job runs, anything printed goes to stderr: Ray prints its raylets' messages (a worker that died)
    on stdout, which carries only the JSON result."""
    return contextlib.redirect_stdout(sys.stderr)


def cmd_transcode(argv: list[str], prog: str = "msinn-pipeline transcode") -> int:
    from .runner import run_job
    from .spec import JobError

    args = transcode_parser(prog).parse_args(argv)
    setup_logging()
    try:
        check_limits(vars(args))
        with quiet_stdout():
            summary = run_job(spec_from_args(args), actors=args.actors, actor_resources=args.actor_resources,
                              cpus_per_actor=args.cpus_per_actor, min_actors=args.min_actors,
                              max_actors=args.max_actors)
    except (JobError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 1 if summary["shards_failed"] or summary["errors"] or summary.get("pool_error") else 0


def _archive_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("archive", help="fsspec URI of an archive written by transcode")
    p.add_argument("--storage-options", type=options_arg, default=None,
                   help="fsspec options for the archive: @FILE.json, or inline JSON without secrets")
    return p


def _canonical_args(args: argparse.Namespace) -> argparse.Namespace:
    """Archive and destination URIs in one absolute spelling: Ray workers run in other directories."""
    from .storage import canonical

    for name in ("archive", "dest"):
        if getattr(args, name, None):
            setattr(args, name, canonical(getattr(args, name)))
    return args


def _connect(args: argparse.Namespace, locked: bool = True):
    from .archive import connect

    return connect(args.archive, args.storage_options, locked=locked)


def cmd_stats(argv: list[str], prog: str = "msinn-pipeline stats") -> int:
    from .archive import ArchiveError
    from .stats import archive_stats, plot_distributions, stats_text

    p = _archive_parser(prog, "Size and quality statistics of an archive (current view).")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--csv", action="store_true", help="print CSV (statistic,value; groups flattened)")
    p.add_argument("--plot", help="write bpp and PSNR distributions to this PNG")
    args = _canonical_args(p.parse_args(argv))
    try:
        con = _connect(args)
        s = archive_stats(con)
        if args.plot:
            plot_distributions(con, args.plot)
    except (ArchiveError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s, default=str))
    elif args.csv:
        from .stats import flatten, format_csv

        print(format_csv(["statistic", "value"], flatten(s)), end="")
    else:
        print(stats_text(s))
    return 0


def cmd_query(argv: list[str], prog: str = "msinn-pipeline query") -> int:
    from .archive import ArchiveError, query
    from .stats import format_csv, format_json, format_table

    p = _archive_parser(
        prog,
        "SQL over an archive: views 'manifest' (current rows) and 'all_rows'. This is full DuckDB SQL run as "
        "you: it can read and write any file you can (COPY, read_csv, ATTACH). Never pass it SQL you did not "
        "write; selections elsewhere (--where, spec files) are limited to one condition on the manifest.",
    )
    p.add_argument("sql")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    args = _canonical_args(p.parse_args(argv))
    try:
        cols, rows = query(_connect(args, locked=False), args.sql)
    except (ArchiveError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    fmt = {"table": format_table, "json": format_json, "csv": format_csv}[args.format]
    print(fmt(cols, rows))
    return 0


def _selection(args: argparse.Namespace, sample: int | None = None, seed: int = 0, every: bool = False):
    """The ok rows a --where selects (``every``: error rows too, which may hold a failed image's bytes), in
    batches; each reads its bitstream from this archive's shards only."""
    from .archive import iter_select

    # the user's condition is checked and re-rendered alone, then put inside the guard: it cannot widen it
    guard = None if every else "status = 'ok'"
    order = "source" if every else "key"
    for batch in iter_select(_connect(args), args.where, sample=sample, seed=seed, guard=guard, order=order):
        yield [dict(r, archive_root=args.archive) for r in batch]


def _first_batch(batches):
    """Run the selection's query now, so a bad --where or archive fails before any task starts."""
    import itertools

    first = next(batches, [])
    return itertools.chain([first], batches)


def cmd_restore(argv: list[str], prog: str = "msinn-pipeline restore") -> int:
    from .archive import ArchiveError
    from .restore import run_decode_jobs

    p = _archive_parser(prog, "Decode a selection of an archive back to image files, or give the input back in "
                        "its own shape (--layout source).")
    p.add_argument("dest", help="fsspec URI of the destination folder")
    p.add_argument("--where", help="SQL predicate over the manifest, e.g. \"bpp > 0.5\"")
    p.add_argument("--layout", choices=["flat", "source"], default="flat",
                   help="flat: one image file per key (--format); source: the input as it was laid out: its tars "
                        "(same names, members and order), Parquet files (same columns and rows) and folders, "
                        "exact rows byte for byte or pixel for pixel, every other part of a sample byte for byte")
    p.add_argument("--format", default="png", help="flat layout: image format of the restored files (png, webp, "
                   "tiff, ...)")
    p.add_argument("--model", action="append", help="model name or checkpoint; repeatable: each row decodes with "
                   "the one holding its weights, other rows with the model they name")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dest-storage-options", type=options_arg, default=None)
    args = _canonical_args(p.parse_args(argv))
    setup_logging()
    source = args.layout == "source"
    try:
        batches = _first_batch(_selection(args, every=source))
    except (ArchiveError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    if source:
        from .rebuild import input_root, run_rebuild

        with quiet_stdout():
            out = run_rebuild(batches, args.storage_options, args.model, args.device, args.dest,
                              args.dest_storage_options, input_root(args.archive, args.storage_options))
        print(json.dumps(out, indent=2))
        return 1 if out["failed"] else 0
    with quiet_stdout():
        report = run_decode_jobs(batches, args.storage_options, args.model, args.device, args.dest,
                                 args.dest_storage_options, args.format)
    print(json.dumps({"selected": report.checked, "restored": report.ok, "failed": report.failed}, indent=2))
    return 1 if report.failed else 0


def cmd_verify(argv: list[str], prog: str = "msinn-pipeline verify") -> int:
    from .archive import ArchiveError
    from .restore import run_decode_jobs

    p = _archive_parser(prog, "Decode a selection (or a random sample) and check every hash.")
    p.add_argument("--where", help="SQL predicate over the manifest")
    p.add_argument("--sample", type=int, help="verify a random sample of this many rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", action="append", help="model name or checkpoint; repeatable: each row decodes with "
                   "the one holding its weights, other rows with the model they name")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = _canonical_args(p.parse_args(argv))
    setup_logging()
    try:
        batches = _first_batch(_selection(args, args.sample, args.seed))
    except (ArchiveError, FileNotFoundError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    with quiet_stdout():
        report = run_decode_jobs(batches, args.storage_options, args.model, args.device, None, None, "png")
    print(json.dumps({"checked": report.checked, "ok": report.ok, "mismatches": report.failed}, indent=2))
    return 1 if report.failed else 0


def reencode_parser(prog: str) -> argparse.ArgumentParser:
    p = _archive_parser(prog, "Re-encode the rows of an archive that a SQL predicate selects.")
    p.add_argument("--where", help="SQL predicate over the current manifest, e.g. \"status = 'error'\"")
    add_target_args(p, required=True, lossless=True)
    p.add_argument("--model", help="model for the new encodes (default: bundled weights)")
    p.add_argument("--from", dest="source_mode", default="auto", choices=["auto", "source", "bitstream"],
                   help="re-encode from the original image, the decoded bitstream, or the first that works")
    p.add_argument("--decode-model", action="append",
                   help="checkpoint to decode old bitstreams with, when not bundled (repeatable)")
    p.add_argument("--rows-per-shard", type=int, default=256)
    p.add_argument("--actors", type=int, default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    add_coding_args(p)
    p.add_argument("--gc", action="store_true", help="afterwards, delete shards no current row references")
    p.add_argument("--retention-hours", type=float, default=168.0, help="gc keeps unreferenced shards this long")
    p.add_argument("--source-prefix", default=None,
                   help="where originals may be read (--from source or auto): only under this prefix, never where "
                        "the archive's own files say. Without it no original is read: --from auto re-encodes from "
                        "the bitstreams and --from source is refused. Rows elsewhere are re-encoded from their "
                        "bitstreams (auto) or fail")
    add_limit_args(p)
    return p


def cmd_reencode(argv: list[str], prog: str = "msinn-pipeline reencode") -> int:
    from .archive import ArchiveError
    from .reencode import gc_shards, run_reencode
    from .spec import JobError

    args = _canonical_args(reencode_parser(prog).parse_args(argv))
    setup_logging()
    kind, value = target_of(args)
    opts = args.storage_options
    try:
        check_limits(vars(args))
        with quiet_stdout():
            summary = run_reencode(args.archive, args.where, kind, value, args.model, args.source_mode, opts,
                                   args.decode_model, args.rows_per_shard, args.actors, device=args.device,
                                   source_prefix=args.source_prefix, image_memory=args.image_memory_mb << 20,
                                   image_seconds=args.image_timeout, **coding_of(args))
        if args.gc:
            summary["gc"] = gc_shards(args.archive, opts, args.retention_hours)
    except (ArchiveError, JobError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return _report_reencode(summary, prog)


def _report_reencode(summary: dict, prog: str) -> int:
    """Print a re-encode's summary; exit code 1 when shards or images failed or gc refused to run."""
    print(json.dumps(summary, indent=2))
    if summary.get("gc", {}).get("refused"):
        print(f"{prog}: gc {summary['gc']['refused']}", file=sys.stderr)
        return 1
    return 1 if summary.get("shards_failed") or summary.get("errors_this_run") or summary.get("pool_error") else 0


def cmd_scheduled(argv: list[str], prog: str = "msinn-pipeline scheduled") -> int:
    from .archive import ArchiveError
    from .scheduled import run_scheduled
    from .spec import JobError

    p = argparse.ArgumentParser(
        prog=prog, description="One scheduled re-encode run from a TOML spec (for cron or a Kubernetes CronJob): "
        "select rows, re-encode them, optionally collect garbage. Nothing selected is a no-op; an interrupted run "
        "is resumed by the next.")
    p.add_argument("spec", help="TOML file: archive, where, [target] kind and value, model, from, gc, ...")
    args = p.parse_args(argv)
    setup_logging()
    try:
        with quiet_stdout():
            summary = run_scheduled(args.spec)  # a bad spec is reported in one line, before anything heavy starts
    except (ArchiveError, JobError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    return _report_reencode(summary, prog)


COMMANDS = {
    "transcode": (cmd_transcode, "archive a dataset: images, tars or Parquet in; bitstream shards and a manifest out"),
    "reencode": (cmd_reencode, "re-encode the rows a SQL condition selects (new target, new model, retries)"),
    "scheduled": (cmd_scheduled, "one scheduled re-encode run from a TOML spec"),
    "restore": (cmd_restore, "decode a selection of an archive back to image files"),
    "verify": (cmd_verify, "decode a selection or sample and check every hash"),
    "stats": (cmd_stats, "size and quality statistics of an archive"),
    "query": (cmd_query, "full DuckDB SQL over an archive's manifest (trusted input only)"),
}

EXIT_CODES = "exit codes: 0 ok; 1 some shards, images or checks failed; 2 usage or configuration error"


def main_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msinn-pipeline", description="Archive image datasets with the MS-INN codec on Ray.",
        epilog=f"run 'msinn-pipeline COMMAND --help' for a command's options. {EXIT_CODES}.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)  # each command parses its own options
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    try:
        main_parser().parse_args(argv)  # prints help, or a usage error naming the unknown command
    except SystemExit as exc:
        return int(exc.code or 0)
    return 2


if __name__ == "__main__":
    sys.exit(main())
