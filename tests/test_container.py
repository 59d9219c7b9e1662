"""The .msinn container: round trips, and every kind of damage ends in BitstreamError."""

from __future__ import annotations

import random
import struct
import zlib

import numpy as np
import pytest
import torch
from helpers import image_file

from msinn.container import MAGIC, read_header, unpack
from msinn.decoding import decode_image
from msinn.encoding import encode_image
from msinn.errors import BitstreamError
from msinn.ratecontrol import Target


@pytest.fixture(scope="module")
def sample_png() -> bytes:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 96 * 80 * 3).reshape(80, 96, 3)
    img = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    return image_file(img)


@pytest.fixture(scope="module")
def encoded(tiny_model, sample_png):
    return encode_image(tiny_model, sample_png, Target("qp", 1.5))


def test_round_trip_matches_encoder_reconstruction(tiny_model, encoded):
    dec = decode_image(encoded.data, tiny_model)
    assert dec.pixels.shape == (80, 96, 3)
    assert np.array_equal(dec.pixels, encoded.reconstruction)
    h, _ = read_header(encoded.data)
    assert h.qp == 1.5 and h.width == 96 and h.height == 80 and h.mode == "RGB"
    assert len(h.tiles) == 1 and len(h.tiles[0].level_digests) == 5


def test_header_is_small(encoded):
    _, start = read_header(encoded.data)
    assert start < 230  # bytes of overhead before the payload (float32 files record their numerics)


def test_every_truncation_is_refused(tiny_model, encoded):
    data = encoded.data
    rng = random.Random(1)
    cuts = sorted(set(list(range(0, 40)) + [rng.randrange(len(data)) for _ in range(200)] + [len(data) - 1]))
    for n in cuts:
        with pytest.raises(BitstreamError):
            decode_image(data[:n], tiny_model, "cut")


def test_random_byte_flips_are_refused(tiny_model, encoded):
    data = encoded.data
    rng = random.Random(2)
    for _ in range(300):
        b = bytearray(data)
        pos = rng.randrange(len(b))
        b[pos] ^= 1 << rng.randrange(8)
        with pytest.raises(BitstreamError):
            decode_image(bytes(b), tiny_model, "flipped")


def test_appended_garbage_and_foreign_files_are_refused(tiny_model, encoded, sample_png):
    for bad in (encoded.data + b"\0", sample_png, b"", b"\x89MSN", MAGIC + b"\x09" + encoded.data[5:]):
        with pytest.raises(BitstreamError):
            decode_image(bad, tiny_model, "bad")


def _rewrite_payload(data: bytes, payload: bytes) -> bytes:
    """Replace the payload and fix its CRC: damage that checksums cannot see."""
    header, start = read_header(data)
    header.payload_crc32 = zlib.crc32(payload)
    from msinn.container import pack

    return pack(header, payload)


def test_stream_damage_behind_a_valid_crc_is_caught_by_level_hashes(tiny_model, encoded):
    header, payload = unpack(encoded.data)
    rng = random.Random(3)
    t = header.tiles[0]
    for _ in range(40):
        p = bytearray(payload)
        pos = t.offset + rng.randrange(t.length)
        p[pos] ^= 0xFF
        with pytest.raises(BitstreamError):
            decode_image(_rewrite_payload(encoded.data, bytes(p)), tiny_model, "forged")


@pytest.mark.parametrize("level", [0, 2, 4])
def test_perturbed_decoder_is_caught_at_its_level(tiny_model, encoded, level):
    """A decoder whose entropy parameters drift (same weights, other arithmetic) must stop at that level."""
    import copy

    drifted = copy.deepcopy(tiny_model)  # the same weights, so the same identity hash: only the arithmetic drifts
    drifted.entropy_parameters[level][-1].register_forward_hook(lambda mod, inp, out: out + 0.3)
    with pytest.raises(BitstreamError, match=f"level {level}"):
        decode_image(encoded.data, drifted, "drift")


def test_wrong_model_is_refused_by_name(tiny_model, encoded):
    from msinn import MSINN, MSINNConfig

    torch.manual_seed(9)
    other = MSINN(MSINNConfig(N=16, M=16, depths=(1, 1, 1, 1), context_channels=16, anchor_num=4, post_process=False))
    other.update()
    other.eval()
    with pytest.raises(BitstreamError, match="encoded with model"):
        decode_image(encoded.data, other, "x")


def test_newer_version_and_unknown_critical_field(tiny_model, encoded):
    from msinn.container import FORMAT_VERSION as CURRENT

    data = bytearray(encoded.data)
    data[len(MAGIC)] = CURRENT + 1
    with pytest.raises(BitstreamError, match="newer"):
        read_header(bytes(data))
    # an unknown optional field is skipped, an unknown critical one refused
    header, start = read_header(encoded.data)
    from msinn.container import FORMAT_VERSION, _uvarint, encode_header

    for tag, ok in ((100, True), (200, False)):
        body = encode_header(header) + bytes((tag, 2)) + b"hi"
        blob = MAGIC + bytes((FORMAT_VERSION,)) + _uvarint(len(body)) + body + struct.pack(">I", zlib.crc32(body))
        blob += encoded.data[start:]
        if ok:
            assert np.array_equal(decode_image(blob, tiny_model).pixels, encoded.reconstruction)
        else:
            with pytest.raises(BitstreamError, match="critical"):
                decode_image(blob, tiny_model)
