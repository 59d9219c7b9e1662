"""The encoder actor: holds the model, turns one unit's records into rows and bitstreams, commits the shard.

Each image goes through two stages: the network stage (analysis, rate search,
reconstruction) and the CPU stage (rANS coding, container, hashes). Every
image gets exactly one manifest row, built here and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch

from msinn.choice import MSINN, ChoiceOptions, choose, meets
from msinn.codec import EncodeOptions, PendingEncode, model_identity, prepare_encode
from msinn.errors import ImageInputError
from msinn.images import PreparedImage, open_image, rgb_view
from msinn.metrics import ms_ssim_uint8
from msinn.ratecontrol import Target

from .manifest import ManifestRow
from .shards import commit
from .sources import InputRecord, read_ahead, refuse_duplicates, stream_unit
from .spec import JobSpec, WorkUnit

log = logging.getLogger("pipeline.encoder")


@dataclass
class PendingImage:
    """An image between the two stages: decoded, its target known, the model's encode planned (if it competes)."""

    img: PreparedImage
    target: Target
    planned: PendingEncode | None  # None when msinn is not among the job's codecs


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray
        return None


def _raise_priority() -> None:
    """Undo Ray's worker niceness (15) for the encoder, where the permissions allow.

    At nice 15 any ordinary process (Ray's own services, other jobs'
    workers) preempts the encoder's threads, and one stalled OpenMP thread
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

    def encode_record(self, rec: InputRecord, spec: JobSpec, unit: WorkUnit) -> tuple[ManifestRow, bytes | None]:
        """Encode one record start to finish on the calling thread."""
        return self.finish_record(*self.plan_record(rec, spec, unit), spec)

    def plan_record(self, rec: InputRecord, spec: JobSpec, unit: WorkUnit) -> tuple[ManifestRow, PendingImage | None]:
        """The network half of a record: its manifest row so far and its pending image (None on error)."""
        row = ManifestRow(
            key=rec.key,
            source_uri=rec.source_uri,
            model=self.model_name,
            model_hash=self.model_hash,
            run_id=spec.run_id,
            target_kind=spec.target_kind,
            target_value=float(spec.target_value if rec.target_value is None else rec.target_value),
            device=self.device_name,
            unit_id=unit.unit_id,
            created_at=datetime.now(UTC),
            codec_version=__import__("msinn").__version__,
            encoded_from=rec.encoded_from,
            source_bytes=rec.source_bytes,
            source_sha256=rec.sha256,
        )
        if rec.error is not None:
            return row.fail(rec.error), None
        try:
            img = open_image(rec.data, rec.source_uri, spec.max_pixels)
            target = spec.target_for(rec.target_value)
            planned = None
            if MSINN in spec.codecs:
                opts = EncodeOptions(tile_pixels=spec.tile_pixels, max_pixels=spec.max_pixels)
                planned = prepare_encode(self.model, img, target, opts, effort=spec.effort)
        except ImageInputError as exc:
            return row.fail(f"bad image: {exc}"), None
        except (ValueError, RuntimeError, MemoryError) as exc:
            return row.fail(f"encode failed: {type(exc).__name__}: {exc}"), None
        return row, PendingImage(img, target, planned)

    @staticmethod
    def finish_record(
        row: ManifestRow, pending: PendingImage | None, spec: JobSpec
    ) -> tuple[ManifestRow, bytes | None]:
        """The CPU half: entropy coding, the container, the other codecs' searches, the choice, the row's figures."""
        if pending is None:
            return row, None
        img, target = pending.img, pending.target
        try:
            res = pending.planned.finish() if pending.planned is not None else None
            choice = choose(img, target, ChoiceOptions(tuple(spec.codecs), spec.avif_speed), res)
        except (ValueError, RuntimeError, MemoryError, OSError) as exc:
            return row.fail(f"encode failed: {type(exc).__name__}: {exc}"), None
        w = choice.winner
        pixels = img.width * img.height
        row.status, row.error = "ok", None
        row.width, row.height, row.bytes, row.bpp = img.width, img.height, w.bytes, w.bytes * 8 / pixels
        row.psnr = w.psnr if np.isfinite(w.psnr) else None
        row.qp = float(w.quality)
        row.source_format, row.mode, row.source_mode, row.bit_depth = (
            img.source_format, img.mode, img.source_mode, img.bit_depth)
        row.target_met = bool(meets(w, target, choice.floor, pixels)) if target.kind != "qp" else True
        row.in_range = w.in_range
        row.probes = sum(c.probes for c in choice.candidates)
        row.codec, row.pixel_hash, row.codec_version = w.codec, w.pixel_hash, w.codec_version
        if w.header is not None:
            row.profile, row.numerics, row.effort = w.header.profile, w.header.numerics or None, spec.effort
        else:  # a classical file needs no model to decode
            row.model = row.model_hash = None
            row.codec_params = w.codec_params
        row.ms_ssim = ms_ssim_uint8(rgb_view(w.pixels, img.mode), img.rgb) if spec.ms_ssim else None
        row.encode_seconds = choice.seconds
        return row, w.data

    def process_unit(self, unit: WorkUnit, spec: JobSpec) -> dict:
        """Read the unit's inputs here, on the actor (no separate read task can be starved of CPUs), and process it.

        A read-ahead thread fetches and hashes the next records while the
        model encodes this one, holding at most ``spec.read_ahead_bytes``.
        """
        records = stream_unit(unit, spec.input_options, spec.key_column, spec.image_column, spec.target_column)
        return self.process(unit, read_ahead(records, spec.read_ahead_bytes, init=self._coder_thread_init), spec)

    def process(self, unit: WorkUnit, records: Iterable[InputRecord], spec: JobSpec) -> dict:
        """Encode every record, then commit the unit (``shards.commit``: tar first, manifest shard last).

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
        network_s = [0.0]  # written by this thread only
        coder_s = [0.0]  # written by the coder thread only (or this one, without overlap)

        def plan(rec: InputRecord) -> tuple[ManifestRow, PendingImage | None]:
            t = time.perf_counter()
            out = self.plan_record(rec, spec, unit)
            network_s[0] += time.perf_counter() - t
            return out

        def finish(row: ManifestRow, pending: PendingImage | None) -> tuple[ManifestRow, bytes | None]:
            t = time.perf_counter()
            out = self.finish_record(row, pending, spec)
            coder_s[0] += time.perf_counter() - t
            return out

        if self.overlap:
            results: list[Future] = []
            with ThreadPoolExecutor(1, thread_name_prefix="entropy-coder", initializer=self._coder_thread_init) as pool:
                for rec in records:
                    if len(results) >= PIPELINE_DEPTH:  # one coder thread finishes in order
                        wait([results[-PIPELINE_DEPTH]])
                    results.append(pool.submit(finish, *plan(rec)))
                finished = [f.result() for f in results]
        else:
            finished = [finish(*plan(rec)) for rec in records]
        # keys shared within the unit are refused now that every key is known; their bitstreams are dropped
        refuse_duplicates([row for row, _ in finished], ManifestRow.fail)
        finished = [(row, data if row.status == "ok" else None) for row, data in finished]
        rows = commit(spec, unit, finished)
        ok = [r for r in rows if r.status == "ok"]
        return {  # what the driver's progress line needs; statistics are read from the manifest
            "unit_id": unit.unit_id,
            "images": len(rows),
            "errors": len(rows) - len(ok),
            "bytes_in": sum(r.source_bytes or 0 for r in rows),
            "bytes_out": sum(r.bytes or 0 for r in ok),
            "seconds": time.perf_counter() - t0,
            "codec_seconds": network_s[0] + coder_s[0],  # decoding and coding images: the rest is the pipeline's
            "device": self.device_name,
            "node_id": _node_id(),
        }
