"""Entry point for ``ray job submit``: archive a dataset with MS-INN.

    ray job submit --working-dir . -- python jobs/transcode.py --input URI --output URI --bpp 0.4

Without RAY_ADDRESS (not under ``ray job submit``) it starts a local Ray.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipeline.cli import cmd_transcode  # noqa: E402

if __name__ == "__main__":
    sys.exit(cmd_transcode(sys.argv[1:], prog="jobs/transcode.py"))
