"""The portable coding profile: decoding that is exact by construction on any device.

See ``docs/portability.md``. :func:`convert` turns a float model into a
:class:`PortableMSINN`; both code through the same :mod:`msinn.codec` API.
Modules, lowest first (each imports only from those before it): ``tables``,
``formats``, ``kernels``, ``exact``, ``ops``, ``postnet``, ``decoder``,
``proof``, ``twin``, ``identity``, ``model``, then the conversion:
``allocation``, ``convert_postnet``, ``convert``.
"""

from __future__ import annotations

from .formats import PROFILE
from .model import PortableMSINN

__all__ = ["PROFILE", "PortableMSINN", "convert"]


def __getattr__(name: str):
    if name == "convert":  # conversion stays unimported until asked for
        from .convert import convert

        return convert
    raise AttributeError(name)
