"""The compiled HTTP/2 connection layer, client side (fastproxy._h2.ClientConnection),
with the `h2` library as the server: the start (preface, SETTINGS without push),
streams we open, responses with informational heads, DATA and trailers, flow
control, and the errors a server can make (push, DATA before the response, a
response without :status, HEADERS on a stream we did not open), GOAWAY refusing
the streams above its last stream id, and the server's stream limit
(h2upstream.py runs on it)."""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest

from fastproxy._h2 import (
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    ClientConnection,
    H2ProtocolError,
    H2StreamClosed,
    error_name,
)
from test_h2_frames import Recorder as ServerRecorder
from test_h2_frames import frame

REQ = [(b":method", b"POST"), (b":path", b"/svc/Call"), (b":scheme", b"http"),
       (b":authority", b"up.example"), (b"te", b"trailers")]


class Recorder(ServerRecorder):
    """The handler of a client side: a server's calls but h2_response for
    h2_request, and h2_trailers."""

    def h2_response(self, sid: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.calls.append(("response", sid, headers, ended))

    def h2_trailers(self, sid: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("trailers", sid, headers))


def started() -> tuple[ClientConnection, Recorder, h2.connection.H2Connection]:
    rec = Recorder()
    conn = ClientConnection(rec, 65536, 1 << 20, 65535, 1 << 20)
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    server.initiate_connection()
    events = server.receive_data(conn.data_to_send())
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in events)
    conn.receive(server.data_to_send())
    server.receive_data(conn.data_to_send())  # our SETTINGS ACK
    rec.calls.clear()
    return conn, rec, server


def test_start_and_settings() -> None:
    rec = Recorder()
    conn = ClientConnection(rec, 65536, 1 << 20, 256 * 1024, 1 << 24)
    out = conn.data_to_send()
    assert out.startswith(PREFACE)
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    server.initiate_connection()
    server.receive_data(out)
    assert server.remote_settings.enable_push == 0
    assert server.remote_settings.initial_window_size == 256 * 1024
    assert server.outbound_flow_control_window == 1 << 24
    assert conn.peer_max_streams is None
    conn.receive(server.data_to_send())
    assert rec.calls == [("settings",)]
    assert conn.peer_max_streams == server.local_settings.max_concurrent_streams


def test_call_with_informational_data_and_trailers() -> None:
    conn, rec, server = started()
    sid = conn.open_stream(REQ)
    conn.send_data(sid, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    assert conn.next_stream_id == 3
    events = server.receive_data(conn.data_to_send())
    got = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert got.headers == REQ
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [
        b"\x00\x00\x00\x00\x02hi"]
    server.send_headers(sid, [(b":status", b"100")])
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(sid, b"\x00\x00\x00\x00\x02ok")
    server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    conn.receive(server.data_to_send())
    assert rec.calls == [
        ("response", 1, [(b":status", b"200"), (b"content-type", b"application/grpc")], False),
        ("data", 1, b"\x00\x00\x00\x00\x02ok", 7),
        ("trailers", 1, [(b"grpc-status", b"0")]),
        ("end", 1)]
    assert conn.open_streams == 0
    with pytest.raises(H2StreamClosed):
        conn.send_data(sid, b"late")
    # The next stream; a body-less answer in one HEADERS frame.
    sid = conn.open_stream(REQ[:4], end_stream=True)
    assert sid == 3
    server.receive_data(conn.data_to_send())
    server.send_headers(sid, [(b":status", b"204")], end_stream=True)
    conn.receive(server.data_to_send())
    assert rec.calls[-2:] == [("response", 3, [(b":status", b"204")], True), ("end", 3)]


def test_response_flow_control() -> None:
    conn, _rec, server = started()
    sid = conn.open_stream(REQ[:4], end_stream=True)
    server.receive_data(conn.data_to_send())
    server.send_headers(sid, [(b":status", b"200")])
    for _ in range(3):
        server.send_data(sid, b"x" * 12000)
    conn.receive(server.data_to_send())
    assert server.local_flow_control_window(sid) == 65535 - 36000
    conn.acknowledge(sid, 12000)  # under half the stream's window: nothing yet
    assert conn.data_to_send() == b""
    conn.acknowledge(sid, 24000)
    events = server.receive_data(conn.data_to_send())
    assert [e.delta for e in events if isinstance(e, h2.events.WindowUpdated)
            and e.stream_id == sid] == [36000]
    assert server.local_flow_control_window(sid) == 65535


@pytest.mark.parametrize(("junk", "why"), [
    (frame(5, 4, 1, b"\x00\x00\x00\x02" + hpack.Encoder().encode([(b":status", b"200")])),
     "PUSH_PROMISE"),
    (frame(1, 5, 7, hpack.Encoder().encode([(b":status", b"200")])), "did not open"),
    (frame(4, 0, 0, struct.pack(">HI", 2, 1)), "ENABLE_PUSH"),
    (frame(0, 0, 9, b"x"), "idle"),
])
def test_server_errors(junk: bytes, why: str) -> None:
    conn, _, _ = started()
    conn.open_stream(REQ[:4], end_stream=True)
    conn.data_to_send()
    with pytest.raises(H2ProtocolError, match=why) as info:
        conn.receive(junk)
    assert info.value.code == PROTOCOL_ERROR


def test_stream_errors() -> None:
    conn, rec, _ = started()
    enc = hpack.Encoder()
    a = conn.open_stream(REQ[:4], end_stream=True)
    b = conn.open_stream(REQ[:4], end_stream=True)
    c = conn.open_stream(REQ[:4], end_stream=True)
    conn.data_to_send()
    conn.receive(frame(0, 0, a, b"body first"))  # DATA before the response
    conn.receive(frame(1, 5, b, enc.encode([(b"x-a", b"1")])))  # no :status
    conn.receive(frame(1, 5, c, enc.encode([(b":status", b"103")])))  # 1xx ending the stream
    assert rec.calls == [("reset", a, PROTOCOL_ERROR, False), ("reset", b, PROTOCOL_ERROR, False),
                         ("reset", c, PROTOCOL_ERROR, False)]
    conn.receive(frame(7, 0, 0, struct.pack(">II", 1, 0)))
    assert rec.calls[-1] == ("goaway", 0, 1)


def test_goaway_refuses_the_streams_above_its_last_id() -> None:
    """GOAWAY(last 3) with streams 1, 3, 5, 7 open: the handler hears goaway first,
    then 5 and 7 as refused (REFUSED_STREAM, remote); 1 and 3 finish; no new stream
    may be opened; late frames on a refused stream are dropped, not errors."""
    conn, rec, server = started()
    sids = [conn.open_stream(REQ[:4], end_stream=True) for _ in range(4)]
    assert sids == [1, 3, 5, 7]
    server.receive_data(conn.data_to_send())
    assert not conn.going_away and conn.stream_room > 0
    conn.receive(frame(7, 0, 0, struct.pack(">II", 3, NO_ERROR)))
    assert rec.calls == [("goaway", NO_ERROR, 3), ("reset", 5, REFUSED_STREAM, True),
                         ("reset", 7, REFUSED_STREAM, True)]
    assert conn.going_away and conn.goaway_last == 3
    assert conn.stream_room == 0
    with pytest.raises(H2StreamClosed, match="GOAWAY"):
        conn.open_stream(REQ[:4], end_stream=True)
    rec.calls.clear()
    for sid in (1, 3):
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
    conn.receive(server.data_to_send())
    assert rec.calls == [("response", 1, [(b":status", b"200")], True), ("end", 1),
                         ("response", 3, [(b":status", b"200")], True), ("end", 3)]
    assert conn.open_streams == 0
    rec.calls.clear()
    enc = hpack.Encoder()
    conn.receive(frame(1, 5, 5, enc.encode([(b":status", b"200")])))  # late, on a refused one
    assert rec.calls == []
    assert conn.data_to_send() == b""  # nothing to say about it
    # A second GOAWAY can only lower the last id.
    conn.receive(frame(7, 0, 0, struct.pack(">II", 1, NO_ERROR)))
    assert conn.goaway_last == 1


def test_stream_limit_before_and_after_the_servers_settings() -> None:
    """Before the server's SETTINGS: at most 100 streams (the RFC's recommended
    minimum); after them, its SETTINGS_MAX_CONCURRENT_STREAMS, less the streams
    open; a stream that closes makes room again."""
    rec = Recorder()
    conn = ClientConnection(rec, 65536, 1 << 20)
    assert not conn.settings_received
    assert conn.stream_room == 100
    server = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=False, header_encoding=None))
    server.local_settings = h2.settings.Settings(
        client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    server.initiate_connection()
    server.receive_data(conn.data_to_send())
    conn.receive(server.data_to_send())
    assert conn.settings_received and conn.peer_max_streams == 2
    assert conn.stream_room == 2
    a = conn.open_stream(REQ[:4], end_stream=True)
    conn.open_stream(REQ[:4], end_stream=True)
    assert conn.stream_room == 0
    with pytest.raises(H2StreamClosed, match="MAX_CONCURRENT_STREAMS"):
        conn.open_stream(REQ[:4], end_stream=True)
    server.receive_data(conn.data_to_send())
    server.send_headers(a, [(b":status", b"204")], end_stream=True)
    conn.receive(server.data_to_send())
    assert conn.stream_room == 1
    assert conn.open_stream(REQ[:4], end_stream=True) == 5
    # A server without a limit in its SETTINGS: no limit.
    conn, _, _ = started()
    assert conn.peer_max_streams is None or conn.stream_room == conn.peer_max_streams


def test_reset_refused_stream_reaches_the_handler() -> None:
    conn, rec, server = started()
    sid = conn.open_stream(REQ[:4], end_stream=True)
    server.receive_data(conn.data_to_send())
    server.reset_stream(sid, REFUSED_STREAM)
    conn.receive(server.data_to_send())
    assert rec.calls == [("reset", sid, REFUSED_STREAM, True)]
    assert not conn.going_away and conn.open_streams == 0


def test_error_codes_past_31_bits() -> None:
    """Error codes are 32-bit (RFC 9113 7): unknown ones, even past 2**31, reach
    the handler and have a name."""
    conn, rec, _ = started()
    a = conn.open_stream(REQ[:4], end_stream=True)
    conn.open_stream(REQ[:4], end_stream=True)
    conn.data_to_send()
    conn.receive(frame(3, 0, a, struct.pack(">I", 0xa7a7a7a7)))
    conn.receive(frame(7, 0, 0, struct.pack(">II", 1, 0xffffffff)))
    assert rec.calls == [("reset", 1, 0xa7a7a7a7, True), ("goaway", 0xffffffff, 1),
                         ("reset", 3, REFUSED_STREAM, True)]
    assert error_name(0xa7a7a7a7) == "0xa7a7a7a7"
