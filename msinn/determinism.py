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


def numerics_record(device: torch.device) -> str:
    """Where float32 arithmetic ran: enough to say why a float32 file does not decode elsewhere.

    ``device=cpu;arch=x86_64;threads=2;torch=2.14.1`` or
    ``device=cuda;gpu=NVIDIA H100 80GB HBM3;torch=2.14.1``.
    """
    import platform

    parts = {"device": device.type}
    if device.type == "cuda":
        parts["gpu"] = torch.cuda.get_device_name(device)
    else:
        parts["arch"] = platform.machine()
        parts["threads"] = str(torch.get_num_threads())
    parts["torch"] = torch.__version__.split("+")[0]
    return ";".join(f"{k}={v.replace(';', ',').replace('=', ':')}" for k, v in parts.items())


def parse_numerics(record: str) -> dict[str, str]:
    out = {}
    for part in record.split(";"):
        k, sep, v = part.partition("=")
        if sep:
            out[k] = v
    return out
