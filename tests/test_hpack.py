"""HPACK (RFC 7541) in C: fastproxy._hpack.

The examples of RFC 7541 Appendix C byte for byte (decoding, the dynamic table
sizes after each block, and encoding where our indexing choices are the ones
the examples make), the decoder's limits and errors, and property tests that
round-trip header lists through our encoder and decoder and through the `hpack`
package (the reference model) in both directions, over sequences of blocks so
that the dynamic tables of both sides must stay in step.
"""

from __future__ import annotations

import hpack
import pytest
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy._hpack import (
    STATIC_TABLE,
    HeaderListTooLarge,
    HpackDecoder,
    HpackEncoder,
    HpackError,
    huffman_decode_bytes,
    huffman_encode_bytes,
)

H = bytes.fromhex

# RFC 7541 C.3 / C.4: three requests on one connection.
REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
     (b":authority", b"www.example.com")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
     (b":authority", b"www.example.com"), (b"cache-control", b"no-cache")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
     (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
]
C3 = [
    H("828684410f7777772e6578616d706c652e636f6d"),
    H("828684be58086e6f2d6361636865"),
    H("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"),
]
C4 = [
    H("828684418cf1e3c2e5f23a6ba0ab90f4ff"),
    H("828684be5886a8eb10649cbf"),
    H("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"),
]
REQUEST_TABLE_SIZES = [57, 110, 164]

# RFC 7541 C.5 / C.6: three responses, dynamic table of 256 bytes (evictions).
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
LOCATION = b"https://www.example.com"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES = [
    [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1),
     (b"location", LOCATION)],
    [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1),
     (b"location", LOCATION)],
    [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2),
     (b"location", LOCATION), (b"content-encoding", b"gzip"), (b"set-cookie", COOKIE)],
]
C5 = [
    H("4803333032580770726976617465611d4d6f6e2c203231204f637420323031332032303a31333a32"
      "3120474d546e1768747470733a2f2f7777772e6578616d706c652e636f6d"),
    H("4803333037c1c0bf"),
    H("88c1611d4d6f6e2c203231204f637420323031332032303a31333a323220474d54c05a04677a6970"
      "7738666f6f3d4153444a4b48514b425a584f5157454f50495541585157454f49553b206d61782d61"
      "67653d333630303b2076657273696f6e3d31"),
]
C6 = [
    H("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad"
      "171863c78f0b97c8e9ae82ae43d3"),
    H("4883640effc1c0bf"),
    H("88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2"
      "e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007"),
]
RESPONSE_TABLE_SIZES = [222, 222, 215]


def test_huffman_code_is_rfc7541_appendix_b() -> None:
    # Each symbol alone, padded with ones: the code of every byte value, checked
    # against the reference package's table.
    for sym in range(256):
        code, length = REQUEST_CODES[sym], REQUEST_CODES_LENGTH[sym]
        pad = -length % 8
        expected = ((code << pad) | ((1 << pad) - 1)).to_bytes((length + pad) // 8, "big")
        assert huffman_encode_bytes(bytes([sym])) == expected, sym
        assert huffman_decode_bytes(expected) == bytes([sym])
    assert huffman_encode_bytes(b"www.example.com") == H("f1e3c2e5f23a6ba0ab90f4ff")
    assert huffman_encode_bytes(b"") == b""


def test_huffman_rejects_eos_and_bad_padding() -> None:
    assert huffman_decode_bytes(b"") == b""
    with pytest.raises(HpackError):
        huffman_decode_bytes(H("fffffffc"))  # EOS (30 ones) then 2 bits of padding
    with pytest.raises(HpackError):
        huffman_decode_bytes(H("ff"))  # 8 bits of padding: longer than 7 (5.2)
    with pytest.raises(HpackError):
        huffman_decode_bytes(H("00"))  # '0' (00000) then padding 000: not ones
    assert huffman_decode_bytes(H("07")) == b"0"  # '0' then padding 111


@pytest.mark.parametrize(("blocks", "huffman"), [(C3, False), (C4, True)])
def test_rfc7541_request_examples(blocks: list[bytes], huffman: bool) -> None:
    decoder = HpackDecoder()
    encoder = HpackEncoder()
    for block, headers, size in zip(blocks, REQUESTS, REQUEST_TABLE_SIZES, strict=True):
        assert decoder.decode(block) == headers
        assert decoder.table_size == size
        # Our encoder makes the same choices as the example (every field indexed).
        assert encoder.encode(headers, huffman=huffman) == block
        assert encoder.table_size == size
    assert decoder.table_entries == [(b"custom-key", b"custom-value"),
                                     (b"cache-control", b"no-cache"),
                                     (b":authority", b"www.example.com")]


@pytest.mark.parametrize("blocks", [C5, C6])
def test_rfc7541_response_examples_with_eviction(blocks: list[bytes]) -> None:
    decoder = HpackDecoder(max_table_size=256)
    for block, headers, size in zip(blocks, RESPONSES, RESPONSE_TABLE_SIZES, strict=True):
        assert decoder.decode(block) == headers
        assert decoder.table_size == size
    assert decoder.table_entries == [
        (b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)]


def test_rfc7541_field_representations() -> None:
    # C.2.1 - C.2.4: with indexing, without, never indexed, indexed.
    decoder = HpackDecoder()
    assert decoder.decode(H("400a637573746f6d2d6b65790d637573746f6d2d686561646572")) == [
        (b"custom-key", b"custom-header")]
    assert decoder.table_size == 55
    assert decoder.decode(H("040c2f73616d706c652f70617468")) == [(b":path", b"/sample/path")]
    assert decoder.decode(H("100870617373776f726406736563726574")) == [
        (b"password", b"secret")]
    assert decoder.decode(H("82")) == [(b":method", b"GET")]
    assert decoder.table_size == 55


def test_rfc7541_integers_through_size_updates() -> None:
    # C.1: 10 and 1337 with a 5-bit prefix (a size update has one).
    decoder = HpackDecoder()
    assert decoder.decode(H("2a")) == []
    assert decoder.max_table_size == 10
    assert decoder.decode(H("3f9a0a")) == []
    assert decoder.max_table_size == 1337


def test_size_updates_evict_and_are_bounded() -> None:
    decoder = HpackDecoder(max_table_size=4096)
    decoder.decode(C3[0])
    assert decoder.table_size == 57
    decoder.decode(H("20"))  # size 0: the table empties
    assert decoder.table_size == 0 and decoder.table_entries == []
    with pytest.raises(HpackError):
        decoder.decode(H("be"))  # index 62: no dynamic entry now
    with pytest.raises(HpackError, match="over 4096"):
        decoder.decode(H("3fe21f"))  # 31 + 98 + (31 << 7) = 4097
    assert HpackDecoder().decode(H("3fe11f")) == []  # exactly 4096
    small = HpackDecoder(max_table_size=64)
    small.decode(C3[0])  # :authority www.example.com, 57 bytes
    assert small.decode(H("4005") + b"x-big" + H("40") + b"v" * 64) == [(b"x-big", b"v" * 64)]
    assert small.table_size == 0  # larger than the table: it empties (4.4)
    with pytest.raises(HpackError, match="after a field"):
        HpackDecoder().decode(H("8220"))
    decoder = HpackDecoder()
    decoder.set_max_allowed(100)  # our SETTINGS went down: so does the table
    assert decoder.max_table_size == 100
    with pytest.raises(HpackError):
        decoder.decode(H("3f46"))  # 31 + 70 = 101


@pytest.mark.parametrize("block", [
    H("80"),  # index 0
    H("ff"),  # an integer that ends with the block
    H("ff8080808001"),  # five continuation bytes
    H("be"),  # index 62: empty dynamic table
    H("fe"),  # index 126
    H("4005"),  # a name shorter than its length says
    H("40"),  # a literal with no name
    H("41"),  # a literal with no value
    H("4185ffffffffff"),  # a Huffman value that is EOS and more
    H("418100"),  # Huffman padding of zeros
])
def test_decoder_errors(block: bytes) -> None:
    with pytest.raises(HpackError):
        HpackDecoder().decode(block)


def test_header_list_limit_stops_an_hpack_bomb_early() -> None:
    # One 4000-byte field goes in the table; the next block references it 1000 times.
    encoder = hpack.Encoder()
    first = encoder.encode([(b"x-bomb", b"z" * 4000)])
    decoder = HpackDecoder(max_header_list_size=10_000)
    assert decoder.decode(first) == [(b"x-bomb", b"z" * 4000)]
    bomb = H("be") * 1000
    with pytest.raises(HeaderListTooLarge, match="10000"):
        decoder.decode(bomb)
    # The limit counts 32 bytes per field as RFC 7541 4.1 does: two fit, three do not.
    ok = HpackDecoder(max_header_list_size=2 * (6 + 4000 + 32))
    ok.decode(first + H("be"))
    with pytest.raises(HeaderListTooLarge):
        ok.decode(H("bebebe"))
    assert issubclass(HeaderListTooLarge, HpackError)


def test_encoder_indexing_choices() -> None:
    encoder = HpackEncoder()
    head = [(b":status", b"200"), (b"server", b"fastproxy"), (b"content-length", b"5"),
            (b"set-cookie", b"s=1"), (b"x-custom", b"abc")]
    first = encoder.encode(head, huffman=False)
    second = encoder.encode(head, huffman=False)
    # :status 200 is static (0x88); server and x-custom go in the table and are one
    # byte the second time; content-length is never added; set-cookie never indexed.
    assert first[:1] == H("88")
    assert H("1f28") + b"\x03s=1" in first and H("1f28") + b"\x03s=1" in second
    assert H("0f0d") + b"\x015" in second
    assert len(second) == 1 + 1 + 4 + 6 + 1
    assert encoder.table_size == (6 + 9 + 32) + (8 + 3 + 32)
    decoder = hpack.Decoder()
    assert decoder.decode(first, raw=True) == head
    assert decoder.decode(second, raw=True) == head
    flags = [type(f).__name__ for f in decoder.decode(second, raw=True)]
    assert flags[3] == "NeverIndexedHeaderTuple"


def test_encoder_table_size_updates_reach_the_decoder() -> None:
    encoder = HpackEncoder()
    decoder = HpackDecoder()
    head = [(b"x-a", b"1" * 30), (b"x-b", b"2" * 30)]
    decoder.decode(encoder.encode(head))
    assert decoder.table_size == encoder.table_size == 2 * (3 + 30 + 32)
    encoder.set_max_table_size(0)
    encoder.set_max_table_size(100)  # down then up: the block says both (4.2)
    block = encoder.encode(head)
    assert block[:1] == H("20")
    assert decoder.decode(block) == head
    assert decoder.max_table_size == encoder.max_table_size == 100
    assert decoder.table_entries == [(b"x-b", b"2" * 30)]  # 65 bytes each: one fits
    encoder.set_max_table_size(1 << 20)  # never more than the encoder was made with
    assert encoder.max_table_size == 4096


FIELD_NAMES = st.sampled_from(
    [name for name, _ in STATIC_TABLE] + [b"x-a", b"x-b", b"x-long-name-" * 3, b"set-cookie"])
NAMES = st.one_of(FIELD_NAMES, st.binary(min_size=1, max_size=20))
VALUES = st.one_of(st.sampled_from([b"", b"200", b"gzip", b"a" * 300]),
                   st.binary(max_size=60))
HEADER_LISTS = st.lists(st.tuples(NAMES, VALUES), max_size=12)
BLOCK_SEQUENCES = st.lists(HEADER_LISTS, min_size=1, max_size=6)
TABLE_SIZES = st.sampled_from([0, 64, 256, 4096])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=BLOCK_SEQUENCES, size=TABLE_SIZES, huffman=st.booleans())
def test_our_encoder_to_reference_decoder(blocks: list[list[tuple[bytes, bytes]]], size: int,
                                          huffman: bool) -> None:
    encoder = HpackEncoder()
    encoder.set_max_table_size(size)
    reference = hpack.Decoder(max_header_list_size=1 << 30)
    ours = HpackDecoder(max_header_list_size=1 << 30)
    for headers in blocks:
        block = encoder.encode(headers, huffman=huffman)
        assert reference.decode(block, raw=True) == headers
        assert ours.decode(block) == headers
        assert ours.table_size == encoder.table_size


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(blocks=BLOCK_SEQUENCES, size=TABLE_SIZES, huffman=st.booleans())
def test_reference_encoder_to_our_decoder(blocks: list[list[tuple[bytes, bytes]]], size: int,
                                          huffman: bool) -> None:
    reference = hpack.Encoder()
    reference.header_table_size = size
    ours = HpackDecoder(max_header_list_size=1 << 30)
    for headers in blocks:
        block = reference.encode(headers, huffman=huffman)
        # Later blocks index into the table: equal lists mean tables in step.
        assert ours.decode(block) == headers


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=64))
def test_huffman_round_trip(data: bytes) -> None:
    coded = huffman_encode_bytes(data)
    assert huffman_decode_bytes(coded) == data
    assert coded == hpack.huffman.HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode(data)


@settings(max_examples=1500, deadline=None)
@given(prefix=st.sampled_from([b"", C4[0], C5[0]]), data=st.binary(max_size=80))
def test_decoder_on_arbitrary_bytes(prefix: bytes, data: bytes) -> None:
    # Only a header list or HpackError; where the reference also decodes the bytes,
    # it finds the same list.
    ours = HpackDecoder(max_header_list_size=1 << 16)
    reference = hpack.Decoder(max_header_list_size=1 << 16)
    if prefix:
        ours.decode(prefix)
        reference.decode(prefix, raw=True)
    try:
        got = ours.decode(data)
    except HpackError:
        return
    try:
        expected = reference.decode(data, raw=True)
    except hpack.HPACKError:
        return
    assert got == expected
