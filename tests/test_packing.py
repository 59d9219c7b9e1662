"""xz-packed model files: the same model as the plain file, and unpacking bounded before torch reads a byte."""

from __future__ import annotations

import lzma
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import msinn
from msinn import checkpoint, packing, registry
from msinn.checkpoint import CheckpointError, read_checkpoint
from msinn.cli import main


def test_a_packed_float_checkpoint_is_the_same_model(tmp_path, tiny_model):
    plain, packed = tmp_path / "m.pt", tmp_path / "m.pt.xz"
    msinn.save_checkpoint(plain, tiny_model, meta={"note": "x"})
    msinn.save_checkpoint(packed, tiny_model, meta={"note": "x"})
    assert packing.is_packed(packed.read_bytes()) and not packing.is_packed(plain.read_bytes())
    assert read_checkpoint(packed)[2] == {"note": "x"}
    a, b = msinn.load(plain), msinn.load(packed)
    assert a.weights_sha256 == b.weights_sha256
    x = torch.rand(1, 3, 64, 64)
    assert a.compress_raw(x, 1.0) == b.compress_raw(x, 1.0)
    assert checkpoint.load_file(packed.read_bytes()).weights_sha256 == a.weights_sha256  # bytes, as from S3
    assert b.model_name == "m.pt.xz"


def test_a_packed_portable_file_codes_the_same_bits_and_is_smaller(tmp_path, tiny_checkpoint):
    png_path = str(tmp_path / "in.png")
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 56, 3), np.uint8)).save(png_path)
    plain, raw = msinn.load(tiny_checkpoint), Path(tiny_checkpoint).read_bytes()
    packed_file = tmp_path / "tiny.pt.xz"
    packed_file.write_bytes(packing.pack(raw))
    assert packed_file.stat().st_size < 0.7 * len(raw)
    # unpacking gives the original file back byte for byte
    assert packing.unpack(packed_file.read_bytes(), "t") == raw
    assert msinn.load(packed_file).weights_sha256 == plain.weights_sha256
    a, b = tmp_path / "a.msinn", tmp_path / "b.msinn"
    assert main(["encode", png_path, str(a), "--qp", "2", "--model", tiny_checkpoint]) == 0
    assert main(["encode", png_path, str(b), "--qp", "2", "--model", str(packed_file)]) == 0
    # the headers name the files (tiny-test.pt, tiny.pt.xz); the coded payloads are the same bytes
    assert a.read_bytes()[-2000:] == b.read_bytes()[-2000:] and a.stat().st_size - b.stat().st_size == 2
    # a file coded with one decodes with the other, to the same pixels
    assert main(["decode", str(a), str(tmp_path / "a.png"), "--model", str(packed_file)]) == 0
    assert main(["decode", str(b), str(tmp_path / "b.png"), "--model", tiny_checkpoint]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png")))


def test_a_portable_model_saved_to_a_packed_name_is_packed(tmp_path, tiny_checkpoint):
    model = msinn.load(tiny_checkpoint)
    out = tmp_path / "p.pt.xz"
    checkpoint.save_portable(out, model)  # what ``msinn convert MODEL OUT.pt.xz`` writes with
    assert packing.is_packed(out.read_bytes())
    assert msinn.load(out).weights_sha256 == model.weights_sha256


def test_bundled_packed_files_unpack_within_the_limits():
    packed = [m for m in registry.registered_models() if m.bundled and m.file.endswith(packing.PACKED_SUFFIX)]
    assert packed, "the portable models ship packed"
    for m in packed:
        data = m.path.read_bytes()
        assert packing.is_packed(data)
        assert len(packing.unpack(data, m.name)) <= packing.MAX_UNPACKED_BYTES


def test_a_file_that_unpacks_past_the_limit_is_refused_before_torch_reads_it(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.pt.xz"
    bomb.write_bytes(packing.pack(bytes(4 << 20)))  # 4 MiB of zeros in a few hundred bytes
    assert bomb.stat().st_size < 10_000
    monkeypatch.setattr(checkpoint, "MAX_UNPACKED_BYTES", 1 << 20)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load reached"))
    with pytest.raises(CheckpointError, match=r"bomb\.pt\.xz: unpacks to more than 1048576 bytes"):
        msinn.load(bomb)
    with pytest.raises(CheckpointError, match="unpacks to more than"):
        checkpoint.load_file(bomb.read_bytes())


def _with_dictionary_claim(data: bytes, props: int) -> bytes:
    """An xz stream whose block header claims another LZMA2 dictionary size (header CRC mended)."""
    z = bytearray(data)
    start = 12  # the block header follows the 12-byte stream header
    size = (z[start] + 1) * 4
    header = z[start:start + size]
    i = header.index(bytes([0x21, 0x01]))  # LZMA2's filter id and one property byte
    header[i + 2] = props
    header[-4:] = struct.pack("<I", zlib.crc32(bytes(header[:-4])))
    z[start:start + size] = header
    return bytes(z)


def test_a_header_that_asks_for_a_huge_decoder_is_refused(tmp_path):
    small = lzma.compress(b"weights" * 50, format=lzma.FORMAT_XZ,
                          filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 4096}])
    greedy = _with_dictionary_claim(small, 32)  # 256 MiB: twice what the decoder may take
    (tmp_path / "greedy.pt.xz").write_bytes(greedy)
    # the header is well formed (its CRC holds): what refuses it is the memory limit, not corruption
    with pytest.raises(CheckpointError, match=r"greedy\.pt\.xz: not a readable xz stream \(Memory usage limit"):
        msinn.load(tmp_path / "greedy.pt.xz")
    assert packing.unpack(_with_dictionary_claim(small, 0), "small") == b"weights" * 50  # a 4 KiB claim reads


def test_a_packed_file_larger_than_the_limit_is_refused_unread(tmp_path, monkeypatch):
    big = tmp_path / "big.pt.xz"
    big.write_bytes(packing.pack(np.random.default_rng(0).bytes(64 << 10)))  # incompressible: > 64 KiB packed
    monkeypatch.setattr(checkpoint, "MAX_UNPACKED_BYTES", 32 << 10)
    with pytest.raises(CheckpointError, match=r"big\.pt\.xz: a packed file larger than 32768 bytes"):
        msinn.load(big)


def test_packed_bytes_of_any_buffer_type_load(tiny_float_checkpoint):
    data = packing.pack(open(tiny_float_checkpoint, "rb").read())
    want = msinn.load(tiny_float_checkpoint).weights_sha256
    for buf in (data, bytearray(data), memoryview(data)):
        assert checkpoint.load_file(buf).weights_sha256 == want
    name, obj = checkpoint.load_object(data)
    assert name == "<bytes>" and obj["format"] == checkpoint.FORMAT


def test_truncated_corrupt_and_trailing_packed_files_are_refused(tmp_path, tiny_float_checkpoint):
    good = packing.pack(open(tiny_float_checkpoint, "rb").read())
    cases = {
        "cut.pt.xz": (good[: len(good) // 2], "ends early"),
        "flip.pt.xz": (good[:200] + bytes([good[200] ^ 0xFF]) + good[201:], "not a readable xz stream"),
        "tail.pt.xz": (good + b"junk", "4 bytes follow the xz stream"),
    }
    for name, (data, why) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"{name}.*{why}"):
            msinn.load(tmp_path / name)


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        msinn.load(tmp_path)
