"""``msinn eval DIR``: the command line of :mod:`msinn.evaluation.rd`.

Parses the options, checks which classical codecs this Pillow build has,
loads the model(s), runs the evaluation and writes the table, JSON and plot.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..atomic import write_atomic
from ..classical import CODEC_QUALITIES, codec_available
from ..evaluation.rd import compare, evaluate, log_stderr
from ..evaluation.report import format_table, load_paper_rd, plot_rd, resumable, to_json

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAPER_RD = REPO_ROOT.parent / "shared" / "reference" / "paper_rd.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msinn eval",
        description="Rate-distortion evaluation with real coding, optionally against JPEG/WebP/AVIF.",
    )
    p.add_argument("dir", help="folder, file or fsspec URI of images")
    p.add_argument("--model", help="registered model name or checkpoint path (default: bundled weights)")
    p.add_argument("--also-model", action="append", default=[], metavar="MODEL",
                   help="other weights that compete with --model at each qp, as `msinn encode --also-model` "
                   "makes them (repeatable): each point is the file with the lower training loss there")
    p.add_argument("--json", dest="json_out", metavar="OUT",
                   help="write the results as JSON (rewritten after every image, so an interrupted run keeps its work)")
    p.add_argument("--resume", action="store_true",
                   help="take the images already in the --json file from there instead of coding them again")
    p.add_argument("--plot", metavar="OUT.png", help="write RD curves as a PNG")
    p.add_argument("--codecs", default="", help=f"comma-separated classical codecs: {','.join(CODEC_QUALITIES)}")
    p.add_argument("--qps", help="comma-separated rate parameters (default: every anchor)")
    p.add_argument("--choice", default="",
                   help="also report the per-image choice among these codecs (e.g. msinn,avif) at PSNR floors "
                        "30..40 dB, from each image's measured points, with its BD-rate against each codec")
    p.add_argument("--limit", type=int, help="evaluate at most N (readable) images")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--compare",
        metavar="MODEL",
        help="also code the images with MODEL and report the BD-rate and speed of --model against it "
        "(e.g. a portable model against the float model it was converted from)",
    )
    p.add_argument(
        "--paper-rd",
        default=str(DEFAULT_PAPER_RD),
        metavar="PATH",
        help="JSON with the paper's Kodak RD points for the plot ('' to leave them out)",
    )
    return p


def _parse_qps(text: str) -> list[int | float]:
    out: list[int | float] = []
    for part in text.split(","):
        v = float(part.strip())
        out.append(int(v) if v.is_integer() else v)
    return out


def _write_json(path: Path, doc: dict) -> None:
    """Replace ``path`` whole (a reader or a crash never sees half a file)."""
    write_atomic(path, json.dumps(doc, indent=1) + "\n")


def _earlier_results(path: Path, model_name: str) -> list[dict]:
    """Per-image results of an earlier run of the same model, from its --json file (none if it is absent); a
    ValueError (one line) when the file is not one this command wrote, or was damaged or edited since."""
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot be resumed: not readable JSON ({exc})") from None
    try:
        per_image = resumable(doc, model_name)
    except ValueError as exc:
        raise ValueError(f"cannot be resumed: {exc}") from None
    log_stderr(f"msinn eval: resuming: {len(per_image)} image(s) already in {path}")
    return per_image


def main(argv: list[str]) -> int:
    """Entry point of ``msinn eval``; returns the exit status."""
    p = _parser()
    args = p.parse_args(argv)
    codecs = [c.strip().lower() for c in args.codecs.split(",") if c.strip()]
    unknown = [c for c in codecs if c not in CODEC_QUALITIES]
    if unknown:
        p.error(f"unknown codec(s) {unknown}; choose from {','.join(CODEC_QUALITIES)}")
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    if args.resume and not args.json_out:
        p.error("--resume needs --json (the file to resume from)")
    try:
        qps_arg = _parse_qps(args.qps) if args.qps else None
    except ValueError:
        p.error(f"--qps must be comma-separated numbers, got {args.qps!r}")
    available = []
    for c in dict.fromkeys(codecs):
        why = codec_available(c)
        if why is None:
            available.append(c)
        else:
            log_stderr(f"msinn eval: codec {c} is not available in this Pillow build ({why}); skipping it")

    import msinn

    from ..image_files import list_images

    try:
        uris = list_images(args.dir)
    except (FileNotFoundError, OSError, ValueError) as exc:
        log_stderr(f"msinn eval: error: {exc}")
        return 1
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            log_stderr("msinn eval: error: --device cuda requested but CUDA is not available")
            return 1
    try:
        model = msinn.load(args.model, args.device)
    except (msinn.CheckpointError, FileNotFoundError) as exc:
        log_stderr(f"msinn eval: error: cannot load model: {exc}")
        return 1
    try:
        also = [msinn.load(m, args.device) for m in args.also_model]
        if also:
            from ..weights_set import shared_lambdas

            shared_lambdas([model, *also])  # weights whose qps mean other trades are refused before any coding
    except (msinn.CheckpointError, FileNotFoundError, ValueError) as exc:
        log_stderr(f"msinn eval: error: cannot use --also-model: {exc}")
        return 1
    qps = qps_arg if qps_arg is not None else list(range(model.anchor_num))
    for qp in qps:
        try:
            model.check_qp(qp)
        except (TypeError, ValueError) as exc:
            p.error(str(exc))
    name = "+".join([model.model_name or str(args.model or "default"),
                     *(m.model_name or str(a) for m, a in zip(also, args.also_model))])
    log_stderr(f"msinn eval: {len(uris)} file(s), model {name}, qps {qps}, codecs {available or 'none'}")

    choice = [c.strip().lower() for c in args.choice.split(",") if c.strip()]
    bad = [c for c in choice if c != "msinn" and c not in available]
    if bad:
        p.error(f"--choice names codecs not measured in this run: {bad} (add them to --codecs)")
    try:
        done = _earlier_results(Path(args.json_out), name) if args.resume else []
    except ValueError as exc:
        log_stderr(f"msinn eval: error: {args.json_out}: {exc}")
        return 1

    def checkpoint(partial: dict) -> None:
        _write_json(Path(args.json_out), to_json(name, partial))

    try:
        result = evaluate(model, uris, qps, available, limit=args.limit, done=done,
                          checkpoint=checkpoint if args.json_out else None, also=also)
    except ValueError as exc:  # --resume from a file of another sweep
        log_stderr(f"msinn eval: error: {args.json_out}: {exc}")
        return 1
    if not result["per_image"]:
        log_stderr(f"msinn eval: error: none of the {len(uris)} file(s) could be read")
        return 1
    if choice:
        from ..evaluation.rd import floor_curves

        result["choice"] = floor_curves(result, choice)
    if args.compare:
        try:
            other = msinn.load(args.compare, args.device)
        except (msinn.CheckpointError, FileNotFoundError) as exc:
            log_stderr(f"msinn eval: error: cannot load model to compare: {exc}")
            return 1
        other_name = other.model_name or str(args.compare)
        log_stderr(f"msinn eval: comparing with {other_name}")
        result["compare"] = compare(other_name, evaluate(other, uris, qps, (), limit=args.limit), result)
    print(format_table(name, result))
    if args.json_out:
        _write_json(Path(args.json_out), to_json(name, result))
        log_stderr(f"msinn eval: wrote {args.json_out}")
    if args.plot:
        paper = load_paper_rd(args.paper_rd) if args.paper_rd else {}
        if args.paper_rd and not paper and args.paper_rd != str(DEFAULT_PAPER_RD):
            log_stderr(f"msinn eval: no paper RD points read from {args.paper_rd}")
        n = len(result["per_image"])
        where = Path(args.dir.rstrip("/")).name or args.dir
        plot_rd(args.plot, name, result, paper, title=f"Rate-distortion on {n} image{'s' if n != 1 else ''} of {where}")
        log_stderr(f"msinn eval: wrote {args.plot}")
    return 0
