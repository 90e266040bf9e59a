"""gRPC end to end with grpcio on both sides: a grpcio client speaks HTTP/2 to
the proxy (h2c with prior knowledge on a plain listener, ALPN h2 on a TLS
listener), the proxy speaks HTTP/2 to a grpcio server (h2c://). Unary and
streaming calls, trailing metadata, the server's error status, and the
proxy's own errors as gRPC statuses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import trustme

from servers import ProxyProcess, free_port
from test_grpc_e2e import GrpcServer


@pytest.fixture
def grpc_server() -> Iterator[GrpcServer]:
    server = GrpcServer()
    yield server
    server.stop()


@pytest.fixture
def setup(tmp_path: Path, grpc_server: GrpcServer) -> Iterator[tuple[ProxyProcess, int, bytes]]:
    """A proxy with an h2c listener and a TLS listener before the grpcio server;
    calls to /down.* go to a server that is not there."""
    ca = trustme.CA()
    cert = ca.issue_cert("grpc.example")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "site.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "site.key"))
    port, tls_port, dead = free_port(), free_port(), free_port()
    text = (f'[server]\nworkers = 1\n[log]\naccess = "{tmp_path / "access.log"}"\n'
            f'[[listeners]]\naddress = "127.0.0.1:{port}"\nh2c = true\n'
            f'[[listeners]]\naddress = "127.0.0.1:{tls_port}"\n'
            f'[listeners.tls]\ncertificates = [{{ cert = "{tmp_path}/site.pem", '
            f'key = "{tmp_path}/site.key" }}]\n'
            f'[upstreams.grpc]\nservers = ["h2c://127.0.0.1:{grpc_server.port}"]\n'
            f'[upstreams.down]\nservers = ["h2c://127.0.0.1:{dead}"]\n'
            '[[routes]]\nmatch = { path_prefix = "/down." }\nupstream = "down"\n'
            '[[routes]]\nmatch = { path_prefix = "/test.Echo/" }\nupstream = "grpc"\n')
    proxy = ProxyProcess(text, tmp_path, port).start()
    try:
        yield proxy, tls_port, ca.cert_pem.bytes()
    finally:
        proxy.stop()


def channels(setup: tuple[ProxyProcess, int, bytes]) -> list[grpc.Channel]:
    proxy, tls_port, ca_pem = setup
    return [
        grpc.insecure_channel(f"127.0.0.1:{proxy.port}"),  # h2c, prior knowledge
        grpc.secure_channel(f"127.0.0.1:{tls_port}",
                            grpc.ssl_channel_credentials(root_certificates=ca_pem),
                            options=[("grpc.ssl_target_name_override", "grpc.example")]),
    ]


def test_calls_through_http2_clients(setup: tuple[ProxyProcess, int, bytes],
                                     grpc_server: GrpcServer) -> None:
    grpc_server.service.go.set()  # Stream does not wait after its first message
    for channel in channels(setup):
        with channel:
            unary = channel.unary_unary("/test.Echo/Unary")
            response, call = unary.with_call(b"hello", timeout=10)
            assert response == b"echo:hello"
            assert ("x-trailer", "t1") in tuple(call.trailing_metadata())
            assert call.code() == grpc.StatusCode.OK

            stream = channel.unary_stream("/test.Echo/Stream")
            assert list(stream(b"3", timeout=10)) == [b"first", b"msg0", b"msg1", b"msg2"]

            collect = channel.stream_unary("/test.Echo/Collect")
            assert collect(iter([b"a", b"b", b"c"]), timeout=10) == b"a|b|c"

            chat = channel.stream_stream("/test.Echo/Chat")
            assert list(chat(iter([b"x" * 100_000, b"y"]), timeout=10)) == \
                [b"re:" + b"x" * 100_000, b"re:y"]

            fail = channel.unary_unary("/test.Echo/Fail")
            with pytest.raises(grpc.RpcError) as info:
                fail(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
            assert info.value.details() == "no such thing"
    proxy = setup[0]
    deadline = time.monotonic() + 10  # the access log is written once per tick
    while '"POST /test.Echo/Unary HTTP/2.0" 200 ' not in proxy.access_log_text():
        assert time.monotonic() < deadline, proxy.access_log_text()
        time.sleep(0.05)


def test_proxy_errors_reach_http2_clients_as_grpc_statuses(
        setup: tuple[ProxyProcess, int, bytes]) -> None:
    for channel in channels(setup):
        with channel:
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/down.Service/Call")(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.RpcError) as info:
                channel.unary_unary("/nowhere.Service/Call")(b"", timeout=10)
            assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
