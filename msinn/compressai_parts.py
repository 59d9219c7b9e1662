"""The parts of CompressAI this project codes with (rANS, the Gaussian conditional, LowerBound, ResidualBlock),
imported without the rest of its package.

CompressAI 1.2.8's package ``__init__`` imports every sub-package, its
point-cloud datasets included, which pull in torch_geometric, pandas and
matplotlib: about 2-3 s of every command, Ray actor and task that loads a
model, for code this project never runs. When nothing has imported
``compressai`` yet, its package module is created from its spec without
running that ``__init__``, with the two entropy-coder functions its
entropy models call (``get_entropy_coder``, ``available_entropy_coders``,
defined as the package defines them), and only the sub-modules below are
imported. A process that imported CompressAI itself first keeps its
package as it is; later ``import compressai.zoo`` and the like still work,
as sub-module imports.
"""

from __future__ import annotations

import importlib.util
import sys


def _light_package() -> None:
    if "compressai" in sys.modules:
        return
    spec = importlib.util.find_spec("compressai")
    if spec is None or spec.loader is None:  # not installed: the imports below raise the usual ImportError
        return
    pkg = importlib.util.module_from_spec(spec)
    coders = ["ans"]

    def available_entropy_coders() -> list[str]:
        return coders

    def get_entropy_coder() -> str:
        return "ans"

    pkg.available_entropy_coders = available_entropy_coders
    pkg.get_entropy_coder = get_entropy_coder
    sys.modules["compressai"] = pkg


_light_package()

from compressai.ans import RansDecoder, RansEncoder  # noqa: E402
from compressai.entropy_models import GaussianConditional  # noqa: E402
from compressai.layers import ResidualBlock  # noqa: E402
from compressai.ops import LowerBound  # noqa: E402

__all__ = ["GaussianConditional", "LowerBound", "RansDecoder", "RansEncoder", "ResidualBlock"]
