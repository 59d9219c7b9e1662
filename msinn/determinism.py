"""Settings that make encoding and decoding repeatable run after run.

rANS decoding only works when the decoder computes bit-identical entropy
parameters to the encoder, so nondeterministic kernels and TF32 are off.
"""

from __future__ import annotations

import os

import torch


def make_deterministic() -> None:
    """Turn off TF32 and nondeterministic kernels (idempotent, cheap)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
