"""Encode/decode speed, side by side in one process: against the reference, or portable against float.

    python bench/codec_speed.py --reference /path/to/MSINN-VRLIC [--image kodim01.png] [--repeats 3]
    python bench/codec_speed.py --portable [--images 4] [--repeats 5] [--qp 5] [--device cpu]

``--reference``: the reference is imported from a local checkout (never
committed here). Both run the released configuration with the conformance
recipe weights on the same image and qp, alternately; outputs must be identical.

``--portable``: the bundled portable model against the float model it was
converted from, through the whole codec (``encode_image`` at a fixed qp with
the reconstruction and container, ``decode_image`` with every check), on the
same Kodak images alternately. Prints seconds per image (the median, and each
image's fastest repeat, the least disturbed by other load) and the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from msinn import MSINN  # noqa: E402
from msinn.model import LEVELS  # noqa: E402


def _recipe_sd(anchor_num: int) -> dict:
    spec = importlib.util.spec_from_file_location("recipe", SHARED / "conformance" / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    schema = json.loads((SHARED / "conformance" / "vectors" / "index.json").read_text())["schemas"]
    return mod.recipe_state_dict(schema[f"anchor{anchor_num}"]["state_dict"])


def _timeit(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def portable_vs_float(args: argparse.Namespace) -> None:
    import msinn
    from msinn.decoding import decode_image
    from msinn.encoding import encode_image
    from msinn.ratecontrol import Target

    models = {
        "float": msinn.load(args.float_model, args.device),
        "portable": msinn.load(args.portable_model, args.device),
    }
    images = sorted((SHARED / "datasets" / "kodak").glob("*.png"))[: args.images]
    times: dict[str, list[float]] = {f"{k} {op}": [] for k in models for op in ("encode", "decode")}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    for img in images:
        data = img.read_bytes()
        for rep in range(args.repeats + 1):  # the first round warms up
            for name, model in models.items():  # alternately, so load changes hit both alike
                sync()
                t0 = time.perf_counter()
                res = encode_image(model, data, Target("qp", args.qp))
                sync()
                t1 = time.perf_counter()
                decode_image(res.data, model)
                sync()
                t2 = time.perf_counter()
                if rep:
                    times[f"{name} encode"].append(t1 - t0)
                    times[f"{name} decode"].append(t2 - t1)
    n = args.repeats
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: statistics.mean(min(v[i * n : (i + 1) * n]) for i in range(len(images))) for k, v in times.items()}
    print(json.dumps({
        "device": args.device,
        "threads": torch.get_num_threads(),
        "images": [p.name for p in images],
        "qp": args.qp,
        "median_seconds_per_image": {k: round(v, 3) for k, v in med.items()},
        "best_seconds_per_image": {k: round(v, 3) for k, v in best.items()},
        "encode_ratio": round(med["portable encode"] / med["float encode"], 2),
        "decode_ratio": round(med["portable decode"] / med["float decode"], 2),
        "encode_ratio_best": round(best["portable encode"] / best["float encode"], 2),
        "decode_ratio_best": round(best["portable decode"] / best["float decode"], 2),
    }, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", help="local checkout of hytu99/MSINN-VRLIC")
    ap.add_argument("--portable", action="store_true", help="time the portable model against its float model")
    ap.add_argument("--image", default=str(SHARED / "datasets" / "kodak" / "kodim01.png"))
    ap.add_argument("--qp", type=float, default=None, help="rate parameter (default 3.5; 5 with --portable)")
    ap.add_argument("--anchors", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--images", type=int, default=4, help="--portable: Kodak images to code")
    ap.add_argument("--device", default="cpu", help="--portable: cpu or cuda")
    ap.add_argument("--float-model", default="msinn-small-2026-12b")
    ap.add_argument("--portable-model", default="msinn-small-2026-12b-p1")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.portable:
        args.qp = 5.0 if args.qp is None else args.qp
        portable_vs_float(args)
        return
    if not args.reference:
        ap.error("give --reference PATH (against the reference) or --portable (portable against float)")
    args.qp = 3.5 if args.qp is None else args.qp

    sys.path.insert(0, str(Path(args.reference).resolve()))
    from models.msinn import MSINNCompression  # type: ignore

    sd = _recipe_sd(args.anchors)
    ref = MSINNCompression(anchor_num=args.anchors)
    ref.load_state_dict(sd, strict=False)
    ref.update(force=True)
    ref.eval()
    ours = MSINN(anchor_num=args.anchors)
    ours.load_state_dict(sd, strict=False)
    ours.update()
    ours.eval()

    img = np.asarray(Image.open(args.image).convert("RGB"))
    h, w = img.shape[0] // 64 * 64, img.shape[1] // 64 * 64
    x = torch.from_numpy(np.ascontiguousarray(img[:h, :w])).permute(2, 0, 1).float().div(255)[None]
    qp = args.qp if not float(args.qp).is_integer() else int(args.qp)

    def ref_enc():
        with torch.no_grad():
            return ref.compress(x, qp)

    def our_enc():
        return ours.compress_raw(x, qp)

    # warm up both (first calls allocate)
    ref_out = ref_enc()
    our_data, our_shape = our_enc()
    ref_data = ref_out["strings"][0][0]
    assert our_data == ref_data, "bitstreams differ"

    def ref_dec():
        with torch.no_grad():
            return ref.decompress(ref_out["strings"], ref_out["shape"], qp)["x_hat"]

    def our_dec():
        return ours.decompress_raw(our_data, our_shape, qp)

    t_ref_enc = t_our_enc = t_ref_dec = t_our_dec = 0.0
    enc_r, enc_o, dec_r, dec_o = [], [], [], []
    for _ in range(args.repeats):  # interleave so load changes hit both alike
        enc_r.append(_timeit(ref_enc, 1)[0])
        enc_o.append(_timeit(our_enc, 1)[0])
        t, xr = _timeit(ref_dec, 1)
        dec_r.append(t)
        t, xo = _timeit(our_dec, 1)
        dec_o.append(t)
    t_ref_enc, t_our_enc = statistics.median(enc_r), statistics.median(enc_o)
    t_ref_dec, t_our_dec = statistics.median(dec_r), statistics.median(dec_o)
    identical_dec = torch.equal(xr, xo)

    # where our time goes
    with torch.inference_mode():
        t_an, lat = _timeit(lambda: ours.analyze(x), args.repeats)
        t_el, enc = _timeit(lambda: ours.encode_latents(lat, qp), args.repeats)
    syms = np.concatenate(enc.level_symbols)
    tables = ours.tables()
    idx = np.zeros_like(syms)
    t_rans, _ = _timeit(lambda: tables.encode(syms, idx), args.repeats)

    print(f"image {Path(args.image).name} {w}x{h}, qp {qp}, anchors {args.anchors}, threads {torch.get_num_threads()}")
    print(f"bitstream identical: {our_data == ref_data} ({len(our_data)} bytes); decode identical: {identical_dec}")
    print(f"{'':10s}{'reference':>12s}{'msinn':>12s}{'speed-up':>10s}")
    print(f"{'encode':10s}{t_ref_enc:11.3f}s{t_our_enc:11.3f}s{t_ref_enc / t_our_enc:9.2f}x")
    print(f"{'decode':10s}{t_ref_dec:11.3f}s{t_our_dec:11.3f}s{t_ref_dec / t_our_dec:9.2f}x")
    print("our encode, by part:")
    print(f"  analysis transform        {t_an:7.3f}s")
    print(f"  context models + coding   {t_el:7.3f}s (of which rANS of {syms.size} symbols ~{t_rans:.3f}s)")
    print(f"  levels coded: {len(LEVELS)}")


if __name__ == "__main__":
    main()
