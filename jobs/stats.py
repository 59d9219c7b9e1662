"""Entry point for `ray job submit`: msinn-pipeline stats (see `--help`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import cmd_stats  # noqa: E402

if __name__ == "__main__":
    sys.exit(cmd_stats(sys.argv[1:], prog="jobs/stats.py"))
