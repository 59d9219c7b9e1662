"""Named tensors into a hash, written once: both model identities (float and portable) are built on it.

Each tensor adds its name, dtype, shape and bytes, in name order, so a
renamed, retyped or reshaped tensor changes the hash as surely as a changed
value, and the order a state dict happens to hold its entries in does not.
The bytes hashed are the files' recorded identities: change nothing here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch


class HashSink(Protocol):
    """What ``hashlib``'s objects offer that this module needs."""

    def update(self, data: bytes, /) -> None: ...


def hash_tensors(h: HashSink, tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed ``tensors`` to ``h`` (a ``hashlib`` object), in name order, on any device."""
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
