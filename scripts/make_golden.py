"""Write portable golden files under tests/golden/, recording the configuration that wrote them.

    python scripts/make_golden.py [--device cpu|cuda] [--threads N] [--tag TAG] [--only NAME,NAME]

Each file is coded with the bundled portable model from a crop of the README's
sample images or a synthetic image, and golden.json records the SHA-256 of its
decoded pixels, taken from the encoder's own reconstruction, and where it was
written (device, CPU architecture, threads, torch version). Every CI run
decodes them again and must get those pixels: they pin the format and show
that files written in another configuration decode on CI's machine.

``--verify`` writes nothing: it decodes every golden file and compares its
pixels with golden.json (exit 1 on any difference), so another configuration
can check the files the others wrote.

Each file is decoded with the model golden.json names for it, so the files of
every published portable model keep being checked; a new default writes its own
set (``--tag`` with the model's short name, say ``11e-p1`` for a model named ``msinn-small-2026-11e-p1``).

``--tag`` names a set written elsewhere (``TAG-NAME.msinn``; say an older
torch or another CPU architecture); entries are merged into golden.json,
others kept. Run it with the interpreter of that configuration, with
``PYTHONPATH`` set to the checkout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
OUT = REPO / "tests" / "golden"


def _images() -> dict[str, tuple[Image.Image, dict]]:
    k03 = Image.open(REPO / "samples" / "kodim03.png").convert("RGB")
    k23 = Image.open(REPO / "samples" / "kodim23.png").convert("RGB")
    rng = np.random.default_rng(20261125)
    y, x = np.mgrid[0:96, 0:160]
    grad = np.stack([x * 255 // 159, y * 255 // 95, (x + y) * 255 // 254], axis=-1).astype(np.uint8)
    noisy = np.clip(grad.astype(int) + rng.integers(-40, 41, grad.shape), 0, 255).astype(np.uint8)
    alpha = (rng.random((96, 160)) * 255).astype(np.uint8)
    rgba = Image.fromarray(np.dstack([noisy, alpha]), "RGBA")
    return {
        "k03-qp4": (k03.crop((200, 100, 392, 228)), {"kind": "qp", "value": 4}),
        "k03-qp7.375": (k03.crop((0, 0, 256, 192)), {"kind": "qp", "value": 7.375}),
        "k23-bpp0.3": (k23.crop((300, 200, 428, 392)), {"kind": "bpp", "value": 0.3}),
        "k23-tiles-qp2.5": (k23.crop((100, 50, 356, 242)), {"kind": "qp", "value": 2.5, "tile_pixels": 4096,
                                                           "tile_size": 128}),
        "gray-qp0": (k03.crop((500, 300, 565, 371)).convert("L"), {"kind": "qp", "value": 0}),
        "rgba-noise-qp10": (rgba, {"kind": "qp", "value": 10}),
        "gradient-psnr36": (Image.fromarray(grad), {"kind": "psnr", "value": 36.0}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="", help="portable model that writes the files (default: the default model)")
    ap.add_argument("--tag", default="", help="prefix of the files' names: a set written in another configuration")
    ap.add_argument("--only", default="", help="comma-separated image names (default: all)")
    ap.add_argument("--verify", action="store_true", help="decode every golden file and compare, write nothing")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.verify:
        sys.exit(verify(args))
    import io

    import msinn
    from msinn.determinism import numerics_record
    from msinn.encoding import EncodeOptions, encode_image
    from msinn.images import pixels_sha256
    from msinn.ratecontrol import Target

    model = msinn.load(args.model or None, args.device)
    OUT.mkdir(parents=True, exist_ok=True)
    index_path = OUT / "golden.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    wanted = set(filter(None, args.only.split(",")))
    for base, (im, t) in _images().items():
        if wanted and base not in wanted:
            continue
        name = f"{args.tag}-{base}" if args.tag else base
        buf = io.BytesIO()
        im.save(buf, "PNG")
        opts = EncodeOptions(tile_pixels=t.get("tile_pixels", 1 << 21), tile_size=t.get("tile_size", 1024))
        res = encode_image(model, buf.getvalue(), Target(t["kind"], t["value"]), opts, source_name=name)
        (OUT / f"{name}.msinn").write_bytes(res.data)
        index[name] = {
            "file": f"{name}.msinn",
            "pixels_sha256": pixels_sha256(res.reconstruction),
            "shape": list(res.reconstruction.shape),
            "model": res.header.model_name,
            "qp": res.qp,
            "bytes": res.bytes,
            "written_on": numerics_record(torch.device(args.device)),
        }
        print(name, res.bytes, "bytes", res.qp, f"{res.psnr:.2f} dB")
    index_path.write_text(json.dumps(index, indent=1) + "\n")


def verify(args: argparse.Namespace) -> int:
    """Decode every file golden.json lists here; print one JSON line; 1 if any pixels differ."""
    import msinn
    from msinn.decoding import decode_image
    from msinn.determinism import numerics_record
    from msinn.images import pixels_sha256

    index = json.loads((OUT / "golden.json").read_text())
    models = {m: msinn.load(m, args.device) for m in sorted({e["model"] for e in index.values()})}
    differ = [name for name, e in index.items()
              if pixels_sha256(decode_image((OUT / e["file"]).read_bytes(), models[e["model"]], name).pixels)
              != e["pixels_sha256"]]
    print(json.dumps({"identical": len(index) - len(differ), "files": len(index), "differ": differ,
                      "decoded_on": numerics_record(torch.device(args.device))}))
    return 1 if differ else 0


if __name__ == "__main__":
    main()
