#!/usr/bin/env bash
# Install (first run only), then archive the bundled sample images with the bundled weights
# on a local Ray and print the run summary.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup-env.sh"
OUT="${1:-out/demo-$(date +%Y%m%d-%H%M%S)}"
python jobs/transcode.py --input samples --output "$OUT" --bpp "${TARGET_BPP:-1.0}"
echo "archive written to $OUT: bitstreams/*.tar, manifest/*.parquet, summary.json"
