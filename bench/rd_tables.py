"""Markdown tables from ``msinn eval --json`` files: per-quality points of every codec, BD-rates, choice.

    python bench/rd_tables.py docs/rd-kodak-codecs.json [docs/rd-graphics.json ...]

What docs/comparison.md shows, made from the measurements themselves, so the
tables cannot drift from the JSON they cite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from msinn.evaluation.rd import floor_winner, image_curves  # noqa: E402


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def tables(doc: dict) -> str:
    """The markdown of one eval document."""
    out = []
    n = len(doc["per_image"])
    out.append(f"Model `{doc['model']}`, {n} images, real coding, means over images.\n")
    out.append("| codec | setting | bpp | PSNR dB | MS-SSIM | encode s |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    for p in doc["points"]:
        out.append(f"| msinn | qp {p['qp']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {_f(p['ms_ssim'], '.4f')} | "
                   f"{p['encode_s']:.2f} |")
    for c, pts in doc["codecs"].items():
        for p in pts:
            out.append(f"| {c} | q {p['quality']} | {p['bpp']:.3f} | {p['psnr']:.2f} | {_f(p['ms_ssim'], '.4f')} | "
                       f"{p['encode_s']:.2f} |")
    out.append("")
    out.append("| BD-rate of the model vs (PSNR, PCHIP; negative: the model saves bits) | " +
               " | ".join(doc["bd_rate"]) + " |")
    out.append("| --- |" + " --- |" * len(doc["bd_rate"]))
    out.append("| msinn | " + " | ".join(f"{_f(v, '+.1f')}%" for v in doc["bd_rate"].values()) + " |")
    choice = doc.get("choice")
    if choice:
        curves = choice["curves"]
        names = list(curves)
        out.append("")
        out.append(f"Mean bpp at each PSNR floor (each image at the floor, from its own points); choice: "
                   f"{'+'.join(choice['codecs'])}.\n")
        out.append("| floor dB | " + " | ".join(names) + " |")
        out.append("| --- |" + " --- |" * len(names))
        for f in choice["floors"]:
            cells = []
            for name in names:
                c = curves[name]
                cells.append(_f(dict(zip(c["psnr"], c["bpp"])).get(float(f)), ".3f"))
            out.append(f"| {f:g} | " + " | ".join(cells) + " |")
        out.append("")
        out.append("| BD-rate of the choice vs | " + " | ".join(choice["bd_rate_vs"]) + " |")
        out.append("| --- |" + " --- |" * len(choice["bd_rate_vs"]))
        out.append("| choice | " + " | ".join(f"{_f(v, '+.1f')}%" for v in choice["bd_rate_vs"].values()) + " |")
        out.append("")
        out.append(wins(doc, choice["codecs"]))
    return "\n".join(out) + "\n"


def wins(doc: dict, choice: list[str]) -> str:
    """How many images each codec of the choice wins at each floor (the smaller file at equal PSNR)."""
    floors = doc["choice"]["floors"]
    rows = ["| images won at floor | " + " | ".join(f"{f:g}" for f in floors) + " |",
            "| --- |" + " --- |" * len(floors)]
    counts = {c: [] for c in choice}
    curves = [image_curves(im) for im in doc["per_image"]]
    for f in floors:
        winners = [floor_winner(curves_of, choice, float(f)) for curves_of in curves]
        for c in choice:
            counts[c].append(sum(w is not None and w[0] == c for w in winners))
    for c in choice:
        rows.append(f"| {c} | " + " | ".join(str(v) for v in counts[c]) + " |")
    return "\n".join(rows)


def main() -> None:
    for path in sys.argv[1:]:
        print(f"## {path}\n")
        print(tables(json.loads(Path(path).read_text())))


if __name__ == "__main__":
    main()
