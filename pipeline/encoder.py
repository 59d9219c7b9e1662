"""Encoding one work unit into one bitstream shard and one manifest shard.

A unit is committed in two writes: the tar of bitstreams first, the manifest
shard last. A reader that finds a manifest shard therefore finds every
bitstream it names; a unit interrupted anywhere before its manifest write is
simply redone, rewriting the same tar with the same bytes.
"""

from __future__ import annotations

import io
import logging
import tarfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import torch

from msinn.codec import EncodeOptions, PlannedEncode, model_identity, plan_encode
from msinn.errors import ImageInputError
from msinn.images import open_image
from msinn.ratecontrol import Target

from . import manifest, storage
from .plan import WorkUnit
from .sources import InputRecord

log = logging.getLogger("pipeline.encoder")


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to process units; identical for every unit of a run."""

    input: str
    output: str
    target_kind: str
    target_value: float
    model: str | None = None
    input_options: dict = field(default_factory=dict)
    output_options: dict = field(default_factory=dict)
    input_kind: str = "auto"
    key_column: str = "key"
    image_column: str = "image"
    target_column: str | None = None  # Parquet inputs: per-image target values of target_kind
    shard_bytes: int = 256 << 20
    max_pixels: int = 256 << 20
    tile_pixels: int = 1 << 21
    ms_ssim: bool = False
    run_id: str = ""
    device: str = "cpu"

    @property
    def target(self) -> Target:
        return self.target_for(None)

    def target_for(self, value: float | None) -> Target:
        """The job's target, or the same kind with an image's own value."""
        v = self.target_value if value is None else value
        return Target(self.target_kind, int(v) if self.target_kind == "qp" and float(v).is_integer() else v)

    def job_dict(self) -> dict:
        """What must not change between a run and its resumption (no credentials)."""
        return {
            "input": self.input,
            "target_kind": self.target_kind,
            "target_value": self.target_value,
            "model": self.model,
            "input_kind": self.input_kind,
            "key_column": self.key_column,
            "image_column": self.image_column,
            "target_column": self.target_column,
            "run_id": self.run_id,
        }


def tar_uri(spec: JobSpec, unit: WorkUnit) -> str:
    return storage.join(spec.output, "bitstreams", f"{unit.shard_name}.tar")


def manifest_uri(spec: JobSpec, unit: WorkUnit) -> str:
    return storage.join(spec.output, "manifest", f"{unit.shard_name}.parquet")


def build_tar(members: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A deterministic tar (fixed mtime, owner, mode) and each member's (data offset, length)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tf:
        offsets = {m.name: (m.offset_data, m.size) for m in tf.getmembers()}
    return blob, offsets


def _error_cause(message: str) -> str:
    return message.split(":", 1)[0].strip()[:80]


def _rgb_view(pixels: np.ndarray, mode: str) -> np.ndarray:
    if mode in ("L", "LA"):
        gray = pixels if mode == "L" else pixels[:, :, 0]
        return np.repeat(gray[:, :, None], 3, axis=2)
    return pixels[:, :, :3]


def _ms_ssim(recon: np.ndarray, original: np.ndarray) -> float | None:
    if min(original.shape[:2]) < 161:
        return None
    from pytorch_msssim import ms_ssim

    a = torch.from_numpy(np.ascontiguousarray(recon[:, :, :3])).permute(2, 0, 1)[None].float() / 255
    b = torch.from_numpy(np.ascontiguousarray(original[:, :, :3])).permute(2, 0, 1)[None].float() / 255
    return float(ms_ssim(a, b, data_range=1.0))


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray
        return None


def _raise_priority() -> None:
    """Undo Ray's worker niceness (15) for the encoder, where the permissions allow.

    At nice 15 any ordinary process (Ray's own services, the read tasks'
    neighbours) preempts the encoder's threads, and one stalled OpenMP thread
    stalls them all.
    """
    import os

    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (PermissionError, OSError, AttributeError):
        pass


PIPELINE_DEPTH = 2  # planned records allowed to wait for the entropy coder


class UnitEncoder:
    """Holds the model; encodes units. Wrapped as a Ray actor by the runner."""

    def __init__(self, model: str | None, device: str = "cpu", threads: int = 0, overlap: bool | None = None):
        import msinn

        self.threads = threads
        # Coding on a second thread pays when the network runs on a GPU. On CPU the coder thread
        # competes with the network's own threads for the cores (measured 10% slower on 2 cores).
        self.overlap = device == "cuda" if overlap is None else overlap
        _raise_priority()
        if threads:
            torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device cuda requested but no GPU is visible to this worker")
        self.model = msinn.load(model, device=device)
        self.device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        self.model_name, self.model_hash = model_identity(self.model)

    def _coder_thread_init(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def ready(self) -> str:
        return self.device_name

    def encode_record(self, rec: InputRecord, spec: JobSpec, unit: WorkUnit) -> tuple[dict, bytes | None]:
        """Encode one record start to finish on the calling thread."""
        return self.finish_record(*self.plan_record(rec, spec, unit), spec.ms_ssim)

    def plan_record(self, rec: InputRecord, spec: JobSpec, unit: WorkUnit) -> tuple[dict, PlannedEncode | None]:
        """The network half of a record: its manifest row so far and its planned encode (None on error)."""
        now = datetime.now(UTC)
        row = {
            "key": rec.key,
            "source_uri": rec.source_uri,
            "model": self.model_name,
            "model_hash": self.model_hash,
            "run_id": spec.run_id,
            "target_kind": spec.target_kind,
            "target_value": float(spec.target_value if rec.target_value is None else rec.target_value),
            "device": self.device_name,
            "unit_id": unit.unit_id,
            "created_at": now,
            "codec_version": __import__("msinn").__version__,
            "encoded_from": rec.encoded_from,
            "source_bytes": rec.source_bytes,
            "source_sha256": rec.sha256,
        }
        if rec.error is not None:
            row.update(status="error", error=rec.error)
            return row, None
        try:
            img = open_image(rec.data, rec.source_uri, spec.max_pixels)
            opts = EncodeOptions(tile_pixels=spec.tile_pixels, max_pixels=spec.max_pixels)
            planned = plan_encode(self.model, img, spec.target_for(rec.target_value), opts)
        except ImageInputError as exc:
            row.update(status="error", error=f"bad image: {exc}")
            return row, None
        except (ValueError, RuntimeError, MemoryError) as exc:
            row.update(status="error", error=f"encode failed: {type(exc).__name__}: {exc}")
            return row, None
        return row, planned

    @staticmethod
    def finish_record(row: dict, planned: PlannedEncode | None, want_ms_ssim: bool) -> tuple[dict, bytes | None]:
        """The CPU half: entropy coding, the container, and the row's measurements."""
        if planned is None:
            return row, None
        img = planned.img
        try:
            res = planned.finish()
        except (ValueError, RuntimeError, MemoryError) as exc:
            row.update(status="error", error=f"encode failed: {type(exc).__name__}: {exc}")
            return row, None
        target = planned.target
        tv = target.value
        target_met = (
            res.bpp <= tv if target.kind == "bpp"
            else res.bytes <= tv if target.kind == "bytes"
            else res.psnr >= tv if target.kind == "psnr"
            else True
        )
        row.update(
            status="ok",
            error=None,
            width=img.width,
            height=img.height,
            bytes=res.bytes,
            bpp=res.bpp,
            psnr=res.psnr if np.isfinite(res.psnr) else None,
            qp=float(res.qp),
            source_format=img.source_format,
            mode=img.mode,
            source_mode=img.source_mode,
            bit_depth=img.bit_depth,
            target_met=bool(target_met),
            in_range=res.in_range,
            probes=res.probes,
            profile=res.header.profile,
            numerics=res.header.numerics or None,
            ms_ssim=_ms_ssim(_rgb_view(res.reconstruction, img.mode), img.rgb) if want_ms_ssim else None,
            encode_seconds=res.seconds,
        )
        return row, res.data

    def process(self, unit: WorkUnit, records: list[InputRecord], spec: JobSpec) -> dict:
        """Encode every record, then commit the unit: tar first, manifest shard last.

        With ``overlap`` (the default on a GPU) the network half of record i+1
        runs while a second thread entropy-codes and packs record i (rANS and
        hashing are CPU work that would otherwise leave the GPU idle). At most
        ``PIPELINE_DEPTH`` planned records wait for the coder, which bounds the
        memory held.
        """
        if self.threads:
            # OpenMP thread counts are per calling thread; Ray may run methods on another thread than __init__
            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        if self.overlap:
            results: list[Future] = []
            with ThreadPoolExecutor(1, thread_name_prefix="entropy-coder", initializer=self._coder_thread_init) as pool:
                for rec in records:
                    if len(results) >= PIPELINE_DEPTH:  # one coder thread finishes in order
                        wait([results[-PIPELINE_DEPTH]])
                    row, planned = self.plan_record(rec, spec, unit)
                    results.append(pool.submit(self.finish_record, row, planned, spec.ms_ssim))
                finished = [f.result() for f in results]
        else:
            finished = [self.encode_record(rec, spec, unit) for rec in records]
        rows, members = [], []
        for row, data in finished:
            rows.append(row)
            if data is not None:
                members.append((f"{row['key']}.msinn", data))
        turi = tar_uri(spec, unit)
        if members:
            blob, offsets = build_tar(members)
            storage.write_bytes(turi, blob, spec.output_options)
            for row in rows:
                if row["status"] == "ok":
                    off, length = offsets[f"{row['key']}.msinn"]
                    row.update(tar_uri=turi, offset=off, length=length)
        storage.write_bytes(manifest_uri(spec, unit), manifest.to_parquet(rows), spec.output_options)
        ok = [r for r in rows if r["status"] == "ok"]
        return {
            "unit_id": unit.unit_id,
            "images": len(rows),
            "ok": len(ok),
            "errors": len(rows) - len(ok),
            "errors_by_cause": dict(Counter(_error_cause(r["error"]) for r in rows if r["status"] == "error")),
            "bytes_in": sum(r.get("source_bytes") or 0 for r in rows),
            "bytes_out": sum(r["bytes"] for r in ok),
            "sum_bpp": sum(r["bpp"] for r in ok),
            "sum_psnr": sum(r["psnr"] for r in ok if r.get("psnr") is not None),
            "n_psnr": sum(1 for r in ok if r.get("psnr") is not None),
            "seconds": time.perf_counter() - t0,
            "device": self.device_name,
            "node_id": _node_id(),
        }
