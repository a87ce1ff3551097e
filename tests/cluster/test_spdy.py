"""The SPDY/3 codec: dictionary, header blocks across one zlib context, frame layout."""

from __future__ import annotations

import hashlib
import struct

from hypothesis import given
from hypothesis import strategies as st

from dapfab.testing.cluster import spdy

header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


def test_the_dictionary_is_the_spdy3_one() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert hashlib.sha256(spdy.DICTIONARY).hexdigest() == (
        "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02")


@given(st.lists(st.dictionaries(header_names, header_values, max_size=6), min_size=1, max_size=5))
def test_header_blocks_round_trip_through_one_context_per_direction(blocks: list[dict[str, str]]) -> None:
    sender, receiver = spdy.HeaderCodec(), spdy.HeaderCodec()
    for headers in blocks:
        # the sender's compressor and the receiver's decompressor carry state between blocks
        decoded = receiver.decode(sender.encode(headers))
        assert decoded == {k: [v] for k, v in headers.items()}


def test_a_syn_stream_decodes_to_its_port_forward_headers() -> None:
    client, server = spdy.HeaderCodec(), spdy.HeaderCodec()
    frame = spdy.encode_syn_stream(client, 3, {"streamtype": "data", "port": "8080", "requestid": "0"})
    decoded = spdy.decode(server, frame[:8], frame[8:])
    assert (decoded.kind, decoded.stream_id) == (spdy.SYN_STREAM, 3)
    assert (decoded.header("streamtype"), decoded.header("port"), decoded.header("requestid")) == (
        "data", "8080", "0")


def test_data_frames_carry_stream_id_fin_and_length() -> None:
    frame = spdy.data_frame(5, b"abc", fin=True)
    assert frame == struct.pack(">II", 5, 0x01000003) + b"abc"
    assert spdy.parse_header(frame[:8]) == (False, 5, spdy.FLAG_FIN, 3)


def test_control_frames_are_version_3() -> None:
    frame = spdy.ping(7)
    assert frame == bytes([0x80, 0x03, 0x00, 0x06, 0, 0, 0, 4, 0, 0, 0, 7])
    assert spdy.decode(spdy.HeaderCodec(), frame[:8], frame[8:]).status == 7


def test_another_spdy_version_is_a_protocol_error() -> None:
    head = struct.pack(">HHI", 0x8002, spdy.PING, 4)
    try:
        spdy.parse_header(head)
    except spdy.ProtocolError:
        return
    raise AssertionError("SPDY/2 accepted")
