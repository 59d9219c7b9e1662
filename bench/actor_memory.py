"""Peak memory of an encoder actor against the size of the shard it reads (streamed vs read whole).

    python bench/actor_memory.py [--sizes 32,128,512] [--model PATH]

Each case runs in a fresh process: a tar of a few small images and one large
non-image member (a shard's size without its encoding time) is encoded by
``UnitEncoder.unit_steps`` (the actor's path: streamed), and, for
comparison, read whole into memory first (what the pipeline did before).
Prints peak RSS per case and the ratio. Not a test.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, io, tarfile
sys.path.insert(0, {repo!r})
from pipeline.encoder import UnitEncoder
from pipeline.spec import JobSpec, WorkUnit
path, out, mode, model = {path!r}, {out!r}, {mode!r}, {model!r}
enc = UnitEncoder(model)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
spec = JobSpec(input=path, output=out, target_kind="qp", target_value=2.0)
unit = WorkUnit("000000", "tar", (path,), 0, path.rsplit("/", 1)[0])
if mode == "stream":
    *_, (_, res) = enc.unit_steps(unit, spec)
else:
    from pipeline.sources import InputRecord
    blob = open(path, "rb").read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        recs = [InputRecord(m.name.split(".")[0], m.name, tf.extractfile(m).read()) for m in tf.getmembers()
                if m.name.endswith(".png")]
    *_, (_, res) = enc.steps(unit, recs, spec)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"images": res["images"], "model_rss_mb": base / 1024, "peak_rss_mb": peak / 1024}}))
"""


def make_tar(path: Path, mb: int) -> None:
    import numpy as np
    from PIL import Image

    with tarfile.open(path, "w") as tf:
        for i in range(4):
            buf = io.BytesIO()
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"img{i}.png")
            info.size = buf.tell()
            buf.seek(0)
            tf.addfile(info, buf)
        info = tarfile.TarInfo("payload.bin")
        info.size = mb << 20
        tf.addfile(info, io.BytesIO(bytes(mb << 20)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="32,128,512", help="shard sizes in MB")
    p.add_argument("--model", default=None, help="model name or checkpoint (default: bundled)")
    args = p.parse_args()
    repo = str(Path(__file__).resolve().parents[1])
    print(f"{'shard MB':>9} {'streamed peak MB':>17} {'read-whole peak MB':>19} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for mb in (int(s) for s in args.sizes.split(",")):
            path = Path(tmp) / f"s{mb}.tar"
            make_tar(path, mb)
            peaks = {}
            for mode in ("stream", "whole"):
                code = CHILD.format(repo=repo, path=str(path), out=str(Path(tmp) / f"out-{mb}-{mode}"), mode=mode,
                                    model=args.model)
                res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                peaks[mode] = json.loads(res.stdout.strip().splitlines()[-1])["peak_rss_mb"]
            print(f"{mb:>9} {peaks['stream']:>17.0f} {peaks['whole']:>19.0f} {peaks['whole'] / peaks['stream']:>6.2f}")
            path.unlink()


if __name__ == "__main__":
    main()
