"""``--lossless`` against the libraries it uses, in one run: bytes, byte-exactness, and images/s.

    python bench/lossless.py [--jpegs DIR] [--pngs DIR] [--limit N] [--pairs 2]

1. JPEGs (default: ``shared/datasets/train-extra``'s JPEGs) packed as a
   webdataset with a caption and a JSON per image, like an img2dataset
   shard. Sizes of every JPEG recompressor, alone and per image best, are
   measured side by side (Lepton, JPEG XL's JPEG transcoding, Brunsli), then
   the ``--lossless`` archive is made, restored with ``--layout source`` and
   compared member by member with the input.
2. PNGs (default: ``shared/datasets/graphics``): the archive against lossless
   JPEG XL at its default effort (7) on the same images, pixels compared.
3. Speed: the job's images/s against the chosen library called in a plain
   loop over the same files (the loop reads each file, recompresses it and
   checks its round trip, as the job does), alternated ``--pairs`` times, and
   where the job's time goes (actor start, reading and committing, coding).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "datasets"


def webdataset_of(files: list[Path], dest: Path) -> Path:
    """An img2dataset-style shard: KEY.jpg, KEY.txt (a caption), KEY.json (metadata), in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for i, f in enumerate(files):
            key = f"{i:09d}"
            for name, data in ((f"{key}.jpg", f.read_bytes()), (f"{key}.txt", f"a picture: {f.stem}".encode()),
                               (f"{key}.json", json.dumps({"key": key, "url": f"file://{f.name}"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "00000.tar").write_bytes(buf.getvalue())
    return dest / "00000.tar"


def recompressors(files: list[Path]) -> dict[str, float]:
    """Each JPEG recompressor's share of the source bytes (only byte-exact round trips count; else the original)."""
    import imagecodecs
    import lepton_jpeg_python

    libs = {
        "lepton": (lepton_jpeg_python.compress_bytes, lepton_jpeg_python.decompress_bytes),
        "jxl-jpeg": (imagecodecs.jpegxl_encode_jpeg, imagecodecs.jpegxl_decode_jpeg),
        "brunsli": (imagecodecs.brunsli_encode, imagecodecs.brunsli_decode),
    }
    total = 0
    sizes = {k: 0 for k in libs}
    exact = {k: 0 for k in libs}
    best = 0
    for f in files:
        data = f.read_bytes()
        total += len(data)
        per = []
        for name, (enc, dec) in libs.items():
            try:
                packed = bytes(enc(data))
                ok = bytes(dec(packed)) == data
            except Exception:  # noqa: BLE001 -- a refusal: the original is kept
                packed, ok = data, False
            size = len(packed) if ok else len(data)
            exact[name] += ok
            sizes[name] += size
            per.append(size)
        best += min(per + [len(data)])
    out = {f"{k} (byte-exact {exact[k]}/{len(files)})": v / total for k, v in sizes.items()}
    out["best of the three per image"] = best / total
    return out


def run_job(src: Path, out: Path) -> dict:
    from pipeline.runner import run_job as run
    from pipeline.spec import JobSpec

    return run(JobSpec(input=str(src), output=str(out), target_kind="lossless", target_value=0.0), actors=1)


def loop(files: list[Path]) -> float:
    """The chosen library in a plain loop: read, recompress, check the round trip (the job's per-image work)."""
    from msinn.lossless import store_exactly

    t0 = time.perf_counter()
    for f in files:
        store_exactly(f.read_bytes(), str(f))
    return len(files) / (time.perf_counter() - t0)


def compare_tar(a: Path, b: Path) -> tuple[int, int]:
    """(members, members identical) between two tars, in order."""
    with tarfile.open(a) as ta, tarfile.open(b) as tb:
        ma = [(m.name, ta.extractfile(m).read()) for m in ta]
        mb = [(m.name, tb.extractfile(m).read()) for m in tb]
    return len(ma), sum(x == y for x, y in zip(ma, mb)) if [n for n, _ in ma] == [n for n, _ in mb] else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jpegs", default=str(SHARED / "train-extra"))
    p.add_argument("--pngs", default=str(SHARED / "graphics"))
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--repeat", type=int, default=4, help="speed: the images this many times over (start-up amortised)")
    args = p.parse_args()
    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    import numpy as np

    from msinn.raylocal import init_ray
    from pipeline.cli import main as cli

    jpegs = sorted(Path(args.jpegs).glob("*.jpg"))[: args.limit or None]
    pngs = sorted(Path(args.pngs).glob("*.png"))[: args.limit or None]
    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(f"# JPEG webdataset: {len(jpegs)} images, {sum(f.stat().st_size for f in jpegs)} bytes")
        for name, share in recompressors(jpegs).items():
            print(f"  {name:40s} {share:.4f} of the source JPEG bytes")
        shard = webdataset_of(jpegs, tmp / "wds")
        summary = run_job(shard.parent, tmp / "a-jpeg")
        cli(["restore", str(tmp / "a-jpeg"), str(tmp / "back-jpeg"), "--layout", "source"])
        n, same = compare_tar(shard, tmp / "back-jpeg" / shard.name)
        images_bytes = summary["bytes_out"]
        print(f"  --lossless archive: images {images_bytes / summary['bytes_in']:.4f} of the source JPEG bytes; "
              f"whole archive (tars + manifest) {_size(tmp / 'a-jpeg') / shard.stat().st_size:.4f} of the shard; "
              f"restore --layout source: {same}/{n} members byte-identical")
        print(f"  codecs: {[(c['name'], c['images']) for c in summary['per_codec']]}")

        import imagecodecs

        from msinn.lossless import read_exact

        print(f"# PNGs: {len(pngs)} images, {sum(f.stat().st_size for f in pngs)} bytes")
        (tmp / "png").mkdir()
        jxl = 0
        for f in pngs:
            (tmp / "png" / f.name).write_bytes(f.read_bytes())
            jxl += len(imagecodecs.jpegxl_encode(read_exact(f.read_bytes())[0].array, lossless=True))
        summary = run_job(tmp / "png", tmp / "a-png")
        cli(["restore", str(tmp / "a-png"), str(tmp / "back-png"), "--layout", "source"])
        same = sum(np.array_equal(read_exact(f.read_bytes())[0].array,
                                  read_exact((tmp / "back-png" / f.name).read_bytes())[0].array) for f in pngs)
        print(f"  lossless JPEG XL (effort 7): {jxl / summary['bytes_in']:.4f} of the PNG bytes")
        print(f"  --lossless archive:          {summary['bytes_out'] / summary['bytes_in']:.4f} of the PNG bytes "
              f"({summary['bytes_out'] / jxl:.4f} x JPEG XL); pixels identical after restore: {same}/{len(pngs)}; "
              f"codecs {[(c['name'], c['images']) for c in summary['per_codec']]}")

        speed_jpegs = jpegs * args.repeat
        webdataset_of(speed_jpegs, tmp / "wds-speed")
        (tmp / "png-speed").mkdir()
        for r in range(args.repeat):
            for f in pngs:
                (tmp / "png-speed" / f"{r}-{f.name}").write_bytes(f.read_bytes())
        for label, files, src in (("JPEG", speed_jpegs, tmp / "wds-speed"), ("PNG", pngs * args.repeat,
                                                                           tmp / "png-speed")):
            ratios, steady = [], []
            for i in range(args.pairs):
                lib = loop(files)
                s = run_job(src, tmp / f"speed-{label}-{i}")
                job = s["images_this_run"] / s["wall_seconds"]
                per_actor = s["images_this_run"] / s["encode_seconds_total"]
                ratios.append(job / lib)
                steady.append(per_actor / lib)
                print(f"  {label} pair {i}: loop {lib:.2f} img/s; job {job:.2f} img/s end to end "
                      f"({job / lib:.1%}), {per_actor:.2f} img/s in its actor after start-up ({per_actor / lib:.1%}); "
                      f"actor start {s['actor_start_seconds']:.1f} s, coding {s['codec_seconds_total']:.1f} s of "
                      f"{s['encode_seconds_total']:.1f} s in the actor")
            print(f"  {label}: median job / loop {statistics.median(ratios):.1%} end to end, "
                  f"{statistics.median(steady):.1%} after the actor's start")


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and "_plan" not in f.parts
               and "_runs" not in f.parts)



if __name__ == "__main__":
    main()
