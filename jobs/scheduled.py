"""Entry point for cron / a Kubernetes CronJob (via `ray job submit`): one scheduled re-encode run.

    python jobs/scheduled.py SPEC.toml        # same as: msinn-pipeline scheduled SPEC.toml
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import cmd_scheduled  # noqa: E402

if __name__ == "__main__":
    sys.exit(cmd_scheduled(sys.argv[1:], prog="jobs/scheduled.py"))
