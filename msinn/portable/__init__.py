"""The portable coding profile: decoding that is exact by construction on any device.

See ``docs/portability.md``. :func:`convert` turns a float model into a
:class:`PortableMSINN`; both code through the same :mod:`msinn.codec` API.
"""

from __future__ import annotations

from .model import PROFILE, PortableMSINN

__all__ = ["PROFILE", "PortableMSINN", "convert"]


def __getattr__(name: str):
    if name == "convert":
        from .convert import convert

        return convert
    raise AttributeError(name)
