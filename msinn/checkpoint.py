"""Reading and writing model checkpoints.

Two kinds are read: files this project writes (configuration stored beside
the weights) and the reference implementation's files as distributed (a
bare state dict, or one wrapped under ``state_dict``, ``network`` or
``model_state_dict``, keys possibly prefixed ``module.``), whose
configuration is inferred from the tensors themselves.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .config import MSINNConfig
from .container import MODEL_HASH_PREFIX
from .determinism import make_deterministic
from .model import MSINN, is_derived_key, weights_hash
from .packing import MAX_UNPACKED_BYTES, PACKED_SUFFIX, XZ_MAGIC, PackError, is_packed, pack, unpack
from .portable.formats import FORMAT as PORTABLE_FORMAT
from .portable.formats import FORMAT_VERSION as PORTABLE_VERSION
from .portable.formats import PROFILE as PORTABLE_PROFILE

if TYPE_CHECKING:  # pragma: no cover
    from .interface import CodecModel
    from .portable.model import PortableMSINN

FORMAT = "msinn-checkpoint"
FORMAT_VERSION = 1
WRAPPER_KEYS = ("state_dict", "network", "model_state_dict")


class CheckpointError(ValueError):
    """A file is not a checkpoint this codec can load; the message says why."""


def _strip_prefix(sd: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        out[k[len("module.") :] if k.startswith("module.") else k] = v
    return out


def _count_units(sd: Mapping[str, torch.Tensor], stage: int) -> int:
    pat = re.compile(rf"^g_a{stage}\.(\d+)\.")
    ids = {int(m.group(1)) for k in sd if (m := pat.match(k))}
    return max(ids) + 1 if ids else 0


def infer_config(sd: Mapping[str, torch.Tensor], permutation: str | None = None) -> MSINNConfig:
    """Rebuild the configuration of a reference-format state dict from its tensors.

    ``permutation`` names the flow permutation when the tensors cannot
    ('reverse' and 'cross' keep none).
    """
    required = ("gain", "g_a0.0.block.0.conv1.weight", "g_a3.0.block.0.conv1.weight", "sc_transforms.0.0.weight")
    absent = [k for k in required if k not in sd]
    if absent:
        raise CheckpointError(f"not an MS-INN state dict: missing {absent}")
    if "g_a0.0.permute.weight" in sd:
        permutation = "invconv"
    elif "g_a0.0.permute.indices" in sd:
        permutation = "shuffle"
    elif permutation not in ("reverse", "cross"):
        raise CheckpointError(
            "cannot tell the flow permutation ('reverse' or 'cross' keep no tensors); pass a config explicitly"
        )
    coupling_out = sd["g_a0.0.block.1.conv.weight"].shape[0]
    return MSINNConfig(
        N=int(sd["g_a0.0.block.0.conv1.weight"].shape[0]),
        M=int(sd["g_a3.0.block.0.conv1.weight"].shape[0]),
        depths=tuple(_count_units(sd, s) for s in range(4)),  # type: ignore[arg-type]
        context_channels=int(sd["sc_transforms.0.0.weight"].shape[0]),
        anchor_num=int(sd["gain"].shape[0]),
        flow_permutation=permutation,
        flow_coupling="affine" if coupling_out == 12 else "additive",
        act_norm="g_a0.0.actnorm.logs" in sd,
        post_process=any(k.startswith("post_net.") for k in sd),
        lrp=any(k.startswith("lrp_transforms.") for k in sd),
    )


BUFFER_TYPES = (bytes, bytearray, memoryview)  # a checkpoint's bytes, as read from object storage


def _unpacked(source: str | os.PathLike | bytes, name: str) -> str | os.PathLike | io.BytesIO:
    """What ``torch.load`` reads: the file itself, or the unpacked bytes of an xz-packed one (``packing``)."""
    if isinstance(source, BUFFER_TYPES):
        data = bytes(source)
        return io.BytesIO(unpack(data, name, MAX_UNPACKED_BYTES) if is_packed(data) else data)
    with open(source, "rb") as f:
        if not is_packed(f.read(len(XZ_MAGIC))):
            return source
        f.seek(0)
        # read at most one byte past the limit, whatever the file claims to be (a pipe has no size)
        return io.BytesIO(unpack(f.read(MAX_UNPACKED_BYTES + 1), name, MAX_UNPACKED_BYTES))


def load_object(source: str | os.PathLike | bytes) -> tuple[str, Mapping]:
    """(name, the file's dict) from a model or training checkpoint file, packed or not, or its bytes.

    The one place model files are read: ``torch.load(weights_only=True)`` after unpacking within limits.
    """
    name = "<bytes>" if isinstance(source, BUFFER_TYPES) else str(source)
    try:
        f = _unpacked(source, name)
    except PackError as exc:
        raise CheckpointError(str(exc)) from None
    except FileNotFoundError:
        raise
    except OSError as exc:  # a folder, no permission
        raise CheckpointError(f"{name}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from exc
    try:
        obj = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # pickle, zip and weights_only refusals all land here
        raise CheckpointError(f"{name}: not a loadable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{name}: checkpoint holds a {type(obj).__name__}, not a dict")
    return name, obj


SHAPE_FIELDS = ("N", "M", "depths", "context_channels", "anchor_num", "flow_coupling", "act_norm", "post_process",
                "lrp")


def checked_config(name: str, stored: Mapping, inferred: MSINNConfig) -> MSINNConfig:
    """The stored configuration, if the tensors bear it out: a config is never trusted before the weights.

    A stored config that disagrees with the tensors (``{"N": 1000000}`` would
    allocate terabytes) is refused before any model is built.
    """
    try:
        cfg = MSINNConfig.from_dict(dict(stored))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{name}: invalid configuration ({exc})") from None
    wrong = {f: (getattr(cfg, f), getattr(inferred, f)) for f in SHAPE_FIELDS
             if getattr(cfg, f) != getattr(inferred, f)}
    if wrong:
        raise CheckpointError(f"{name}: configuration disagrees with the tensors (stored vs found: {wrong})")
    return cfg


def read_checkpoint(source: str | os.PathLike | bytes) -> tuple[MSINNConfig, dict[str, torch.Tensor], dict]:
    """(config, state dict, metadata) from a float checkpoint file or its bytes."""
    name, obj = load_object(source)
    return parse_float(name, obj)


def parse_float(name: str, obj: Mapping) -> tuple[MSINNConfig, dict[str, torch.Tensor], dict]:
    """``read_checkpoint`` of a dict ``load_object`` already read (a resumed run needs both the dict and this)."""
    if obj.get("format") == PORTABLE_FORMAT:
        raise CheckpointError(f"{name}: a portable-profile model, not a float checkpoint")
    if obj.get("format") == FORMAT:
        version = obj.get("version", 0)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"{name}: checkpoint format version {version!r} is not one this reader knows")
        if not isinstance(obj.get("config"), Mapping) or not isinstance(obj.get("state_dict"), Mapping):
            raise CheckpointError(f"{name}: checkpoint lacks a config or state dict")
        sd = _strip_prefix(obj["state_dict"])
        perm = obj["config"].get("flow_permutation")
        cfg = checked_config(name, obj["config"], infer_config(sd, perm if isinstance(perm, str) else None))
        meta = obj.get("meta", {})
        return cfg, sd, dict(meta) if isinstance(meta, Mapping) else {}
    sd: Mapping[str, Any] = obj
    for key in WRAPPER_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            sd = obj[key]
            break
    sd = _strip_prefix(sd)
    return infer_config(sd), sd, {}


def check_compatible(model: MSINN, sd: Mapping[str, torch.Tensor]) -> None:
    """Raise CheckpointError naming every key or shape that differs."""
    own = model.state_dict()
    missing = sorted(k for k in own if k not in sd and not is_derived_key(k))
    unexpected = sorted(k for k in sd if k not in own)
    shapes = sorted(
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sd
        if k in own and not is_derived_key(k) and tuple(sd[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append(f"shape mismatches {shapes[:8]}{' ...' if len(shapes) > 8 else ''}")
        raise CheckpointError("incompatible checkpoint: " + "; ".join(parts))


def stored_weights_hash(sd: Mapping[str, torch.Tensor]) -> str:
    """The identity a file's tensors get when loaded (float16 read as float32, derived buffers left out),
    without building the model: what ``build_model`` records as ``weights_sha256``."""
    return weights_hash({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()})


def build_model(
    config: MSINNConfig, sd: Mapping[str, torch.Tensor], device: str | torch.device = "cpu"
) -> MSINN:
    make_deterministic()
    model = MSINN(config)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    check_compatible(model, sd)
    model.load_state_dict(sd, strict=True)
    model.update()
    model.eval()
    model = model.to(device)
    model.weights_sha256 = weights_hash(sd)  # the file's tensors as read: the identity files record
    return model


def load_file(path: str | os.PathLike | bytes, device: str | torch.device = "cpu") -> MSINN | PortableMSINN:
    """Ready-to-code model from a checkpoint file (or its bytes): float (either kind) or portable."""
    name, obj = load_object(path)
    if obj.get("format") == PORTABLE_FORMAT:
        return load_portable(name, obj, device)
    cfg, sd, meta = parse_float(name, obj)
    model = build_model(cfg, sd, device)
    model.checkpoint_meta = meta
    return model


def load_portable(name: str, obj: Mapping, device: str | torch.device = "cpu") -> PortableMSINN:
    """A portable-profile model from its file's contents; every bound is proved before use."""
    from .portable.exact import BoundError
    from .portable.model import PortableMSINN

    if obj.get("version") != PORTABLE_VERSION or obj.get("profile") != PORTABLE_PROFILE:
        raise CheckpointError(f"{name}: portable model version {obj.get('version')!r} / profile "
                              f"{obj.get('profile')!r} is not one this decoder knows")
    try:
        cfg = MSINNConfig.from_dict(dict(obj["config"]))
        tensors = dict(obj["tensors"])
        float_tensors = dict(obj["float_tensors"])
        if not all(isinstance(t, torch.Tensor) for t in (*tensors.values(), *float_tensors.values())):
            raise CheckpointError(f"{name}: non-tensor entries in a portable model")
        _check_portable_config(name, cfg, tensors)
        model = PortableMSINN(cfg, obj["spec"], tensors, float_tensors, dict(obj.get("meta", {})))
    except CheckpointError:
        raise
    except BoundError as exc:
        raise CheckpointError(f"{name}: portable model fails its exactness proof ({exc})") from exc
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(f"{name}: malformed portable model ({type(exc).__name__}: {exc})") from exc
    model.checkpoint_meta = model.meta
    return model.to(device)


def _check_portable_config(name: str, cfg: MSINNConfig, tensors: Mapping[str, torch.Tensor]) -> None:
    """The configuration a portable file claims, against its integer tensors, before any model is built."""
    found = {
        "N": int(tensors["g0.0.conv1.w"].shape[0]),
        "M": int(tensors["g3.0.conv1.w"].shape[0]),
        "depths": tuple(sum(1 for k in tensors if k.startswith(f"g{s}.") and k.endswith(".conv1.w")) for s in range(4)),
        "context_channels": int(tensors["sc0.conv0.w"].shape[0]),
        "anchor_num": int(tensors["log_inv_gain"].shape[0]),
        "flow_coupling": "affine" if "g0.0.scale.w" in tensors else "additive",
        "post_process": any(k.startswith("post.") for k in tensors),
        "lrp": "lrp0.conv0.w" in tensors,
    }
    wrong = {k: (getattr(cfg, k), v) for k, v in found.items() if getattr(cfg, k) != v}
    if wrong:
        raise CheckpointError(f"{name}: configuration disagrees with the tensors (stored vs found: {wrong})")


def save_atomic(obj: Mapping[str, Any], path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file beside ``path``, then rename over it (xz-packed when ``path`` ends in .xz).

    Every checkpoint is written here, so a crash or a full disk mid-write
    leaves the previous file intact rather than a torn one that cannot load.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from .atomic import atomic_path, write_atomic

    if path.name.endswith(PACKED_SUFFIX):  # NAME.pt.xz: the same file, xz-packed (``packing``)
        buf = io.BytesIO()
        torch.save(obj, buf)
        write_atomic(path, pack(buf.getvalue()))
        return
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_portable(path: str | os.PathLike, model: PortableMSINN) -> None:
    """Write a portable model, atomically."""
    save_atomic(model.state(), path)


def save_checkpoint(
    path: str | os.PathLike,
    model: MSINN,
    meta: dict | None = None,
    half: bool = False,
    extra: dict | None = None,
) -> None:
    """Write a checkpoint with its configuration, atomically."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items() if not is_derived_key(k)}
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    obj = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": sd,
        "meta": meta or {},
    }
    if extra:
        obj.update(extra)
    save_atomic(obj, path)


def model_identity(model: CodecModel) -> tuple[str, str]:
    """(registry name, weights hash prefix) recorded in every file: both models carry them (``CodecModel``)."""
    return model.model_name or "unregistered", model.weights_sha256[:MODEL_HASH_PREFIX]
