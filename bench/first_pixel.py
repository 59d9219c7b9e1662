"""Time to first pixel: ``msinn decode`` of a small file in a fresh process, with its breakdown, side by side
for this checkout and, optionally, another one (``--baseline DIR``, e.g. a ``git worktree`` of an older commit).

    python bench/first_pixel.py --repeats 5 [--baseline /tmp/before] [--ray]

Each repeat is a new Python process (what every CLI call, Ray actor and restore/verify task pays): the
whole ``msinn decode`` command's wall time, then in another process the parts: ``import torch``, the rest of
``import msinn.codec``, loading the bundled model, and the decode itself; with ``--ray``, the time from creating
a Ray actor that imports the codec and loads the model to its first answer (a fresh local Ray each time).
Medians are printed; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "datasets" / "kodak" / "kodim01.png"

PARTS = """
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import msinn, msinn.codec
t2 = time.perf_counter()
m = msinn.load()
t3 = time.perf_counter()
msinn.codec.decode_image(open(sys.argv[1], "rb").read(), m)
t4 = time.perf_counter()
print(json.dumps({"import torch": t1 - t0, "import msinn.codec": t2 - t1, "load model": t3 - t2, "decode": t4 - t3}))
"""

ACTOR = """
import json, os, time
import ray
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

@ray.remote(num_cpus=1)
class Decoder:  # what an encoder actor or a restore/verify task pays before its first image
    def __init__(self):
        import msinn
        import msinn.codec
        self.model = msinn.load()

    def ready(self):
        return True

t = time.perf_counter()
ray.get(Decoder.remote().ready.remote())
print(json.dumps({"Ray actor ready": time.perf_counter() - t}))
"""

COMMAND = "import sys\nfrom msinn.cli import main\nsys.exit(main(['decode', sys.argv[1], sys.argv[2]]))\n"


def _env(checkout: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout)
    return env


def measure(checkout: Path, file: Path, repeats: int, ray: bool = False) -> dict[str, float]:
    """Median seconds of the whole command and of each part, ``repeats`` fresh processes each."""
    walls, parts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", COMMAND, str(file), f"{tmp}/out.png"], env=_env(checkout),
                           cwd=checkout, check=True, capture_output=True)
            walls.append(time.perf_counter() - t)
            out = subprocess.run([sys.executable, "-c", PARTS, str(file)], env=_env(checkout), cwd=checkout,
                                 check=True, capture_output=True, text=True)
            parts.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if ray:
        for part in parts:
            out = subprocess.run([sys.executable, "-c", ACTOR], env=_env(checkout), cwd=checkout, check=True,
                                 capture_output=True, text=True)
            part.update(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"msinn decode (wall)": statistics.median(walls)}
    for k in parts[0]:
        result[k] = statistics.median(p[k] for p in parts)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="another checkout to measure in the same run")
    ap.add_argument("--ray", action="store_true", help="also time a Ray actor that loads the model (a fresh local Ray)")
    ap.add_argument("--size", default="256x192", help="WxH crop of kodim01 to code")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        from PIL import Image

        Image.open(KODAK).convert("RGB").crop((0, 0, w, h)).save(f"{tmp}/in.png")
        file = Path(tmp) / "in.msinn"
        subprocess.run([sys.executable, "-c", "import sys\nfrom msinn.cli import main\nsys.exit(main(sys.argv[1:]))",
                        "encode", f"{tmp}/in.png", str(file), "--bpp", "1"], env=_env(ROOT), cwd=ROOT, check=True,
                       capture_output=True)
        rows = {"this checkout": measure(ROOT, file, args.repeats, args.ray)}
        if args.baseline:
            rows["baseline"] = measure(args.baseline.resolve(), file, args.repeats, args.ray)
    names = list(next(iter(rows.values())))
    print(f"{w}x{h} file, median of {args.repeats} fresh processes, {os.cpu_count()} CPUs")
    print(f"{'':24s}" + "".join(f"{r:>16s}" for r in rows) + ("   ratio" if len(rows) == 2 else ""))
    for n in names:
        vals = [rows[r][n] for r in rows]
        ratio = f"   {vals[0] / vals[1]:.2f}x" if len(vals) == 2 and vals[1] > 0 else ""
        print(f"{n:24s}" + "".join(f"{v:15.2f}s" for v in vals) + ratio)


if __name__ == "__main__":
    main()
