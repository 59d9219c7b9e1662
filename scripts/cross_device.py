"""Cross-device proof for the portable profile: encode on one machine, decode on another.

    # on machine A (say a CUDA GPU): code a folder of images, record the encoder's pixels
    python scripts/cross_device.py encode ../shared/datasets/kodak out/ --device cuda --qps 0,2.5,5,7.75,10
    # on machine B (say a CPU, any thread count): decode them, compare pixel for pixel
    python scripts/cross_device.py decode out/ --device cpu --threads 3

``encode`` writes ``NAME.qpQ.msinn`` files and ``expected.json`` (SHA-256 of
each file's decoded pixels as the encoder reconstructed them, and where it
ran). ``decode`` prints one JSON summary line and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def encode(args: argparse.Namespace) -> int:
    import msinn
    from msinn.determinism import numerics_record
    from msinn.encoding import encode_image
    from msinn.images import pixels_sha256
    from msinn.ratecontrol import Target

    model = msinn.load(args.model, args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    qps = [float(q) for q in args.qps.split(",")]
    images = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    expected, t0 = {}, time.perf_counter()
    for img in images[: args.limit]:
        for qp in qps:
            res = encode_image(model, img.read_bytes(), Target("qp", qp), source_name=img.name)
            name = f"{img.stem}.qp{qp:g}.msinn"
            (out / name).write_bytes(res.data)
            expected[name] = pixels_sha256(res.reconstruction)
    meta = {"model": model.model_name, "weights_sha256": model.weights_sha256,
            "written_on": numerics_record(torch.device(args.device)), "files": expected}
    (out / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
    seconds = round(time.perf_counter() - t0, 1)
    print(json.dumps({"encoded": len(expected), "on": meta["written_on"], "seconds": seconds}))
    return 0


def decode(args: argparse.Namespace) -> int:
    import msinn
    from msinn.decoding import decode_image
    from msinn.determinism import numerics_record
    from msinn.errors import BitstreamError
    from msinn.images import pixels_sha256

    folder = Path(args.folder)
    meta = json.loads((folder / "expected.json").read_text())
    model = msinn.load(args.model or meta["model"], args.device)
    same, differ, t0 = 0, [], time.perf_counter()
    for name, digest in sorted(meta["files"].items()):
        try:
            got = pixels_sha256(decode_image((folder / name).read_bytes(), model, name).pixels)
        except BitstreamError as exc:
            differ.append(f"{name}: {exc}")
            continue
        if got == digest:
            same += 1
        else:
            differ.append(f"{name}: pixels differ")
    print(json.dumps({"identical": same, "files": len(meta["files"]), "written_on": meta["written_on"],
                      "decoded_on": numerics_record(torch.device(args.device)), "differences": differ[:20],
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0 if not differ else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("encode")
    e.add_argument("images")
    e.add_argument("out")
    e.add_argument("--qps", default="0,2.5,5,7.75,10")
    e.add_argument("--limit", type=int)
    d = sub.add_parser("decode")
    d.add_argument("folder")
    for p in (e, d):
        p.add_argument("--device", default="cpu")
        p.add_argument("--threads", type=int, default=0)
        p.add_argument("--model", default=None)  # encode: the default model; decode: the one each file names
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return encode(args) if args.cmd == "encode" else decode(args)


if __name__ == "__main__":
    sys.exit(main())
