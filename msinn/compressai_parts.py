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

Its entropy models also import ``scipy.stats`` (0.6-0.8 s) for one number:
the Gaussian quantile of the tail mass, used when the coding tables are
built. They are imported here with ``scipy.stats`` held out (a placeholder
for the length of that one import: scipy's own lazy attribute loads the real
one should anything use it later), and this module's :class:`GaussianConditional` takes that quantile, for the one
tail mass the project uses, from a pinned float64 equal to
``scipy.stats.norm.ppf``'s (``tests/test_first_pixel.py`` checks it bit for
bit: tables built from a value one ulp away would not decode files written
with the other; the standard library's ``NormalDist`` differs by an ulp at
some tail masses, so it is not used).
"""

from __future__ import annotations

import importlib.util
import sys
import types


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


def _import_without(module: str, skipped: str) -> None:
    """Import ``module`` while ``skipped`` (not imported yet) is an empty placeholder, removed right after.

    The module keeps its reference to the parent package, whose own lazy
    ``__getattr__`` imports the real sub-module if anything ever uses it.
    """
    if skipped in sys.modules:
        importlib.import_module(module)
        return
    parent_name, _, child = skipped.rpartition(".")
    placeholder = types.ModuleType(skipped)
    sys.modules[skipped] = placeholder
    try:
        importlib.import_module(module)
    finally:
        if sys.modules.get(skipped) is placeholder:
            del sys.modules[skipped]
        parent = sys.modules.get(parent_name)
        if parent is not None and parent.__dict__.get(child) is placeholder:
            delattr(parent, child)


_light_package()
_import_without("compressai.entropy_models", "scipy.stats")

from compressai.ans import RansDecoder, RansEncoder  # noqa: E402
from compressai.entropy_models import GaussianConditional as _CompressAIGaussianConditional  # noqa: E402
from compressai.layers import ResidualBlock  # noqa: E402
from compressai.ops import LowerBound  # noqa: E402

# scipy.stats.norm.ppf(tail_mass / 2) for CompressAI's default tail mass (1e-9), the only one the project uses, as
# float64 bits: the coding tables depend on every bit of it, so it is pinned rather than recomputed by whichever scipy
# is installed (tests/test_first_pixel.py checks it against the installed scipy).
TAIL_QUANTILES = {5e-10: float.fromhex("-0x1.870093a8f0d07p+2")}


class GaussianConditional(_CompressAIGaussianConditional):
    """CompressAI's Gaussian conditional, its tail quantile pinned (see the module's note): no scipy.stats import."""

    @staticmethod
    def _standardized_quantile(quantile: float) -> float:
        known = TAIL_QUANTILES.get(float(quantile))
        if known is not None:
            return known
        import scipy.stats  # any other tail mass: CompressAI's own way

        return float(scipy.stats.norm.ppf(quantile))


__all__ = ["GaussianConditional", "LowerBound", "RansDecoder", "RansEncoder", "ResidualBlock"]
