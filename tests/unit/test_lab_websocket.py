"""The lab API server's WebSocket pieces that need no server."""

from __future__ import annotations

import os

from dapfab.testing.cluster.websocket import accept_key, frame, unmask


def test_unmask_is_the_byte_wise_xor_with_the_repeated_key():
    mask = bytes([1, 2, 3, 255])
    for n in (0, 1, 4, 5, 1001):
        data = os.urandom(n)
        assert unmask(data, mask) == bytes(c ^ mask[i % 4] for i, c in enumerate(data))


def test_accept_key_of_the_rfc_6455_example():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_frame_lengths_use_the_short_16_and_64_bit_forms():
    assert frame(2, b"x" * 125)[:2] == bytes([0x82, 125])
    assert frame(2, b"x" * 126)[:4] == bytes([0x82, 126, 0, 126])
    assert frame(2, b"x" * 65536)[:2] == bytes([0x82, 127])
