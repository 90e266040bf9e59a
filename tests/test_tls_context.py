"""The TLS policy (fastproxy.tls), checked with real handshakes on 127.0.0.1.

Servers run `server_context` on uvloop in a thread (as the workers do: the SNI
callback then sees an SSLObject); clients are the standard `ssl` module. Every
test that serves runs once per TLS engine: "openssl" (fastproxy._tls, OpenSSL
driven from C) and "python" (uvloop's SSL transport over the ssl module).
Certificates come from trustme, or from `cryptography` for the odd ones
(CN-only, no names, weird subjects).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import random
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import trustme
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fastproxy import tls as tls_module
from fastproxy._tls import ServerContext
from fastproxy.config import CertificateFiles, ListenerTls, UpstreamTls
from fastproxy.tls import (
    DEFAULT_CIPHERS,
    certificate_names,
    certificate_warnings,
    check_certificates,
    client_context,
    describe_peer_cert,
    python_context,
)

ENGINES = ("openssl", "python")
_engine = {"name": "openssl"}  # set by the `serve` fixture, read by server_context below


def server_context(tls: ListenerTls) -> Any:
    """fastproxy.tls.server_context with the engine of the test being run."""
    return tls_module.server_context(dataclasses.replace(tls, engine=_engine["name"]))

TIMEOUT = 5.0
# asyncio's and uvloop's SSL transports close the connection on a failed handshake
# without sending OpenSSL's alert (CPython gh-98078): the client sees an EOF, during
# the handshake (SSLEOFError) or, with TLS 1.3, on its first read (connect() raises
# ConnectionError). The exact alerts are checked with blocking sockets.
REFUSED = (ssl.SSLError, ConnectionError)
RSA = trustme.KeyType.RSA
ECDSA = trustme.KeyType.ECDSA


# -- certificates


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA()


def write_leaf(leaf: trustme.LeafCert, path: Path, stem: str, **names: Any) -> CertificateFiles:
    cert, key = path / f"{stem}.pem", path / f"{stem}.key"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return CertificateFiles(str(cert), str(key), **names)


def der_of(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def write_ca(ca: trustme.CA, path: Path, stem: str = "ca") -> str:
    file = path / f"{stem}.pem"
    ca.cert_pem.write_to_path(str(file))
    return str(file)


def custom_cert(
    ca: trustme.CA,
    path: Path,
    stem: str,
    subject: list[x509.NameAttribute],
    sans: list[x509.GeneralName] | None = None,
    not_after: datetime.datetime | None = None,
) -> CertificateFiles:
    """A leaf signed by ``ca`` with exactly this subject and these SANs (or no SAN)."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(not_after or now + datetime.timedelta(days=30))
    )
    if sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    cert_file, key_file = path / f"{stem}.pem", path / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return CertificateFiles(str(cert_file), str(key_file))


def cn(value: str) -> list[x509.NameAttribute]:
    return [x509.NameAttribute(NameOID.COMMON_NAME, value)]


# -- a TLS server (uvloop, in a thread) and a client


class _Describe(asyncio.Protocol):
    """After the handshake: one JSON line describing the connection, then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tls = transport.get_extra_info("ssl_object")
        cipher = tls.cipher()
        facts = {
            "peer": describe_peer_cert(tls),
            "cipher": cipher[0],
            "version": tls.version(),
            "alpn": tls.selected_alpn_protocol(),
        }
        # uvloop's SSL transport is not registered as an asyncio.WriteTransport.
        cast(asyncio.WriteTransport, transport).write(json.dumps(facts).encode() + b"\n")
        transport.close()


class TlsServer:
    def __init__(self, context: ssl.SSLContext | ServerContext) -> None:
        self.context = context
        self.loop = uvloop.new_event_loop()
        self.errors: list[dict[str, Any]] = []  # handshake failures, for debugging
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> TlsServer:
        self._thread.start()
        assert self._ready.wait(TIMEOUT), "the TLS server did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(lambda _loop, context: self.errors.append(context))
        if isinstance(self.context, ServerContext):
            made = self.loop.create_server(self.context.server(_Describe), "127.0.0.1", 0)
        else:
            made = self.loop.create_server(
                _Describe, "127.0.0.1", 0, ssl=self.context, ssl_handshake_timeout=TIMEOUT
            )
        server = self.loop.run_until_complete(made)
        self.port = cast(asyncio.Server, server).sockets[0].getsockname()[1]
        self._ready.set()
        try:
            self.loop.run_forever()
        finally:
            server.close()
            self.loop.run_until_complete(server.wait_closed())
            self.loop.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)


@pytest.fixture(params=ENGINES)
def serve(request: pytest.FixtureRequest) -> Iterator[Callable[[Any], TlsServer]]:
    """Starts servers; the test runs once per engine (server_context follows it)."""
    started: list[TlsServer] = []
    _engine["name"] = request.param

    def start(context: ssl.SSLContext | ServerContext) -> TlsServer:
        server = TlsServer(context).start()
        started.append(server)
        return server

    yield start
    _engine["name"] = "openssl"
    for server in started:
        server.stop()


@dataclass
class Connection:
    facts: dict[str, Any]  # what the server saw
    peer_der: bytes  # the certificate the client got
    version: str
    alpn: str | None
    session: ssl.SSLSession | None
    reused: bool
    cipher: str


def connect(
    port: int,
    context: ssl.SSLContext,
    server_hostname: str | None,
    session: ssl.SSLSession | None = None,
) -> Connection:
    """Handshake, read the server's one line, close. Any failure raises."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=server_hostname, session=session) as tls,
    ):
        line = b""
        while not line.endswith(b"\n"):
            chunk = tls.recv(4096)
            if not chunk:
                raise ConnectionError(f"closed without a reply (got {line!r})")
            line += chunk
        der = tls.getpeercert(binary_form=True)
        version, cipher = tls.version(), tls.cipher()
        assert der is not None and version is not None and cipher is not None
        return Connection(
            json.loads(line), der, version, tls.selected_alpn_protocol(), tls.session,
            bool(tls.session_reused), cipher[0],
        )


def client(
    ca: trustme.CA | None,
    *,
    check_hostname: bool = True,
    max_version: ssl.TLSVersion | None = None,
    min_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca is not None:
        ca.configure_trust(context)
    context.check_hostname = check_hostname
    if min_version is not None:
        context.minimum_version = min_version
    if max_version is not None:
        context.maximum_version = max_version
    if ciphers is not None:
        context.set_ciphers(ciphers)
    context.set_alpn_protocols(["http/1.1"])
    return context


def blocking_handshake(
    server: TlsServer, client: ssl.SSLContext, server_hostname: str | None
) -> None:
    """A handshake that shows the server's alert: with the "python" engine between
    blocking sockets (asyncio does not send the alerts), with the "openssl" engine
    (which does) against the server itself. The client reads one byte so that
    TLS 1.3 post-handshake failures show too."""
    if isinstance(server.context, ServerContext):
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            tls.recv(1)
        return
    context = server.context
    left, right = socket.socketpair()
    left.settimeout(TIMEOUT)
    right.settimeout(TIMEOUT)

    def accept() -> None:
        try:
            with context.wrap_socket(left, server_side=True) as tls:
                tls.sendall(b"x")
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        with client.wrap_socket(right, server_hostname=server_hostname) as tls:
            tls.recv(1)
    finally:
        left.close()
        right.close()
        thread.join(TIMEOUT)


# -- certificate_names and the DER reader


def test_certificate_names_from_sans(ca: trustme.CA, tmp_path: Path) -> None:
    leaf = ca.issue_cert(
        "A.Example", "*.b.example", "127.0.0.1", "::1", common_name="cn.example"
    )
    files = write_leaf(leaf, tmp_path, "san")
    assert certificate_names(files.cert) == ["a.example", "*.b.example", "127.0.0.1", "::1"]


def test_certificate_names_cn_only(ca: trustme.CA, tmp_path: Path) -> None:
    files = custom_cert(ca, tmp_path, "cn", [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Legacy.Example"),
    ])
    assert certificate_names(files.cert) == ["legacy.example"]


def test_certificate_names_cn_ignored_when_san_has_names(ca: trustme.CA, tmp_path: Path) -> None:
    files = custom_cert(
        ca, tmp_path, "both", cn("cn.example"), [x509.DNSName("san.example")]
    )
    assert certificate_names(files.cert) == ["san.example"]


def test_certificate_names_cn_when_san_has_no_host_names(ca: trustme.CA, tmp_path: Path) -> None:
    files = custom_cert(
        ca, tmp_path, "mail", cn("cn.example"), [x509.RFC822Name("a@example.org")]
    )
    assert certificate_names(files.cert) == ["cn.example"]


def test_certificate_names_none(ca: trustme.CA, tmp_path: Path) -> None:
    files = custom_cert(
        ca, tmp_path, "anon", [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")]
    )
    assert certificate_names(files.cert) == []


def test_certificate_names_reads_the_leaf_of_a_chain(ca: trustme.CA, tmp_path: Path) -> None:
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("leaf.example")
    assert len(leaf.cert_chain_pems) == 2
    files = write_leaf(leaf, tmp_path, "chain")
    assert certificate_names(files.cert) == ["leaf.example"]


def test_der_reader_agrees_with_cryptography(ca: trustme.CA) -> None:
    for key_type, expected in ((RSA, "RSA"), (ECDSA, "ECDSA")):
        leaf = ca.issue_cert("x.example", "10.0.0.1", key_type=key_type)
        info = tls_module._parse_certificate(der_of(leaf))
        reference = x509.load_der_x509_certificate(der_of(leaf))
        assert info.key_type == expected
        assert info.not_after == reference.not_valid_after_utc
        san = reference.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert info.names == [
            *san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        ]


def test_der_reader_times_both_encodings(ca: trustme.CA, tmp_path: Path) -> None:
    # RFC 5280: UTCTime up to 2049, GeneralizedTime from 2050 on.
    for year in (2049, 2050, 2099):
        not_after = datetime.datetime(year, 6, 1, 12, 30, 15, tzinfo=datetime.UTC)
        files = custom_cert(ca, tmp_path, f"y{year}", cn("t.example"), not_after=not_after)
        der = ssl.PEM_cert_to_DER_cert(Path(files.cert).read_text())
        assert tls_module._parse_certificate(der).not_after == not_after


def test_der_reader_rejects_malformed_input(ca: trustme.CA, tmp_path: Path) -> None:
    der = der_of(ca.issue_cert("x.example", "*.y.example"))
    parse = tls_module._parse_certificate
    for size in range(len(der)):
        with pytest.raises(ValueError):
            parse(der[:size])
    with pytest.raises(ValueError, match="indefinite length"):
        parse(b"\x30\x80" + der[2:])
    with pytest.raises(ValueError, match="shortest form"):
        parse(b"\x30\x83\x00" + der[2:])
    # Random corruption: a name list or ValueError, never another exception.
    rng = random.Random(1234)
    for _ in range(3000):
        mutated = bytearray(der)
        for _ in range(rng.randint(1, 3)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        try:
            parse(bytes(mutated))
        except ValueError:
            pass


def test_certificate_names_file_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    with pytest.raises(ValueError, match="no BEGIN CERTIFICATE"):
        certificate_names(str(garbage))
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot*base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="base64"):
        certificate_names(str(garbage))
    with pytest.raises(OSError):
        certificate_names(str(tmp_path / "missing.pem"))


# -- SNI


@pytest.fixture
def two_sites(ca: trustme.CA, tmp_path: Path) -> dict[str, Any]:
    a = ca.issue_cert("a.example")
    b = ca.issue_cert("*.b.example")
    files = (write_leaf(a, tmp_path, "a"), write_leaf(b, tmp_path, "b"))
    return {"a": der_of(a), "b": der_of(b), "files": files}


def test_sni_selects_exact_and_wildcard_names(
    ca: trustme.CA, two_sites: dict[str, Any], serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls(two_sites["files"])))
    assert connect(server.port, client(ca), "a.example").peer_der == two_sites["a"]
    assert connect(server.port, client(ca), "x.b.example").peer_der == two_sites["b"]
    assert connect(server.port, client(ca), "X.B.Example").peer_der == two_sites["b"]
    # A wildcard covers one label only: y.x.b.example gets the default certificate.
    loose = client(ca, check_hostname=False)
    assert connect(server.port, loose, "y.x.b.example").peer_der == two_sites["a"]
    assert connect(server.port, loose, "b.example").peer_der == two_sites["a"]


def test_unknown_name_and_no_sni_get_the_default(
    ca: trustme.CA, two_sites: dict[str, Any], serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls(two_sites["files"])))
    loose = client(ca, check_hostname=False)
    assert connect(server.port, loose, "unknown.example").peer_der == two_sites["a"]
    assert connect(server.port, loose, None).peer_der == two_sites["a"]


def test_unknown_name_and_no_sni_refused(
    ca: trustme.CA, two_sites: dict[str, Any], serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls(two_sites["files"], unknown_sni="refuse")))
    loose = client(ca, check_hostname=False)
    for name in ("unknown.example", None):
        with pytest.raises(REFUSED):
            connect(server.port, loose, name)
        with pytest.raises(ssl.SSLError, match="TLSV1_UNRECOGNIZED_NAME"):
            blocking_handshake(server, loose, name)
    assert connect(server.port, client(ca), "a.example").peer_der == two_sites["a"]
    assert connect(server.port, client(ca), "z.b.example").peer_der == two_sites["b"]


def test_explicit_names_replace_the_certificate_names(
    ca: trustme.CA, tmp_path: Path, serve: Callable[..., TlsServer]
) -> None:
    a, b = ca.issue_cert("a.example"), ca.issue_cert("b.example")
    files = (
        write_leaf(a, tmp_path, "a"),
        write_leaf(b, tmp_path, "b", names=("Alias.Example",)),
    )
    server = serve(server_context(ListenerTls(files)))
    loose = client(ca, check_hostname=False)
    assert connect(server.port, loose, "alias.example").peer_der == der_of(b)
    assert connect(server.port, loose, "b.example").peer_der == der_of(a)  # not listed


ECDSA_ONLY = "ECDHE-ECDSA-AES128-GCM-SHA256"
RSA_ONLY = "ECDHE-RSA-AES128-GCM-SHA256"


def test_rsa_and_ecdsa_side_by_side(
    ca: trustme.CA, tmp_path: Path, serve: Callable[..., TlsServer]
) -> None:
    # Certificate 0 (RSA) serves a and c; certificate 1 (ECDSA) serves a only:
    # a.example gets a context holding both, c.example one holding the RSA one.
    rsa = ca.issue_cert("a.example", "c.example", key_type=RSA)
    ecdsa = ca.issue_cert("a.example", key_type=ECDSA)
    files = (write_leaf(rsa, tmp_path, "rsa"), write_leaf(ecdsa, tmp_path, "ecdsa"))
    server = serve(server_context(ListenerTls(files)))
    tls12 = ssl.TLSVersion.TLSv1_2
    for ciphers, expected in ((ECDSA_ONLY, ecdsa), (RSA_ONLY, rsa)):
        conn = connect(server.port, client(ca, max_version=tls12, ciphers=ciphers), "a.example")
        assert conn.peer_der == der_of(expected)
        assert conn.cipher == ciphers
    assert connect(server.port, client(ca, max_version=tls12, ciphers=RSA_ONLY),
                   "c.example").peer_der == der_of(rsa)
    with pytest.raises(REFUSED):
        connect(server.port, client(ca, max_version=tls12, ciphers=ECDSA_ONLY), "c.example")
    # Without SNI: the default context is certificate 0's first name's, holding both.
    loose = client(ca, check_hostname=False, max_version=tls12, ciphers=ECDSA_ONLY)
    assert connect(server.port, loose, None).peer_der == der_of(ecdsa)


# -- versions, ciphers, ALPN


@pytest.fixture
def site(ca: trustme.CA, tmp_path: Path) -> CertificateFiles:
    return write_leaf(ca.issue_cert("site.example"), tmp_path, "site")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_0_and_1_1_refused(
    ca: trustme.CA, site: CertificateFiles, serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls((site,))))
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        old = client(ca, min_version=ssl.TLSVersion.TLSv1, max_version=version)
        old.set_ciphers("ALL:@SECLEVEL=0")  # let the client offer the old versions
        with pytest.raises(REFUSED):
            connect(server.port, old, "site.example")
        # The server's own refusal (not the client's): a protocol_version alert.
        with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
            blocking_handshake(server, old, "site.example")


def test_tls_1_2_and_1_3_accepted(
    ca: trustme.CA, site: CertificateFiles, serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls((site,))))
    conn = connect(server.port, client(ca), "site.example")
    assert conn.version == conn.facts["version"] == "TLSv1.3"
    tls12 = client(ca, max_version=ssl.TLSVersion.TLSv1_2)
    assert connect(server.port, tls12, "site.example").version == "TLSv1.2"


def test_min_version_1_3_refuses_1_2(
    ca: trustme.CA, site: CertificateFiles, serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls((site,), min_version="1.3")))
    tls12 = client(ca, max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(REFUSED):
        connect(server.port, tls12, "site.example")
    with pytest.raises(ssl.SSLError, match="TLSV1_ALERT_PROTOCOL_VERSION"):
        blocking_handshake(server, tls12, "site.example")
    assert connect(server.port, client(ca), "site.example").version == "TLSv1.3"


def test_alpn_http_1_1(
    ca: trustme.CA, site: CertificateFiles, serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls((site,))))
    conn = connect(server.port, client(ca), "site.example")
    assert conn.alpn == conn.facts["alpn"] == "http/1.1"
    h2_only = client(ca)
    h2_only.set_alpn_protocols(["h2"])
    assert connect(server.port, h2_only, "site.example").alpn == "h2"  # offered by default
    h1_server = serve(server_context(ListenerTls((site,), alpn=("http/1.1",))))
    assert connect(h1_server.port, h2_only, "site.example").alpn is None  # no overlap: no ALPN


def test_tls_1_2_suites_are_ecdhe_aead(
    ca: trustme.CA, site: CertificateFiles, serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls((site,))))
    conn = connect(server.port, client(ca, max_version=ssl.TLSVersion.TLSv1_2), "site.example")
    assert conn.facts["cipher"] == conn.cipher
    assert conn.cipher.startswith("ECDHE-") and ("GCM" in conn.cipher or "CHACHA20" in conn.cipher)
    # The policy itself: TLS 1.2 suites are DEFAULT_CIPHERS, all ECDHE and AEAD.
    policy = tls_module._policy_base("1.2", None).get_ciphers()
    tls12 = [s for s in policy if s["protocol"] == "TLSv1.2"]
    assert [s["name"] for s in tls12] == DEFAULT_CIPHERS.split(":")
    assert {s["kea"] for s in tls12} == {"kx-ecdhe"}
    assert all(s["aead"] for s in policy)


@pytest.mark.parametrize(
    "ciphers",
    ["AES128-SHA:AES256-SHA", "AES128-GCM-SHA256:AES256-GCM-SHA384",
     "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384"],
)
def test_cbc_and_rsa_key_exchange_refused(
    ciphers: str, ca: trustme.CA, site: CertificateFiles, serve: Callable[..., TlsServer]
) -> None:
    server = serve(server_context(ListenerTls((site,))))
    weak = client(ca, max_version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers)
    with pytest.raises(REFUSED):
        connect(server.port, weak, "site.example")
    with pytest.raises(ssl.SSLError, match="ALERT_HANDSHAKE_FAILURE"):
        blocking_handshake(server, weak, "site.example")


def test_custom_ciphers(
    ca: trustme.CA, site: CertificateFiles, serve: Callable[..., TlsServer]
) -> None:
    suite = "ECDHE-ECDSA-CHACHA20-POLY1305"
    server = serve(server_context(ListenerTls((site,), ciphers=suite)))
    conn = connect(server.port, client(ca, max_version=ssl.TLSVersion.TLSv1_2), "site.example")
    assert conn.cipher == suite
    # TLS 1.3 suites are not affected by the TLS 1.2 list.
    assert connect(server.port, client(ca), "site.example").version == "TLSv1.3"


# -- client certificates


@pytest.fixture
def alice(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("alice@example.org", common_name="alice", organization_name="Example")


def mtls_server(
    serve: Callable[..., TlsServer], site: CertificateFiles, ca_file: str, mode: str
) -> TlsServer:
    return serve(server_context(ListenerTls((site,), client_auth=mode, client_ca=ca_file)))


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_auth_required(
    version: ssl.TLSVersion,
    ca: trustme.CA,
    other_ca: trustme.CA,
    alice: trustme.LeafCert,
    site: CertificateFiles,
    tmp_path: Path,
    serve: Callable[..., TlsServer],
) -> None:
    server = mtls_server(serve, site, write_ca(ca, tmp_path), "required")
    # No certificate: with TLS 1.3 the client's handshake completes and the
    # failure shows on the first read; connect() reads, so both versions fail here.
    anonymous = client(ca, max_version=version)
    with pytest.raises(REFUSED):
        connect(server.port, anonymous, "site.example")
    alert = "CERTIFICATE_REQUIRED" if version == ssl.TLSVersion.TLSv1_3 else "HANDSHAKE_FAILURE"
    with pytest.raises(ssl.SSLError, match=alert):
        blocking_handshake(server, anonymous, "site.example")
    # A certificate from another CA.
    stranger = client(ca, max_version=version)
    other_ca.issue_cert("mallory@example.org").configure_cert(stranger)
    with pytest.raises(REFUSED):
        connect(server.port, stranger, "site.example")
    with pytest.raises(ssl.SSLError, match="UNKNOWN_CA"):
        blocking_handshake(server, stranger, "site.example")

    trusted = client(ca, max_version=version)
    alice.configure_cert(trusted)
    peer = connect(server.port, trusted, "site.example").facts["peer"]
    reference = x509.load_der_x509_certificate(der_of(alice))
    assert peer == {
        "subject": reference.subject.rfc4514_string(),
        "issuer": reference.issuer.rfc4514_string(),
        "fingerprint": hashlib.sha256(der_of(alice)).hexdigest(),
        "serial": peer["serial"],
        "verify": "SUCCESS",
    }
    assert peer["subject"].startswith("CN=alice,") and peer["subject"].endswith(",O=Example")
    assert peer["serial"] == peer["serial"].upper()
    assert int(peer["serial"], 16) == reference.serial_number


def test_client_auth_optional(
    ca: trustme.CA,
    alice: trustme.LeafCert,
    site: CertificateFiles,
    tmp_path: Path,
    serve: Callable[..., TlsServer],
) -> None:
    server = mtls_server(serve, site, write_ca(ca, tmp_path), "optional")
    assert connect(server.port, client(ca), "site.example").facts["peer"] == {"verify": "NONE"}
    trusted = client(ca)
    alice.configure_cert(trusted)
    peer = connect(server.port, trusted, "site.example").facts["peer"]
    assert peer["verify"] == "SUCCESS"
    assert peer["fingerprint"] == hashlib.sha256(der_of(alice)).hexdigest()


def test_client_auth_none_requests_nothing(
    ca: trustme.CA, alice: trustme.LeafCert, site: CertificateFiles,
    serve: Callable[..., TlsServer],
) -> None:
    server = serve(server_context(ListenerTls((site,))))
    trusted = client(ca)
    alice.configure_cert(trusted)
    assert connect(server.port, trusted, "site.example").facts["peer"] == {"verify": "NONE"}


def test_client_subject_is_escaped(
    ca: trustme.CA, site: CertificateFiles, tmp_path: Path, serve: Callable[..., TlsServer]
) -> None:
    weird = custom_cert(ca, tmp_path, "weird", [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "FR"),
        x509.NameAttribute(NameOID.COMMON_NAME, '#Ann, "Jr" +1 é\r\nX: y '),
    ])
    server = mtls_server(serve, site, write_ca(ca, tmp_path), "required")
    context = client(ca)
    context.load_cert_chain(weird.cert, weird.key)
    subject = connect(server.port, context, "site.example").facts["peer"]["subject"]
    assert subject == r'CN=\#Ann\, \"Jr\" \+1 \C3\A9\0D\0AX: y\ ,C=FR'


def test_client_auth_with_sni_contexts(
    ca: trustme.CA,
    alice: trustme.LeafCert,
    two_sites: dict[str, Any],
    tmp_path: Path,
    serve: Callable[..., TlsServer],
) -> None:
    # The client CA must also be in the context the SNI callback switches to.
    tls = ListenerTls(two_sites["files"], client_auth="required", client_ca=write_ca(ca, tmp_path))
    server = serve(server_context(tls))
    trusted = client(ca)
    alice.configure_cert(trusted)
    conn = connect(server.port, trusted, "q.b.example")
    assert conn.peer_der == two_sites["b"] and conn.facts["peer"]["verify"] == "SUCCESS"
    with pytest.raises(REFUSED):
        connect(server.port, client(ca), "q.b.example")


# -- check_certificates


def test_check_good_set(ca: trustme.CA, tmp_path: Path) -> None:
    files = (
        write_leaf(ca.issue_cert("a.example", key_type=RSA), tmp_path, "a-rsa"),
        write_leaf(ca.issue_cert("a.example", key_type=ECDSA), tmp_path, "a-ec"),
        write_leaf(ca.issue_cert("*.a.example"), tmp_path, "wild"),
    )
    tls = ListenerTls(files, client_auth="optional", client_ca=write_ca(ca, tmp_path))
    assert check_certificates(tls) == []


def test_check_key_mismatch(ca: trustme.CA, tmp_path: Path) -> None:
    a = write_leaf(ca.issue_cert("a.example"), tmp_path, "a")
    b = write_leaf(ca.issue_cert("b.example"), tmp_path, "b")
    r = write_leaf(ca.issue_cert("r.example", key_type=RSA), tmp_path, "r")
    tls = ListenerTls((
        CertificateFiles(a.cert, b.key),  # same key type
        CertificateFiles(r.cert, a.key),  # RSA certificate, ECDSA key
        a,
    ))
    assert check_certificates(tls) == [
        ("certificates[0].key", "the key does not match the certificate"),
        ("certificates[1].key", "the key does not match the certificate"),
    ]
    with pytest.raises(ValueError, match=r"certificates\[0\]\.key: the key does not match"):
        server_context(tls)


def test_check_expired(ca: trustme.CA, tmp_path: Path) -> None:
    expired = ca.issue_cert(
        "old.example",
        not_before=datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC),
    )
    tls = ListenerTls((write_leaf(expired, tmp_path, "old"),))
    # Served anyway (as nginx does), with a warning from `fastproxy check`.
    assert check_certificates(tls) == []
    assert certificate_warnings(tls) == [("certificates[0].cert", "expired on 2024-01-01")]
    assert isinstance(server_context(tls), ServerContext)
    assert isinstance(python_context(tls), ssl.SSLContext)


def test_check_encrypted_key(ca: trustme.CA, tmp_path: Path) -> None:
    leaf = ca.issue_cert("enc.example")
    files = write_leaf(leaf, tmp_path, "enc")
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    for fmt in (serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL):
        Path(files.key).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, fmt, serialization.BestAvailableEncryption(b"secret")
            )
        )
        # OpenSSL would prompt on the terminal without a passphrase callback; it must not.
        [(where, reason)] = check_certificates(ListenerTls((files,)))
        assert where == "certificates[0].key"
        assert "encrypted" in reason and "passphrases are not supported" in reason


def test_check_unreadable_and_garbage_files(ca: trustme.CA, tmp_path: Path) -> None:
    good = write_leaf(ca.issue_cert("g.example"), tmp_path, "good")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not pem\n")
    missing = str(tmp_path / "missing.pem")
    fake_key = tmp_path / "fake.key"
    fake_key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    tls = ListenerTls((
        good,
        CertificateFiles(missing, good.key),
        CertificateFiles(good.cert, missing),
        CertificateFiles(str(tmp_path), good.key),  # a directory
        CertificateFiles(str(garbage), good.key),
        CertificateFiles(good.cert, str(garbage)),
        CertificateFiles(good.cert, good.cert),  # the certificate as its key
        CertificateFiles(good.cert, str(fake_key)),
    ))
    problems = check_certificates(tls)
    assert [where for where, _ in problems] == [
        "certificates[1].cert", "certificates[2].key", "certificates[3].cert",
        "certificates[4].cert", "certificates[5].key", "certificates[6].key",
        "certificates[7].key",
    ]
    reasons = [reason for _, reason in problems]
    assert reasons[0] == f"cannot read {missing}: No such file or directory"
    assert reasons[1] == f"cannot read {missing}: No such file or directory"
    assert reasons[2].startswith(f"cannot read {tmp_path}: ")
    assert reasons[3] == f"{garbage} is not a PEM certificate: no BEGIN CERTIFICATE block"
    assert reasons[4].startswith(f"{garbage} is not a PEM private key")
    assert reasons[5].startswith(f"{good.cert} is not a PEM private key")
    assert reasons[6].startswith(f"{fake_key} is not a usable private key (OpenSSL:")


def test_check_duplicate_key_types(ca: trustme.CA, tmp_path: Path) -> None:
    files = (
        write_leaf(ca.issue_cert("a.example", key_type=RSA), tmp_path, "0"),
        write_leaf(ca.issue_cert("a.example", key_type=ECDSA), tmp_path, "1"),
        write_leaf(ca.issue_cert("b.example", "A.example", key_type=RSA), tmp_path, "2"),
        write_leaf(ca.issue_cert("c.example", key_type=ECDSA), tmp_path, "3",
                   names=("a.example",)),
    )
    assert check_certificates(ListenerTls(files)) == [
        ("certificates[2]", "certificates[0] and certificates[2] are both RSA certificates"
                            " for a.example"),
        ("certificates[3]", "certificates[1] and certificates[3] are both ECDSA certificates"
                            " for a.example"),
    ]


def test_check_no_names(ca: trustme.CA, tmp_path: Path) -> None:
    anon = custom_cert(ca, tmp_path, "anon", [
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
    ])
    [(where, reason)] = check_certificates(ListenerTls((anon,)))
    assert where == "certificates[0]" and "has no names" in reason and "`names`" in reason
    named = CertificateFiles(anon.cert, anon.key, names=("anon.example",))
    assert check_certificates(ListenerTls((named,))) == []


def test_check_client_ca(ca: trustme.CA, site: CertificateFiles, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("nothing\n")
    missing = str(tmp_path / "missing.pem")
    cases = [
        (ListenerTls((site,), client_auth="required"),
         "needed when client_auth is 'required'"),
        (ListenerTls((site,), client_auth="optional", client_ca=missing),
         f"cannot read {missing}: No such file or directory"),
        (ListenerTls((site,), client_auth="required", client_ca=str(garbage)),
         f"{garbage} holds no PEM CA certificate (OpenSSL: no certificate or crl found)"),
    ]
    for tls, reason in cases:
        assert check_certificates(tls) == [("client_ca", reason)]
        with pytest.raises(ValueError, match="client_ca: "):
            server_context(tls)


def test_check_ciphers_and_alpn(site: CertificateFiles) -> None:
    tls = ListenerTls((site,), ciphers="NOPE-NOTHING", alpn=("x" * 300,))
    assert [where for where, _ in check_certificates(tls)] == ["ciphers", "alpn"]
    with pytest.raises(ValueError, match=r"^ciphers: selects no cipher suite"):
        server_context(tls)


def test_check_weak_key(ca: trustme.CA, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    name = x509.Name(cn("weak.example"))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "weak.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "weak.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    files = CertificateFiles(str(tmp_path / "weak.pem"), str(tmp_path / "weak.key"))
    [(where, reason)] = check_certificates(ListenerTls((files,)))
    assert where == "certificates[0].cert" and "security level" in reason


def test_openssl_engine_is_the_default(site: CertificateFiles) -> None:
    tls = ListenerTls((site,))
    assert tls.engine == "openssl"
    context = tls_module.server_context(tls)
    assert isinstance(context, ServerContext)
    assert context.verify_mode == 0 and context.handshake_timeout == tls.handshake_timeout
    required = tls_module.server_context(dataclasses.replace(tls, engine="python"))
    assert isinstance(required, ssl.SSLContext)


def test_server_policy_options(site: CertificateFiles) -> None:
    context = python_context(ListenerTls((site,)))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert not context.options & ssl.OP_NO_TICKET
    assert context.security_level >= 2
    assert context.verify_mode == ssl.CERT_NONE


# -- client_context (to upstream servers)


@pytest.fixture
def upstream(
    ca: trustme.CA, tmp_path: Path, serve: Callable[..., TlsServer]
) -> TlsServer:
    files = write_leaf(ca.issue_cert("upstream.example"), tmp_path, "upstream")
    tls = ListenerTls((files,), client_auth="optional", client_ca=write_ca(ca, tmp_path))
    return serve(server_context(tls))


def test_client_context_verifies(
    ca: trustme.CA, other_ca: trustme.CA, tmp_path: Path, upstream: TlsServer
) -> None:
    good = client_context(UpstreamTls(ca=write_ca(ca, tmp_path)))
    conn = connect(upstream.port, good, "upstream.example")
    assert conn.alpn == "http/1.1" and conn.facts["peer"] == {"verify": "NONE"}
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        connect(upstream.port, good, "other.example")
    wrong_ca = client_context(UpstreamTls(ca=write_ca(other_ca, tmp_path, "other")))
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(upstream.port, wrong_ca, "upstream.example")
    system_cas = client_context(UpstreamTls())
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(upstream.port, system_cas, "upstream.example")


def test_client_context_without_verification(upstream: TlsServer) -> None:
    context = client_context(UpstreamTls(verify=False))
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert connect(upstream.port, context, "anything.example").version == "TLSv1.3"


def test_client_context_presents_a_certificate(
    ca: trustme.CA, alice: trustme.LeafCert, tmp_path: Path, upstream: TlsServer
) -> None:
    files = write_leaf(alice, tmp_path, "alice")
    context = client_context(UpstreamTls(ca=write_ca(ca, tmp_path), cert=files.cert,
                                         key=files.key))
    peer = connect(upstream.port, context, "upstream.example").facts["peer"]
    assert peer["verify"] == "SUCCESS"
    assert peer["fingerprint"] == hashlib.sha256(der_of(alice)).hexdigest()


def test_client_context_min_version(ca: trustme.CA, tmp_path: Path,
                                    serve: Callable[..., TlsServer]) -> None:
    files = write_leaf(ca.issue_cert("old.example"), tmp_path, "old")
    old_server = python_context(ListenerTls((files,)))  # made to stop at TLS 1.2
    old_server.maximum_version = ssl.TLSVersion.TLSv1_2
    server = serve(old_server)
    ca_file = write_ca(ca, tmp_path)
    assert connect(server.port, client_context(UpstreamTls(ca=ca_file)),
                   "old.example").version == "TLSv1.2"
    with pytest.raises(ssl.SSLError):
        connect(server.port, client_context(UpstreamTls(ca=ca_file, min_version="1.3")),
                "old.example")


def test_client_context_bad_files(ca: trustme.CA, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ValueError, match=r"^ca: cannot read"):
        client_context(UpstreamTls(ca=missing))
    a = write_leaf(ca.issue_cert("a.example"), tmp_path, "a")
    b = write_leaf(ca.issue_cert("b.example"), tmp_path, "b")
    with pytest.raises(ValueError, match=r"^key: the key does not match the certificate"):
        client_context(UpstreamTls(cert=a.cert, key=b.key))


# -- session resumption across forked workers


def _serve_in_child(listener: socket.socket, make_context: Callable[[], Any]) -> None:
    """A forked child: serve TLS on ``listener`` until killed (or 30 s, a safety net)."""
    try:
        signal.alarm(30)
        context = make_context()
        if isinstance(context, ServerContext):  # engine "openssl": on uvloop, as a worker
            loop = uvloop.new_event_loop()
            listener.setblocking(False)
            loop.run_until_complete(loop.create_server(context.server(_Describe), sock=listener))
            loop.run_forever()
        while True:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"{}\n")
                    tls.recv(1)  # until the client closes
            except OSError:
                pass
    finally:
        os._exit(0)


@contextlib.contextmanager
def forked_servers(make_context: Callable[[], Any]) -> Iterator[list[int]]:
    """Two child processes serving TLS, each on its own port; killed by PID on exit."""
    listeners = []
    pids: list[int] = []
    try:
        for _ in range(2):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            listeners.append(listener)
        for listener in listeners:
            pid = os.fork()
            if pid == 0:
                _serve_in_child(listener, make_context)
            pids.append(pid)
        yield [listener.getsockname()[1] for listener in listeners]
    finally:
        for listener in listeners:
            listener.close()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + TIMEOUT
        for pid in pids:
            while time.monotonic() < deadline:
                if os.waitpid(pid, os.WNOHANG) != (0, 0):
                    break
                time.sleep(0.01)


def resumption(
    ca: trustme.CA, ports: list[int], version: ssl.TLSVersion, name: str = "site.example"
) -> list[bool]:
    """Whether a session from child 1 resumes on child 1 and on child 2."""
    context = client(ca, min_version=version, max_version=version)
    first = connect(ports[0], context, name)
    assert first.version == {ssl.TLSVersion.TLSv1_2: "TLSv1.2"}.get(version, "TLSv1.3")
    assert not first.reused and first.session is not None
    # With TLS 1.3 the ticket comes after the handshake: connect() has read a line by now.
    assert first.session.has_ticket
    again = connect(ports[0], context, name, session=first.session)
    other = connect(ports[1], context, name, session=first.session)
    return [again.reused, other.reused]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("engine", ENGINES)
def test_sessions_resume_across_processes_sharing_a_context(
    version: ssl.TLSVersion, engine: str, ca: trustme.CA, site: CertificateFiles
) -> None:
    # Built before the fork, like the master.
    shared = tls_module.server_context(ListenerTls((site,), engine=engine))
    with forked_servers(lambda: shared) as ports:
        assert resumption(ca, ports, version) == [True, True]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("engine", ENGINES)
def test_sessions_do_not_resume_across_separately_built_contexts(
    version: ssl.TLSVersion, engine: str, ca: trustme.CA, site: CertificateFiles
) -> None:
    with forked_servers(
        lambda: tls_module.server_context(ListenerTls((site,), engine=engine))
    ) as ports:
        assert resumption(ca, ports, version) == [True, False]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.parametrize("engine", ENGINES)
def test_sessions_resume_across_processes_after_an_sni_switch(
    version: ssl.TLSVersion, engine: str, ca: trustme.CA, two_sites: dict[str, Any]
) -> None:
    # Tickets are sealed with the keys of the context the handshake started in
    # (the default one), also when the SNI callback switched to another one.
    shared = tls_module.server_context(ListenerTls(two_sites["files"], engine=engine))
    with forked_servers(lambda: shared) as ports:
        assert resumption(ca, ports, version, "w.b.example") == [True, True]
