"""The compiled HTTP/2 connection layer (fastproxy._h2.ServerConnection) on its own.

The `h2` library plays the client (its frames in, ours parsed back by it), and
frames written by hand reach the error paths: the preface, SETTINGS first,
frame sizes, CONTINUATION sequencing and floods, stream id ordering and states,
flow-control windows both ways with their overflow checks, padding, HPACK
errors and bombs. The handler records what the connection told it. Property
tests feed a client's bytes in arbitrary pieces (the same calls must come out)
and arbitrary frames after a valid start (only H2ProtocolError may come out).
"""

from __future__ import annotations

import struct
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastproxy._h2 import (
    COMPRESSION_ERROR,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    STREAM_CLOSED,
    H2ProtocolError,
    H2StreamClosed,
    ServerConnection,
    error_name,
)

REQ = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"https"),
       (b":authority", b"site.example")]
SETTINGS0 = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame


class Recorder:
    """The handler: every call, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def h2_request(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.calls.append(("request", sid, headers, ended))

    def h2_data(self, sid: int, data: bytes, size: int) -> None:
        self.calls.append(("data", sid, data, size))

    def h2_end(self, sid: int) -> None:
        self.calls.append(("end", sid))

    def h2_reset(self, sid: int, code: int, remote: bool) -> None:
        self.calls.append(("reset", sid, code, remote))

    def h2_window(self, sid: int) -> None:
        self.calls.append(("window", sid))

    def h2_ping(self) -> None:
        self.calls.append(("ping",))

    def h2_settings(self) -> None:
        self.calls.append(("settings",))

    def h2_goaway(self, code: int, last: int) -> None:
        self.calls.append(("goaway", code, last))


def frame(kind: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", sid) + payload


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split what the server sent into (type, flags, stream id, payload)."""
    out = []
    pos = 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        out.append((kind, flags, sid, data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    assert pos == len(data)
    return out


def server(max_streams: int = 100, header_list: int = 8192, decode_list: int = 16384,
           stream_window: int = 65535, conn_window: int = 65535
           ) -> tuple[ServerConnection, Recorder]:
    rec = Recorder()
    conn = ServerConnection(rec, max_streams, header_list, decode_list, stream_window,
                            conn_window)
    return conn, rec


def client(initial: dict[int, int] | None = None) -> h2.connection.H2Connection:
    c = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    if initial:
        c.local_settings = h2.settings.Settings(client=True, initial_values=initial)
    c.initiate_connection()
    return c


def started(**kw: int) -> tuple[ServerConnection, Recorder, h2.connection.H2Connection]:
    conn, rec = server(**kw)
    c = client()
    conn.receive(c.data_to_send())
    c.receive_data(conn.data_to_send())
    rec.calls.clear()
    return conn, rec, c


def goaway_code(out: bytes) -> int:
    found = [p for kind, _, _, p in frames(out) if kind == 7]
    assert found, "no GOAWAY"
    return int.from_bytes(found[-1][4:8], "big")


def refused(conn: ServerConnection, data: bytes, code: int, why: str | None = None) -> None:
    with pytest.raises(H2ProtocolError, match=why) as info:
        conn.receive(data)
    assert info.value.code == code, error_name(info.value.code)
    assert goaway_code(conn.data_to_send()) == code


def test_start_settings_and_windows() -> None:
    conn, _ = server(max_streams=7, header_list=5000, stream_window=256 * 1024,
                     conn_window=1 << 20)
    c = client()
    events = c.receive_data(conn.data_to_send())
    changed = next(e for e in events if isinstance(e, h2.events.RemoteSettingsChanged))
    assert c.remote_settings.max_concurrent_streams == 7
    assert c.remote_settings.max_header_list_size == 5000
    assert c.remote_settings.initial_window_size == 256 * 1024
    assert changed is not None
    assert c.outbound_flow_control_window == 1 << 20
    # The client's SETTINGS get their ACK, and the handler hears of them.
    rec = Recorder()
    conn2 = ServerConnection(rec, 7, 5000, 9000)
    conn2.data_to_send()
    conn2.receive(c.data_to_send())
    assert rec.calls == [("settings",)]
    assert [(k, f) for k, f, _, _ in frames(conn2.data_to_send())] == [(4, 1)]


def test_request_and_response_round_trip() -> None:
    conn, rec, c = started()
    c.send_headers(1, REQ, end_stream=False)
    c.send_data(1, b"hello", end_stream=True)
    conn.receive(c.data_to_send())
    assert rec.calls == [("request", 1, REQ, False), ("data", 1, b"hello", 5), ("end", 1)]
    assert conn.highest_inbound == 1
    conn.send_headers(1, [(b":status", b"200"), (b"server", b"fastproxy")])
    conn.send_data(1, b"world")
    conn.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)  # trailers
    events = c.receive_data(conn.data_to_send())
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert events[0].headers == [(b":status", b"200"), (b"server", b"fastproxy")]
    assert events[1].data == b"world"
    assert conn.open_streams == 0
    with pytest.raises(H2StreamClosed):
        conn.send_data(1, b"late")


def test_a_byte_at_a_time() -> None:
    conn, rec = server(decode_list=1 << 17)
    c = client()
    c.send_headers(1, REQ, end_stream=True)
    c.send_headers(3, [*REQ, (b"x-long", b"v" * 40000)], end_stream=True)  # CONTINUATIONs
    data = c.data_to_send()
    for i in range(len(data)):
        conn.receive(data[i:i + 1])
    assert [call[:2] for call in rec.calls] == [("settings",), ("request", 1), ("end", 1),
                                                ("request", 3), ("end", 3)]
    assert rec.calls[3][2][-1] == (b"x-long", b"v" * 40000)


def test_large_response_head_goes_in_continuations() -> None:
    conn, _rec, c = started()
    c.send_headers(1, REQ, end_stream=True)
    conn.receive(c.data_to_send())
    head = [(b":status", b"200")] + [(b"x-%d" % i, bytes(range(33, 127)) * 5) for i in range(80)]
    conn.send_headers(1, head, end_stream=True)
    out = conn.data_to_send()
    assert [k for k, _, _, _ in frames(out)].count(9) >= 2
    assert all(len(p) <= 16384 for _, _, _, p in frames(out))
    events = c.receive_data(out)
    assert events[0].headers == head


def test_preface_and_first_frame() -> None:
    conn, _ = server()
    conn.data_to_send()
    conn.receive(PREFACE[:10])  # a prefix: wait
    refused(conn, b"X", PROTOCOL_ERROR, "preface")
    conn, _ = server()
    refused(conn, b"GET / HTTP/1.1\r\n", PROTOCOL_ERROR, "preface")
    conn, _ = server()
    refused(conn, PREFACE + frame(6, 0, 0, b"12345678"), PROTOCOL_ERROR, "first frame")
    conn, _ = server()
    refused(conn, PREFACE + frame(4, 1, 0), PROTOCOL_ERROR, "first frame")


def test_frame_size_is_checked_from_the_header_alone() -> None:
    conn = started()[0]
    # Only the 9-byte header of a 16385-byte frame: refused before its payload.
    refused(conn, b"\x00\x40\x01\x00\x00\x00\x00\x00\x01", FRAME_SIZE_ERROR, "frame size")
    conn = started()[0]
    refused(conn, frame(6, 0, 0, b"1234567"), FRAME_SIZE_ERROR, "PING")
    conn = started()[0]
    refused(conn, frame(8, 0, 0, b"\x00\x00\x01"), FRAME_SIZE_ERROR)
    conn = started()[0]
    refused(conn, frame(4, 0, 0, b"\x00\x03\x00\x00"), FRAME_SIZE_ERROR)
    conn = started()[0]
    refused(conn, frame(4, 1, 0, b"\x00" * 6), FRAME_SIZE_ERROR)


def block(headers: list[tuple[bytes, bytes]]) -> bytes:
    return hpack.Encoder().encode(headers)


def test_header_block_sequencing_and_floods() -> None:
    conn, rec, _ = started()
    start = frame(1, 1, 1, block(REQ))  # END_STREAM, no END_HEADERS
    refused(conn, start + frame(6, 0, 0, b"12345678"), PROTOCOL_ERROR, "inside a header")
    conn, rec, _ = started()
    refused(conn, start + frame(9, 4, 3, b""), PROTOCOL_ERROR, "CONTINUATION")
    conn, rec, _ = started()
    refused(conn, frame(9, 4, 1, b""), PROTOCOL_ERROR, "CONTINUATION")
    conn, rec, _ = started(decode_list=20000)
    filler = frame(9, 0, 1, b"\x40\x01a\x01b" * 1000)
    refused(conn, start + filler * 5, ENHANCE_YOUR_CALM, "header list size")
    assert not [c for c in rec.calls if c[0] == "request"]
    conn, rec, _ = started()
    refused(conn, start + frame(9, 0, 1) * 600, ENHANCE_YOUR_CALM, "CONTINUATION")
    # A whole block in pieces is one request.
    conn, rec, _ = started()
    whole = block(REQ)
    conn.receive(frame(1, 1, 1, whole[:3]) + frame(9, 0, 1, whole[3:5])
                 + frame(9, 4, 1, whole[5:]))
    assert rec.calls == [("request", 1, REQ, True), ("end", 1)]


def test_stream_ids_and_states() -> None:
    conn, rec, _ = started()
    refused(conn, frame(1, 5, 2, block(REQ)), PROTOCOL_ERROR, "even")
    conn, rec, _ = started()
    refused(conn, frame(0, 0, 1, b"x"), PROTOCOL_ERROR, "idle")
    conn, rec, _ = started()
    refused(conn, frame(3, 0, 5, b"\x00\x00\x00\x08"), PROTOCOL_ERROR, "idle")
    conn, rec, _ = started()
    refused(conn, frame(8, 0, 9, b"\x00\x00\x00\x01"), PROTOCOL_ERROR, "idle")
    conn, rec, _ = started()
    refused(conn, frame(5, 4, 1, b"\x00\x00\x00\x02" + block(REQ)), PROTOCOL_ERROR,
            "PUSH_PROMISE")
    # DATA after the client's END_STREAM: a stream error, the connection goes on.
    conn, rec, _ = started()
    enc = hpack.Encoder()
    conn.receive(frame(1, 5, 3, enc.encode(REQ)) + frame(0, 0, 3, b"late"))
    assert rec.calls[-1] == ("reset", 3, STREAM_CLOSED, False)
    assert [(k, int.from_bytes(p, "big")) for k, _, s, p in frames(conn.data_to_send())
            if k == 3] == [(3, STREAM_CLOSED)]
    # A lower id than one already opened is a closed stream, not a new one.
    conn.receive(frame(1, 5, 1, enc.encode(REQ)))
    assert not [c for c in rec.calls if c[:2] == ("request", 1)]
    # Frames for a stream we reset are dropped quietly (the client may not know yet).
    conn.receive(frame(1, 4, 5, enc.encode(REQ)))
    conn.reset_stream(5, 8)
    conn.data_to_send()
    rec.calls.clear()
    conn.receive(frame(0, 0, 5, b"in flight") + frame(1, 5, 5, enc.encode(REQ)))
    assert rec.calls == [] and [k for k, _, _, _ in frames(conn.data_to_send())] == []
    # The client's reset.
    conn.receive(frame(1, 4, 7, enc.encode(REQ)) + frame(3, 0, 7, b"\x00\x00\x00\x08"))
    assert rec.calls[-1] == ("reset", 7, 8, True)
    # HEADERS that depend on their own stream.
    conn.receive(frame(1, 0x24, 9, b"\x00\x00\x00\x09\x10" + enc.encode(REQ)))
    assert rec.calls[-1] == ("reset", 9, PROTOCOL_ERROR, False)
    # Trailers without END_STREAM.
    conn.receive(frame(1, 4, 11, enc.encode(REQ)) + frame(1, 4, 11, enc.encode([(b"a", b"b")])))
    assert rec.calls[-1] == ("reset", 11, PROTOCOL_ERROR, False)


def test_padding() -> None:
    conn, rec, _ = started()
    enc = hpack.Encoder()
    b = enc.encode(REQ)
    conn.receive(frame(1, 0x0C, 1, b"\x03" + b + b"\x00" * 3)
                 + frame(0, 0x09, 1, b"\x02ab\x00\x00"))
    assert rec.calls == [("request", 1, REQ, False), ("data", 1, b"ab", 5), ("end", 1)]
    conn, rec, _ = started()
    refused(conn, frame(1, 0x0C, 1, b"\xff" + block(REQ)), PROTOCOL_ERROR, "padding")
    conn, rec, _ = started()
    conn.receive(frame(1, 4, 1, block(REQ)))
    refused(conn, frame(0, 0x08, 1, b"\x05abc"), PROTOCOL_ERROR, "padding")


def test_hpack_errors_and_bomb() -> None:
    conn, rec, _ = started()
    refused(conn, frame(1, 5, 1, b"\xfe"), COMPRESSION_ERROR, "HPACK")
    conn, rec, _ = started(decode_list=10000)
    enc = hpack.Encoder()
    conn.receive(frame(1, 5, 1, enc.encode([*REQ, (b"x-bomb", b"z" * 3000)])))
    refused(conn, frame(1, 5, 3, enc.encode(REQ + [(b"x-bomb", b"z" * 3000)] * 100)),
            ENHANCE_YOUR_CALM, "header list")
    assert [c[1] for c in rec.calls if c[0] == "request"] == [1]


def test_receive_flow_control() -> None:
    conn, rec, _c = started(stream_window=1000, conn_window=65535)
    conn.receive(frame(1, 4, 1, block(REQ)))
    conn.receive(frame(0, 0, 1, b"x" * 600))
    conn.data_to_send()
    conn.acknowledge(1, 400)  # under half the stream's window: nothing yet
    assert conn.data_to_send() == b""
    conn.acknowledge(1, 200)
    updates = [(s, int.from_bytes(p, "big")) for k, _, s, p in frames(conn.data_to_send())
               if k == 8]
    assert updates == [(1, 600)]
    conn.receive(frame(0, 0, 1, b"x" * 1000))  # the window is 1000 again
    conn.receive(frame(0, 0, 1, b"x"))  # one byte over it: a stream error
    assert rec.calls[-1] == ("reset", 1, FLOW_CONTROL_ERROR, False)
    # The connection's window: 65535 in all, whatever the streams.
    conn, rec, _c = started(stream_window=1 << 20)
    conn.receive(frame(1, 4, 1, block(REQ)))
    for _ in range(3):
        conn.receive(frame(0, 0, 1, b"x" * 16384))
    refused(conn, frame(0, 0, 1, b"x" * 16384), FLOW_CONTROL_ERROR, "connection's window")


def test_send_flow_control() -> None:
    conn, rec = server()
    conn.data_to_send()
    c = client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    c.send_headers(1, REQ, end_stream=True)
    conn.receive(c.data_to_send())
    assert conn.send_window(1) == 10
    conn.send_headers(1, [(b":status", b"200")])
    with pytest.raises(ValueError):
        conn.send_data(1, b"x" * 11)
    conn.send_data(1, b"x" * 10)
    assert conn.send_window(1) == 0
    conn.receive(frame(8, 0, 1, struct.pack(">I", 100)))
    assert rec.calls[-1] == ("window", 1) and conn.send_window(1) == 100
    # SETTINGS_INITIAL_WINDOW_SIZE changes every open stream's window by the difference.
    conn.receive(frame(4, 0, 0, struct.pack(">HI", 4, 50)))
    assert conn.send_window(1) == 140
    # Overflows: a stream's is a stream error, the connection's a connection error.
    conn.receive(frame(8, 0, 1, struct.pack(">I", 0x7FFFFFFF)))
    assert rec.calls[-1] == ("reset", 1, FLOW_CONTROL_ERROR, False)
    assert conn.send_window(1) == 0
    refused(conn, frame(8, 0, 0, struct.pack(">I", 0x7FFFFFFF)), FLOW_CONTROL_ERROR)
    conn, rec, c = started()
    refused(conn, frame(8, 0, 0, b"\x00\x00\x00\x00"), PROTOCOL_ERROR)
    conn, rec, c = started()
    refused(conn, frame(4, 0, 0, struct.pack(">HI", 4, 0x80000000)), FLOW_CONTROL_ERROR)
    conn, rec, c = started()
    refused(conn, frame(4, 0, 0, struct.pack(">HI", 5, 100)), PROTOCOL_ERROR, "FRAME_SIZE")
    conn, rec, c = started()
    refused(conn, frame(4, 0, 0, struct.pack(">HI", 2, 2)), PROTOCOL_ERROR, "PUSH")


def test_control_frames_and_goaway() -> None:
    conn, rec, _ = started()
    conn.receive(frame(6, 0, 0, b"abcdefgh") + frame(6, 1, 0, b"abcdefgh"))
    assert rec.calls == [("ping",)]
    assert [(k, f, p) for k, f, _, p in frames(conn.data_to_send())] == [(6, 1, b"abcdefgh")]
    refused(conn, frame(6, 0, 1, b"abcdefgh"), PROTOCOL_ERROR, "PING")
    conn, rec, _c = started()
    conn.receive(frame(7, 0, 0, struct.pack(">II", 0, NO_ERROR) + b"debug"))
    assert rec.calls == [("goaway", NO_ERROR, 0)]
    conn.receive(frame(0xEE, 0, 0, b"unknown types are ignored"))
    conn.goaway(NO_ERROR, 0)
    assert goaway_code(conn.data_to_send()) == NO_ERROR
    # The client's HEADER_TABLE_SIZE bounds our encoder: a size update leads our next block.
    conn, rec, _c = started()
    conn.receive(frame(4, 0, 0, struct.pack(">HI", 1, 0)) + frame(1, 5, 1, block(REQ)))
    conn.data_to_send()
    conn.send_headers(1, [(b":status", b"200"), (b"x-a", b"b")], end_stream=True)
    head = next(p for k, _, _, p in frames(conn.data_to_send()) if k == 1)
    assert head[:1] == b"\x20"
    stop = conn
    stop.stop()
    stop.receive(b"anything")  # nothing more is read


MESSAGES = st.lists(st.tuples(st.sampled_from([b"/", b"/a", b"/long/" * 20]),
                              st.binary(max_size=3000), st.booleans()), min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(messages=MESSAGES, cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=40))
def test_pieces_give_the_same_calls(messages: list[tuple[bytes, bytes, bool]],
                                    cuts: list[int]) -> None:
    c = client()
    for i, (path, body, trailers) in enumerate(messages):
        sid = 2 * i + 1
        c.send_headers(sid, [(b":method", b"POST"), (b":path", path), (b":scheme", b"https"),
                             (b":authority", b"a.example")], end_stream=False)
        if body:
            c.send_data(sid, body, end_stream=not trailers, pad_length=i % 3 or None)
        if trailers or not body:
            c.send_headers(sid, [(b"x-t", b"1")], end_stream=True)
    data = c.data_to_send()
    whole, whole_rec = server(stream_window=1 << 20, conn_window=1 << 20)
    whole.receive(data)
    pieces, piece_rec = server(stream_window=1 << 20, conn_window=1 << 20)
    pos = 0
    for cut in cuts:
        pieces.receive(data[pos:pos + cut])
        pos += cut
    pieces.receive(data[pos:])
    assert piece_rec.calls == whole_rec.calls
    assert [call[0] for call in whole_rec.calls].count("end") == len(messages)


FRAME = st.tuples(st.integers(0, 10), st.integers(0, 255), st.sampled_from([0, 1, 2, 3, 5]),
                  st.binary(max_size=40))


@settings(max_examples=1500, deadline=None)
@given(parts=st.lists(FRAME, max_size=8), tail=st.binary(max_size=20))
def test_arbitrary_frames_only_give_protocol_errors(
        parts: list[tuple[int, int, int, bytes]], tail: bytes) -> None:
    conn, _rec, _ = started()
    data = b"".join(frame(*p) for p in parts) + tail
    try:
        conn.receive(data)
    except H2ProtocolError as e:
        assert goaway_code(conn.data_to_send()) == e.code
        return
    frames(conn.data_to_send())  # what we answered is well-formed
