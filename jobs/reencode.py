"""Entry point for `ray job submit`: re-encode archive rows selected by a SQL predicate.

    python jobs/reencode.py ARCHIVE --where "bpp > 0.5" --bpp 0.4 [--model M] [--from auto] [--gc]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import cmd_reencode  # noqa: E402

if __name__ == "__main__":
    sys.exit(cmd_reencode(sys.argv[1:], prog="jobs/reencode.py"))
