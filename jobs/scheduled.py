"""Entry point for cron / a Kubernetes CronJob (via `ray job submit`): one scheduled re-encode run.

    python jobs/scheduled.py SPEC.toml
"""

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.scheduled import run_scheduled  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) == 2 else 2)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run_scheduled(sys.argv[1])
    print(json.dumps(summary, indent=2))
    sys.exit(1 if summary.get("shards_failed") or summary.get("gc", {}).get("refused") else 0)
