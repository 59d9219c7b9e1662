"""``python -m msinn.cli``: the ``msinn`` command without its console script (e.g. from a source tree)."""

import sys

from . import main

sys.exit(main())
