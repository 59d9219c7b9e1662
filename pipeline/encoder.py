"""The encoder actor: holds the model, turns one unit's records into rows and bitstreams, commits the shard.

Each image goes through two stages: the network stage (analysis, rate search,
reconstruction) and the CPU stage (rANS coding, container, hashes). Every
image gets exactly one manifest row, built here and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import torch

from msinn.checkpoint import model_identity
from msinn.choice import ChoiceOptions, choose, meets
from msinn.encoding import EncodeOptions, PendingEncode, prepare_encode
from msinn.errors import ImageInputError
from msinn.images import PreparedImage, open_image, rgb_view
from msinn.lossless import LOSSLESS, store_exactly
from msinn.metrics import ms_ssim_uint8
from msinn.ratecontrol import Target
from msinn.version import __version__

from .inputs import stream_unit
from .keys import refuse_duplicates
from .limits import memory_refusal
from .manifest import ManifestRow, Member
from .readahead import read_ahead
from .shards import commit
from .sources import InputRecord, unread_images
from .spec import Attempt, JobSpec, WorkUnit

log = logging.getLogger("pipeline.encoder")


@dataclass
class PendingImage:
    """An image between the two stages: decoded, its target known, the model's encode prepared (if it competes)."""

    img: PreparedImage | None  # None for an exact file alone (a lossless target, or an image only it can store)
    target: Target
    model_encode: list[PendingEncode] | None  # one per weights; None when msinn is not among the job's codecs
    data: bytes | None = None  # the input's bytes, when the exact file competes (lossless)
    refusal: str | None = None  # why the image is not decoded (its exact file is stored as it is)
    original: str = "bytes"  # what ``data`` is of the original (InputRecord.original): caps what the row promises
    recompress: bool = True  # False: over the memory budget, the exact file is the original as it is
    qp_lambda: float | None = None  # a qp target's training lambda, when several weights compete there
    weights_failed: dict[str, str] | None = None  # --also-model weights that could not code the image, and why


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


PIPELINE_DEPTH = 2  # prepared records allowed to wait for the entropy coder


Step = tuple[str, object]  # ("read", i), ("encode", i), ("commit", None), then ("done", the unit's summary)


def _staged(records: Iterable[InputRecord]) -> Iterator[tuple[str, int, InputRecord | None]]:
    """("read", i, None) before record i is pulled (read), then ("encode", i, record): the steps an actor reports."""
    it = iter(records)
    index = 0
    while True:
        yield "read", index, None
        try:
            rec = next(it)
        except StopIteration:
            return
        yield "encode", index, rec
        index += 1


def _side(rec: InputRecord, sidecars: list[Member], readable: set[int]) -> bool:
    """Take a sidecar record aside (True); note an image record read whole (False: it is to be coded)."""
    if rec.sidecar:
        sidecars.append(Member(rec.key, rec.member or rec.key, rec.data if rec.error is None else None, rec.index,
                               rec.member_kind, rec.link, rec.error))
        return True
    if rec.data is not None:
        readable.add(rec.index)
    return False


class UnitEncoder:
    """Holds the model; encodes units. Wrapped as a Ray actor by the runner."""

    def __init__(self, model: str | None, device: str = "cpu", threads: int = 0, overlap: bool | None = None,
                 load_model: bool = True, also_models: tuple[str, ...] | list[str] = ()):
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
        # a job that never runs the model (--lossless, classical codecs alone) does not load it
        self.model = msinn.load(model, device=device) if load_model else None
        # other weights competing per image (--also-model); each row names the weights of its file
        self.also = [msinn.load(m, device=device) for m in also_models] if load_model else []
        self._lambdas: tuple[float, ...] | None = None
        self.device_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        self.model_name, self.model_hash = model_identity(self.model) if self.model is not None else (None, None)

    def _coder_thread_init(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    def ready(self) -> str:
        return self.device_name

    def prepare_record(
        self, rec: InputRecord, spec: JobSpec, unit: WorkUnit
    ) -> tuple[ManifestRow, PendingImage | None]:
        """The network half of a record: its manifest row so far and its pending image (None on error)."""
        # Named fields, one per line, like the JobSpec built in pipeline/cli.py: a similar shape, not shared logic.
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
            codec_version=__version__,
            encoded_from=rec.encoded_from,
            source_bytes=rec.source_bytes,
            source_sha256=rec.sha256,
        )
        row.source_index, row.columns_uri = rec.index, rec.columns_uri
        if rec.error is not None:
            return row.fail(rec.error), None
        exact = spec.target_kind == LOSSLESS or LOSSLESS in spec.codecs
        target = spec.target_for(rec.target_value)
        refusal = memory_refusal(rec.data, spec.image_memory, spec.tile_pixels, spec.effort,
                                 1 + len(spec.also_models) if spec.needs_model else 1)
        if refusal is not None:  # judged from the header: nothing decoded yet
            if exact:  # too large to recompress here: stored as it is
                return row, PendingImage(None, target, None, rec.data, f"refused: {refusal}", rec.original, False)
            return row.fail(f"refused: {refusal}"), None
        if spec.target_kind == LOSSLESS:  # nothing to decode here: the exact file is made on the coding side
            return row, PendingImage(None, target, None, rec.data, original=rec.original)
        try:
            img = open_image(rec.data, rec.source_uri, spec.max_pixels)
            model_encode, lam, weights_failed = None, None, {}
            if spec.needs_model:
                opts = EncodeOptions(tile_pixels=spec.tile_pixels, max_pixels=spec.max_pixels, effort=spec.effort)
                lam = self._qp_lambda(target)
                model_encode = [prepare_encode(self.model, img, target, opts)]
                for m in self.also:  # one of the other weights failing leaves the image to the rest
                    try:
                        model_encode.append(prepare_encode(m, img, target, opts))
                    except (ValueError, RuntimeError, MemoryError) as exc:
                        weights_failed[f"msinn {m.model_name}"] = f"{type(exc).__name__}: {exc}"
        except ImageInputError as exc:
            if exact:  # the exact file stores what cannot be coded: never an error for a file that can be stored
                return row, PendingImage(None, target, None, rec.data, f"bad image: {exc}", rec.original)
            return row.fail(f"bad image: {exc}"), None
        except (ValueError, RuntimeError, MemoryError) as exc:
            return row.fail(f"encode failed: {type(exc).__name__}: {exc}"), None
        return row, PendingImage(img, target, model_encode, rec.data if exact else None, original=rec.original,
                                 qp_lambda=lam, weights_failed=weights_failed)

    def _qp_lambda(self, target: Target) -> float | None:
        """The training lambda of a qp target when several weights compete (their lambdas read once)."""
        if not self.also or target.kind != "qp":
            return None
        from msinn.weights_set import lambda_at, shared_lambdas

        if self._lambdas is None:
            self._lambdas = shared_lambdas([self.model, *self.also])
        return lambda_at(self._lambdas, float(target.value))

    @staticmethod
    def finish_record(
        row: ManifestRow, pending: PendingImage | None, spec: JobSpec
    ) -> tuple[ManifestRow, bytes | None]:
        """The CPU half: entropy coding, the container, the other codecs' searches, the choice, the row's figures."""
        if pending is None:
            return row, None
        img, target = pending.img, pending.target
        failed = dict(pending.weights_failed or {})
        try:
            res = None
            if pending.model_encode is not None:
                res = [pending.model_encode[0].finish()]  # --model's file: its failure is the image's
                for other in pending.model_encode[1:]:
                    try:
                        res.append(other.finish())
                    except (ValueError, RuntimeError, MemoryError) as exc:
                        failed[f"msinn {other.model.model_name}"] = f"{type(exc).__name__}: {exc}"
            exact = None
            if pending.data is not None:
                exact = store_exactly(pending.data, row.source_uri or row.key, spec.max_pixels, pending.recompress)
                if pending.refusal:
                    exact.notes.insert(0, pending.refusal)
            choice = choose(img, target, ChoiceOptions(tuple(spec.codecs), spec.avif_speed), res, exact,
                            pending.qp_lambda)
        except (ValueError, RuntimeError, MemoryError, OSError) as exc:
            return row.fail(f"encode failed: {type(exc).__name__}: {exc}"), None
        w = choice.winner
        row.status, row.error = "ok", None
        row.bytes, row.probes, row.encode_seconds = w.bytes, sum(c.probes for c in choice.candidates), choice.seconds
        row.codec, row.codec_version = w.codec, w.codec_version
        if w.exact is not None:
            e = w.exact
            row.width = e.width if e.width is not None else (img.width if img is not None else None)
            row.height = e.height if e.height is not None else (img.height if img is not None else None)
            row.source_format = e.source_format or (img.source_format if img is not None else None)
            row.mode, row.bit_depth = e.mode, e.bit_depth
            row.source_mode = img.source_mode if img is not None else e.mode
            # exact only to what it was made from: a decoded lossy file stored exactly is still not the original
            rank = {"bytes": 2, "pixels": 1, "none": 0}
            row.exact = min(e.exact, pending.original, key=rank.__getitem__)
            row.pixel_hash, row.note = e.pixel_hash, e.note or None
            row.model = row.model_hash = None
            row.target_met = bool(meets(w, target, choice.floor, row.width * row.height)) if (
                target.is_cap and row.width) else True
            row.in_range = True
            row.ms_ssim = 1.0 if spec.ms_ssim and img is not None else None
        else:
            pixels = img.width * img.height
            row.width, row.height = img.width, img.height
            row.psnr = w.psnr if np.isfinite(w.psnr) else None
            row.qp = float(w.quality)
            row.source_format, row.mode, row.source_mode, row.bit_depth = (
                img.source_format, img.mode, img.source_mode, img.bit_depth)
            row.target_met = bool(meets(w, target, choice.floor, pixels)) if target.kind != "qp" else True
            row.in_range = w.in_range
            row.pixel_hash, row.exact = w.pixel_hash, "none"
            if w.header is not None:  # the weights that made the kept file (one of several with --also-model)
                row.model, row.model_hash = w.header.model_name, w.header.model_hash
                row.profile, row.numerics, row.effort = w.header.profile, w.header.numerics or None, spec.effort
            else:  # a classical file needs no model to decode
                row.model = row.model_hash = None
                row.codec_params = w.codec_params
            row.ms_ssim = ms_ssim_uint8(rgb_view(w.pixels, img.mode), img.rgb) if spec.ms_ssim else None
        if failed:  # --also-model weights that could not compete, so a row never hides it
            row.note = "; ".join([*([row.note] if row.note else []), *(f"{k} could not code it: {v}"
                                                                     for k, v in failed.items())])
        if row.width and row.height:
            row.bpp = w.bytes * 8 / (row.width * row.height)
        return row, w.data

    def unit_steps(self, unit: WorkUnit, spec: JobSpec, attempt: Attempt | None = None) -> Iterator[Step]:
        """The actor's entry point: read the unit's inputs here, on the actor (no separate read task can be
        starved of CPUs), and encode and commit it, as the steps the pool follows (a Ray streaming generator):
        what this actor reads or encodes, reported before it starts, so the driver knows where an actor was if
        it dies.

        A read-ahead thread fetches and hashes the next records while the
        model encodes this one, holding at most ``spec.read_ahead_bytes``. A
        careful ``attempt`` (the unit cost an actor before) reads and encodes
        one record at a time on this thread, so each report names what the
        actor is doing; records in ``attempt.skip`` get their error rows unread.
        """
        attempt = attempt or Attempt()
        records: Iterable[InputRecord] = stream_unit(unit, spec, dict(attempt.skip))
        if not attempt.careful:
            records = read_ahead(records, spec.read_ahead_bytes, init=self._coder_thread_init)
        yield from self.steps(unit, records, spec, overlap=False if attempt.careful else None)

    def steps(self, unit: WorkUnit, records: Iterable[InputRecord], spec: JobSpec,
              overlap: bool | None = None) -> Iterator[Step]:
        """Encode every record, then commit the unit (``shards.commit``: tar first, manifest shard last), reporting
        each step; the last is ("done", summary).

        With ``overlap`` (the default on a GPU) the network half of record i+1
        runs while a second thread entropy-codes and packs record i (rANS and
        hashing are CPU work that would otherwise leave the GPU idle). At most
        ``PIPELINE_DEPTH`` prepared records wait for the coder, which bounds the
        memory held.
        """
        if self.threads:
            # OpenMP thread counts are per calling thread; Ray may run methods on another thread than __init__
            torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        network_s = [0.0]  # written by this thread only
        coder_s = [0.0]  # written by the coder thread only (or this one, without overlap)

        def prepare(rec: InputRecord) -> tuple[ManifestRow, PendingImage | None]:
            t = time.perf_counter()
            out = self.prepare_record(rec, spec, unit)
            network_s[0] += time.perf_counter() - t
            return out

        def finish(row: ManifestRow, pending: PendingImage | None) -> tuple[ManifestRow, bytes | None]:
            t = time.perf_counter()
            out = self.finish_record(row, pending, spec)
            coder_s[0] += time.perf_counter() - t
            return out

        sidecars: list[Member] = []  # the samples' other parts, stored as they are
        readable: set[int] = set()  # records read whole: if their row fails, their bytes are stored as they are
        if self.overlap if overlap is None else overlap:
            results: list[Future] = []
            with ThreadPoolExecutor(1, thread_name_prefix="entropy-coder", initializer=self._coder_thread_init) as pool:
                for stage, index, rec in _staged(records):
                    yield stage, index
                    if rec is None or _side(rec, sidecars, readable):
                        continue
                    if len(results) >= PIPELINE_DEPTH:  # one coder thread finishes in order
                        wait([results[-PIPELINE_DEPTH]])
                    results.append(pool.submit(finish, *prepare(rec)))
                finished = [f.result() for f in results]
        else:
            finished = []
            for stage, index, rec in _staged(records):
                yield stage, index
                if rec is not None and not _side(rec, sidecars, readable):
                    finished.append(finish(*prepare(rec)))
        yield "commit", None
        # keys shared within the unit are refused now that every key is known; their bitstreams are dropped
        refuse_duplicates([row for row, _ in finished], ManifestRow.fail)
        finished = [(row, data if row.status == "ok" else None) for row, data in finished]
        failed = {r.source_index for r, _ in finished if r.status == "error" and r.source_index in readable}
        # an image that could not be coded (or shares its key) is not lost: its bytes are stored as they are
        kept = unread_images(unit, spec, failed, {r.source_index: r.key for r, _ in finished}) if failed else []
        rows = commit(spec, unit, finished, sidecars + kept)
        ok = [r for r in rows if r.status == "ok"]
        yield "done", {  # what the driver's progress line needs; statistics are read from the manifest
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
