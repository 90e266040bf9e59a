"""The TLS policy of the proxy: server contexts for listeners, client contexts
for https:// upstream servers, certificate checks, client-certificate facts.

Only the standard :mod:`ssl` module is used. The few facts OpenSSL does not
expose for a certificate *file* (its names, expiry and key type) come from a
small strict DER reader at the end of this module.

Policy (in the spirit of the well-known "intermediate" server profile):

- TLS 1.2 and 1.3 only; TLS 1.2 suites are ECDHE with AES-GCM or
  ChaCha20-Poly1305 (forward secrecy and AEAD), TLS 1.3 suites are OpenSSL's
  defaults (all AEAD). OpenSSL's security level is at least 2 (RSA keys of
  2048 bits or more, no SHA-1 signatures), whatever the system default.
- No compression (CRIME), no renegotiation (client-initiated renegotiation
  is a cheap CPU attack and has no use for a proxy).
- SNI: certificates are grouped by the names they serve. Every certificate
  serving a name goes into one context, so an RSA and an ECDSA certificate
  for the same name sit side by side (OpenSSL keeps one certificate per key
  type) and each client gets the one it supports. A name maps to the context
  of its group with one dict lookup (then one more for the wildcard).

Session tickets (resumption across workers): the master builds every server
context *before* it forks the workers. OpenSSL makes the session-ticket keys
when a context is created, so every worker inherits the same keys, and a
client that got a ticket from one worker resumes its session on any other
worker (SO_REUSEPORT spreads a client's connections over all of them). A
context built inside each worker would have its own keys, and resumption
would work only when the kernel happened to pick the same worker again.
Tickets therefore stay enabled (never ``OP_NO_TICKET``). Only the keys are
shared: OpenSSL notices the fork and reseeds its random generator in each
child, so handshakes in different workers never share randomness. TLS 1.2 session-id
resumption uses a per-process cache and does not cross workers; tickets do.
The keys live as long as the contexts: a reload that rebuilds the contexts
rotates them (which is also what bounds how long a stolen key could decrypt
recorded resumed sessions).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import re
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from fastproxy.config import ListenerTls, UpstreamTls

__all__ = [
    "DEFAULT_CIPHERS",
    "certificate_names",
    "check_certificates",
    "client_context",
    "describe_peer_cert",
    "openssl_context",
    "python_context",
    "server_context",
]

# TLS 1.2 suites (TLS 1.3 suites are set apart by OpenSSL and stay its defaults).
# ECDSA first: smaller and faster handshakes when the listener has both kinds.
DEFAULT_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)

_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_CLIENT_AUTH: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_UNKNOWN_SNI: Final = ("default", "refuse")
_MIN_SECURITY_LEVEL: Final = 2

Problem = tuple[str, str]  # (key path below the tls table, reason)


# -- listeners


def certificate_names(pem_path: str) -> list[str]:
    """The names the first certificate in a PEM file is valid for: its DNS
    subjectAltNames (lower-case, wildcards as written) and IP subjectAltNames
    (as text); its subject CN when it has neither. Raises OSError when the
    file cannot be read, ValueError when it holds no well-formed certificate."""
    with open(pem_path, "rb") as file:
        return _parse_certificate(_pem_certificate(file.read())).names


def check_certificates(tls: ListenerTls) -> list[Problem]:
    """Every reason :func:`server_context` would refuse ``tls``, as (key, reason)
    pairs with keys like ``certificates[1].key``; [] when all is well."""
    return _inspect(tls)[0]


def certificate_warnings(tls: ListenerTls) -> list[Problem]:
    """What is served but should not be for long: expired certificates, as
    (key, reason). They are served anyway (as nginx does: refusing to start or to
    reload would not make the old certificate any better), but `check` says so."""
    problems, infos = _inspect(tls)
    if problems:
        return []
    now = datetime.datetime.now(datetime.UTC)
    return [(f"certificates[{i}].cert", f"expired on {info.not_after:%Y-%m-%d}")
            for i, info in enumerate(infos) if info.not_after < now]


def server_context(tls: ListenerTls) -> Any:
    """The listener's TLS context, for the engine ``tls.engine`` names: an
    ``ssl.SSLContext`` (engine "python", :func:`python_context`) or a
    ``fastproxy._tls.ServerContext`` (engine "openssl", :func:`openssl_context`).
    Raises ValueError (the reasons of :func:`check_certificates`) when unusable."""
    if tls.engine == "python":
        return python_context(tls)
    return openssl_context(tls)


def python_context(tls: ListenerTls) -> ssl.SSLContext:
    """The context for ``loop.create_server(ssl=...)``: the default certificate's,
    with an SNI callback that switches to the context serving the client's name.
    Raises ValueError (the reasons of :func:`check_certificates`) when unusable."""
    groups, names = _groups(tls)
    contexts = []
    for group in groups:
        context = _server_policy(tls)
        for i in group:
            files = tls.certificates[i]
            context.load_cert_chain(files.cert, files.key, password=_no_passphrase)
        contexts.append(context)
    by_name = {name: contexts[index] for name, index in names.items()}
    default = contexts[0]
    default.sni_callback = _sni_selector(by_name, default, refuse=tls.unknown_sni == "refuse")
    return default


def openssl_context(tls: ListenerTls) -> Any:
    """The same policy as :func:`python_context`, as OpenSSL contexts that
    ``fastproxy._tls`` drives from C (``ServerContext.server(factory)`` is then
    the listener's protocol factory). Raises ValueError when unusable."""
    from fastproxy._tls import ServerContext

    groups, names = _groups(tls)
    files = [[(tls.certificates[i].cert, tls.certificates[i].key) for i in group]
             for group in groups]
    return ServerContext(files, names, refuse=tls.unknown_sni == "refuse",
                         min_version=tls.min_version, ciphers=tls.ciphers or DEFAULT_CIPHERS,
                         alpn=tuple(tls.alpn), client_auth=tls.client_auth,
                         client_ca=tls.client_ca, handshake_timeout=tls.handshake_timeout)


def _groups(tls: ListenerTls) -> tuple[list[tuple[int, ...]], dict[str, int]]:
    """The sets of certificates that serve the same names (the default
    certificate's set first) and, for each name, the index of its set."""
    problems, infos = _inspect(tls)
    if problems:
        raise ValueError("; ".join(f"{key}: {reason}" for key, reason in problems))
    # Each name -> the certificates serving it; each distinct set -> one context.
    serving: dict[str, list[int]] = {}
    for i, info in enumerate(infos):
        for name in _served_names(tls.certificates[i].names, info):
            serving.setdefault(name, []).append(i)
    default = tuple(serving[_served_names(tls.certificates[0].names, infos[0])[0]])
    groups: dict[tuple[int, ...], int] = {default: 0}
    names: dict[str, int] = {}
    for name, indexes in serving.items():
        names[name] = groups.setdefault(tuple(indexes), len(groups))
    return list(groups), names


def _served_names(explicit: Iterable[str], info: _CertInfo) -> list[str]:
    names = [name.lower() for name in explicit] or info.names
    return list(dict.fromkeys(names))


def _sni_selector(
    by_name: dict[str, ssl.SSLContext], default: ssl.SSLContext, refuse: bool
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], int | None]:
    refusal = ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME if refuse else None

    # Called by OpenSSL inside every handshake (server_name is None without SNI).
    def select(conn: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> int | None:
        if server_name is None:
            return refusal
        try:
            conn.fastproxy_sni = server_name  # type: ignore[attr-defined]  # the access log's tls_sni
        except AttributeError:
            pass
        name = server_name.lower()
        context = by_name.get(name)
        if context is None:
            context = by_name.get("*." + name.partition(".")[2])
            if context is None:
                return refusal
        if context is not default:
            conn.context = context
        return None

    return select


def _server_policy(tls: ListenerTls) -> ssl.SSLContext:
    """A server context with the whole policy of ``tls`` but no certificate."""
    context = _policy_base(tls.min_version, tls.ciphers)
    context.set_alpn_protocols(list(tls.alpn))
    context.verify_mode = _CLIENT_AUTH[tls.client_auth]
    if tls.client_ca is not None:
        context.load_verify_locations(cafile=tls.client_ca)
    return context


def _policy_base(min_version: str, ciphers: str | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    suites = ciphers or DEFAULT_CIPHERS
    context.set_ciphers(suites)
    # A cipher string resets the security level to the system default; never go below 2.
    if context.security_level < _MIN_SECURITY_LEVEL:
        context.set_ciphers(f"{suites}:@SECLEVEL={_MIN_SECURITY_LEVEL}")
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


def _inspect(tls: ListenerTls) -> tuple[list[Problem], list[_CertInfo]]:
    """The problems of ``tls`` and, when there are none, the facts of each certificate."""
    problems: list[Problem] = []
    if tls.min_version not in _VERSIONS:
        problems.append(("min_version", f"unsupported TLS version {tls.min_version!r}"))
    if tls.client_auth not in _CLIENT_AUTH:
        problems.append(("client_auth", f"unknown value {tls.client_auth!r}"))
    if tls.unknown_sni not in _UNKNOWN_SNI:
        problems.append(("unknown_sni", f"unknown value {tls.unknown_sni!r}"))
    if not tls.certificates:
        problems.append(("certificates", "at least one certificate is needed"))
    tls_ciphers = tls.ciphers  # what the certificates are loaded with below
    try:
        context = _policy_base("1.2", tls.ciphers)
    except ssl.SSLError:
        problems.append(("ciphers", f"selects no cipher suite OpenSSL knows: {tls.ciphers!r}"))
        tls_ciphers = context = None
    try:
        (context or _policy_base("1.2", None)).set_alpn_protocols(list(tls.alpn))
    except (ssl.SSLError, ValueError, TypeError) as exc:  # SSLError: a bad length
        problems.append(("alpn", f"not usable: {exc.args[0] if exc.args else exc}"))
    problems.extend(_check_client_ca(tls))

    infos: list[_CertInfo] = []
    first_of: dict[tuple[str, str], int] = {}  # (name, key type) -> first certificate
    for i, files in enumerate(tls.certificates):
        where = f"certificates[{i}]"
        info, problem = _check_pair(files.cert, files.key, tls_ciphers)
        if problem is not None:
            problems.append((f"{where}{problem[0]}", problem[1]))
            continue
        assert info is not None
        infos.append(info)
        names = _served_names(files.names, info)
        if not names:
            problems.append(
                (where, "the certificate has no names (no subjectAltName, no subject CN):"
                        " list the names it serves in `names`")
            )
        for name in names:
            first = first_of.setdefault((name, info.key_type), i)
            if first != i:
                problems.append(
                    (where, f"certificates[{first}] and certificates[{i}] are both"
                            f" {info.key_type} certificates for {name}")
                )
                break
    return problems, infos


def _check_client_ca(tls: ListenerTls) -> list[Problem]:
    if tls.client_ca is None:
        if tls.client_auth in ("optional", "required"):
            return [("client_ca", f"needed when client_auth is {tls.client_auth!r}")]
        return []
    try:
        with open(tls.client_ca, "rb"):
            pass
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=tls.client_ca)
    except ssl.SSLError as exc:  # before OSError, its base class
        return [("client_ca", f"{tls.client_ca} holds no PEM CA certificate ({_openssl(exc)})")]
    except OSError as exc:
        return [("client_ca", _unreadable(tls.client_ca, exc))]
    return []


class _PassphraseNeeded(Exception):
    """Raised from OpenSSL's passphrase callback: the key file is encrypted."""


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal and block the master.
    raise _PassphraseNeeded


_PEM_KEY_RE: Final = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


def _check_pair(
    cert: str, key: str, ciphers: str | None
) -> tuple[_CertInfo | None, Problem | None]:
    """Load one certificate and its key as the listener will: (facts, None) when
    usable, else (None, (".cert" or ".key", reason))."""
    try:
        with open(cert, "rb") as file:
            info = _parse_certificate(_pem_certificate(file.read()))
    except OSError as exc:
        return None, (".cert", _unreadable(cert, exc))
    except ValueError as exc:
        return None, (".cert", f"{cert} is not a PEM certificate: {exc}")
    try:
        with open(key, "rb") as file:
            key_pem = file.read()
    except OSError as exc:
        return None, (".key", _unreadable(key, exc))
    if _PEM_KEY_RE.search(key_pem) is None:
        return None, (".key", f"{key} is not a PEM private key (no BEGIN ... PRIVATE KEY line)")
    context = _policy_base("1.2", ciphers)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _PassphraseNeeded:
        return None, (".key", f"{key} is encrypted, and passphrases are not supported:"
                              " store the key unencrypted (openssl pkey -in KEY -out NEW)")
    except OSError as exc:  # ssl.SSLError is an OSError: this order matters
        if not isinstance(exc, ssl.SSLError):
            return None, (".key", _unreadable(key, exc))
        reason = exc.reason or ""
        if reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):
            return None, (".key", "the key does not match the certificate")
        if reason in ("EE_KEY_TOO_SMALL", "CA_KEY_TOO_SMALL", "CA_MD_TOO_WEAK"):
            return None, (".cert", f"{cert} is too weak for OpenSSL's security level"
                                   f" ({_openssl(exc)})")
        return None, (".key", f"{key} is not a usable private key ({_openssl(exc)})")
    return info, None


def _unreadable(path: str, exc: OSError) -> str:
    return f"cannot read {path}: {exc.strerror or exc}"


def _openssl(exc: ssl.SSLError) -> str:
    return f"OpenSSL: {exc.reason.replace('_', ' ').lower() if exc.reason else exc}"


# -- upstream servers


def client_context(tls: UpstreamTls, alpn: tuple[str, ...] = ("http/1.1",)) -> ssl.SSLContext:
    """The context for connections to https:// upstream servers (the caller
    passes ``server_hostname``: ``tls.sni`` or the server's host name), offering
    the protocols `alpn` (``("h2",)`` for an upstream with ``protocol = "h2"``).
    Raises ValueError when a file of ``tls`` is unusable."""
    if tls.min_version not in _VERSIONS:
        raise ValueError(f"min_version: unsupported TLS version {tls.min_version!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    if tls.verify:
        context.verify_mode = ssl.CERT_REQUIRED
        context.check_hostname = True
        if tls.ca is not None:
            try:
                context.load_verify_locations(cafile=tls.ca)
            except ssl.SSLError as exc:
                raise ValueError(f"ca: {tls.ca} holds no PEM CA certificate ({_openssl(exc)})"
                                 ) from None
            except OSError as exc:
                raise ValueError(f"ca: {_unreadable(tls.ca, exc)}") from None
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        context.check_hostname = False  # before verify_mode: CERT_NONE requires it
        context.verify_mode = ssl.CERT_NONE
    if tls.cert is not None:
        key = tls.key or tls.cert
        _, problem = _check_pair(tls.cert, key, None)
        if problem is not None:
            raise ValueError(f"{problem[0][1:]}: {problem[1]}")
        context.load_cert_chain(tls.cert, key, password=_no_passphrase)
    context.set_alpn_protocols(list(alpn))
    return context


# -- client certificates


# OpenSSL's short names (as in nginx's $ssl_client_s_dn) for the long names
# that getpeercert() gives; other attributes keep the name it gives.
_SHORT_NAMES: Final = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "streetAddress": "street",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "domainComponent": "DC",
    "userId": "UID",
}
_DN_SPECIAL: Final = frozenset(',+"\\<>;')


def describe_peer_cert(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> dict[str, str]:
    """Facts about the client certificate of a handshaken server-side connection:
    ``subject`` and ``issuer`` as RFC 4514 strings ("CN=alice,O=Example,C=US":
    most specific first, like nginx's $ssl_client_s_dn; anything outside
    printable ASCII escaped as \\XX, so the text is safe in a header),
    ``fingerprint`` (SHA-256 of the DER, lower-case hex), ``serial`` (upper-case
    hex) and ``verify`` ("SUCCESS"). Without a certificate: {"verify": "NONE"}."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return {"verify": "NONE"}
    facts = {"fingerprint": hashlib.sha256(der).hexdigest()}
    # getpeercert() is {} when the certificate was not verified (CERT_NONE).
    decoded = ssl_object.getpeercert()
    if not decoded:
        facts["verify"] = "NONE"
        return facts
    facts["subject"] = _rfc4514(decoded.get("subject", ()))
    facts["issuer"] = _rfc4514(decoded.get("issuer", ()))
    facts["serial"] = str(decoded.get("serialNumber", "")).upper()
    facts["verify"] = "SUCCESS"
    return facts


def _rfc4514(name: object) -> str:
    # getpeercert() lists RDNs as encoded (least specific first); RFC 4514 reverses them.
    if not isinstance(name, tuple):
        return ""
    rdns = ["+".join(f"{_SHORT_NAMES.get(k, k)}={_escape_dn(v)}" for k, v in rdn) for rdn in name]
    return ",".join(reversed(rdns))


def _escape_dn(value: str) -> str:
    out = []
    for i, char in enumerate(value):
        if char in _DN_SPECIAL or (char == "#" and i == 0) or (
            char == " " and i in (0, len(value) - 1)
        ):
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append("".join(f"\\{byte:02X}" for byte in char.encode("utf-8")))
    return "".join(out)


# -- a small, strict DER reader for X.509 certificates (RFC 5280 4.1)
#
# It reads only what OpenSSL does not expose for a file: the subjectAltName
# DNS and IP entries, the subject CN, the notAfter time and the public key's
# algorithm. Anything malformed raises ValueError saying what and where.


@dataclass(frozen=True, slots=True)
class _CertInfo:
    names: list[str]  # DNS SANs (lower-case) and IP SANs; else the subject CN
    not_after: datetime.datetime  # UTC
    key_type: str  # "RSA", "ECDSA", ...: OpenSSL keeps one certificate per type


_PEM_CERT_RE: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.DOTALL
)

_OID_SUBJECT_ALT_NAME: Final = "2.5.29.17"
_OID_COMMON_NAME: Final = "2.5.4.3"
_KEY_TYPES: Final = {
    "1.2.840.113549.1.1.1": "RSA",
    "1.2.840.113549.1.1.10": "RSA-PSS",
    "1.2.840.10045.2.1": "ECDSA",
    "1.2.840.10040.4.1": "DSA",
    "1.3.101.112": "Ed25519",
    "1.3.101.113": "Ed448",
}

# DER tags (universal class, plus the context-specific ones of X.509).
_BOOLEAN, _INTEGER, _BIT_STRING, _OCTET_STRING, _OID = 0x01, 0x02, 0x03, 0x04, 0x06
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_SEQUENCE, _SET = 0x30, 0x31
_VERSION, _ISSUER_UID, _SUBJECT_UID, _EXTENSIONS = 0xA0, 0x81, 0x82, 0xA3
_SAN_DNS, _SAN_IP = 0x82, 0x87  # GeneralName: dNSName [2], iPAddress [7]
_STRING_CODECS: Final = {  # DirectoryString and friends
    0x0C: "utf-8",  # UTF8String
    0x13: "ascii",  # PrintableString
    0x16: "ascii",  # IA5String
    0x14: "latin-1",  # TeletexString (in practice)
    0x1E: "utf-16-be",  # BMPString
    0x1C: "utf-32-be",  # UniversalString
}


@dataclass(frozen=True, slots=True)
class _Element:
    tag: int
    content: bytes


def _pem_certificate(pem: bytes) -> bytes:
    """The DER bytes of the first certificate in a PEM file."""
    match = _PEM_CERT_RE.search(pem)
    if match is None:
        raise ValueError("no BEGIN CERTIFICATE block")
    try:
        return base64.b64decode(b"".join(match.group(1).split()), validate=True)
    except binascii.Error:
        raise ValueError("the BEGIN CERTIFICATE block is not valid base64") from None


def _elements(data: bytes, what: str) -> list[_Element]:
    """The DER elements that exactly fill ``data``."""
    result = []
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 2:
            raise ValueError(f"{what}: truncated element")
        tag, length = data[pos], data[pos + 1]
        pos += 2
        if tag & 0x1F == 0x1F:
            raise ValueError(f"{what}: multi-byte tag (not used in certificates)")
        if length & 0x80:
            size = length & 0x7F
            if size == 0:
                raise ValueError(f"{what}: indefinite length (BER, not DER)")
            if size > 4 or end - pos < size:
                raise ValueError(f"{what}: bad length")
            length = int.from_bytes(data[pos:pos + size], "big")
            if data[pos] == 0 or length < 0x80:
                raise ValueError(f"{what}: length not in its shortest form (not DER)")
            pos += size
        if length > end - pos:
            raise ValueError(f"{what}: element runs past its end")
        result.append(_Element(tag, data[pos:pos + length]))
        pos += length
    return result


def _expect(element: _Element | None, tag: int, what: str) -> bytes:
    if element is None or element.tag != tag:
        found = "nothing" if element is None else f"tag 0x{element.tag:02x}"
        raise ValueError(f"{what}: expected tag 0x{tag:02x}, found {found}")
    return element.content


def _sequence(data: bytes, what: str, tag: int = _SEQUENCE) -> list[_Element]:
    """The elements of the one element (of ``tag``) that exactly fills ``data``."""
    outer = _elements(data, what)
    if len(outer) != 1:
        raise ValueError(f"{what}: expected one element, found {len(outer)}")
    return _elements(_expect(outer[0], tag, what), what)


def _oid(content: bytes, what: str) -> str:
    if not content or content[-1] & 0x80:
        raise ValueError(f"{what}: truncated object identifier")
    arcs: list[int] = []
    value, start = 0, True
    for byte in content:
        if start and byte == 0x80:
            raise ValueError(f"{what}: object identifier not in its shortest form")
        value = (value << 7) | (byte & 0x7F)
        start = not byte & 0x80
        if start:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(map(str, [first, arcs[0] - 40 * first, *arcs[1:]]))


def _time(element: _Element, what: str) -> datetime.datetime:
    # DER (RFC 5280 4.1.2.5): UTCTime YYMMDDHHMMSSZ until 2049, then GeneralizedTime.
    formats = {_UTC_TIME: (13, "%y%m%d%H%M%SZ"), _GENERALIZED_TIME: (15, "%Y%m%d%H%M%SZ")}
    if element.tag not in formats:
        raise ValueError(f"{what}: expected a time, found tag 0x{element.tag:02x}")
    size, layout = formats[element.tag]
    try:
        text = element.content.decode("ascii")
        if len(text) != size or not text[:-1].isdigit():
            raise ValueError
        moment = datetime.datetime.strptime(text, layout)
    except ValueError:
        raise ValueError(f"{what}: malformed time {element.content!r}") from None
    if element.tag == _UTC_TIME:  # strptime's %y pivots at 69; RFC 5280's at 50
        moment = moment.replace(year=(moment.year % 100) + (1900 if moment.year % 100 >= 50
                                                           else 2000))
    return moment.replace(tzinfo=datetime.UTC)


def _parse_certificate(der: bytes) -> _CertInfo:
    certificate = _sequence(der, "Certificate")
    if len(certificate) != 3:
        raise ValueError(f"Certificate: expected 3 elements, found {len(certificate)}")
    tbs = _elements(_expect(certificate[0], _SEQUENCE, "TBSCertificate"), "TBSCertificate")
    fields = iter(tbs[1:] if tbs and tbs[0].tag == _VERSION else tbs)
    _expect(next(fields, None), _INTEGER, "serialNumber")
    _expect(next(fields, None), _SEQUENCE, "signature")
    _expect(next(fields, None), _SEQUENCE, "issuer")
    validity = _elements(_expect(next(fields, None), _SEQUENCE, "validity"), "validity")
    if len(validity) != 2:
        raise ValueError("validity: expected notBefore and notAfter")
    not_after = _time(validity[1], "notAfter")
    subject = _expect(next(fields, None), _SEQUENCE, "subject")
    key_info = _elements(_expect(next(fields, None), _SEQUENCE, "subjectPublicKeyInfo"),
                         "subjectPublicKeyInfo")
    if len(key_info) != 2:
        raise ValueError("subjectPublicKeyInfo: expected algorithm and key")
    algorithm = _elements(_expect(key_info[0], _SEQUENCE, "algorithm"), "algorithm")
    key_oid = _oid(_expect(algorithm[0] if algorithm else None, _OID, "algorithm"), "algorithm")
    _expect(key_info[1], _BIT_STRING, "subjectPublicKey")

    extensions: list[_Element] = []
    rest = list(fields)
    for optional in (_ISSUER_UID, _SUBJECT_UID, _EXTENSIONS):
        if rest and rest[0].tag == optional:
            found = rest.pop(0)
            if optional == _EXTENSIONS:
                extensions = _sequence(found.content, "extensions")
    if rest:
        raise ValueError(f"TBSCertificate: unexpected tag 0x{rest[0].tag:02x}")

    names = _san_names(extensions)
    if not names:
        common_name = _common_name(subject)
        names = [common_name.lower()] if common_name else []
    return _CertInfo(list(dict.fromkeys(names)), not_after, _KEY_TYPES.get(key_oid, key_oid))


def _san_names(extensions: list[_Element]) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    for extension in extensions:
        parts = _elements(_expect(extension, _SEQUENCE, "extension"), "extension")
        if not 2 <= len(parts) <= 3:
            raise ValueError("extension: expected 2 or 3 elements")
        oid = _oid(_expect(parts[0], _OID, "extension"), "extension")
        if oid in seen:
            raise ValueError(f"extension {oid} appears twice")
        seen.add(oid)
        if len(parts) == 3:
            _expect(parts[1], _BOOLEAN, f"extension {oid} critical")
        value = _expect(parts[-1], _OCTET_STRING, f"extension {oid} value")
        if oid != _OID_SUBJECT_ALT_NAME:
            continue
        for general_name in _sequence(value, "subjectAltName"):
            if general_name.tag == _SAN_DNS:
                try:
                    names.append(general_name.content.decode("ascii").lower())
                except UnicodeDecodeError:
                    raise ValueError("subjectAltName: DNS name is not ASCII") from None
            elif general_name.tag == _SAN_IP:
                if len(general_name.content) not in (4, 16):
                    raise ValueError("subjectAltName: IP address of a bad length")
                names.append(str(ipaddress.ip_address(general_name.content)))
    return names


def _common_name(subject: bytes) -> str | None:
    """The last (most specific) CN of a Name, if any."""
    common_name = None
    for rdn in _elements(subject, "subject"):
        for attribute in _elements(_expect(rdn, _SET, "subject RDN"), "subject RDN"):
            parts = _elements(_expect(attribute, _SEQUENCE, "subject attribute"),
                              "subject attribute")
            if len(parts) != 2:
                raise ValueError("subject attribute: expected a type and a value")
            if _oid(_expect(parts[0], _OID, "subject attribute"), "subject") != _OID_COMMON_NAME:
                continue
            codec = _STRING_CODECS.get(parts[1].tag)
            if codec is None:
                raise ValueError(f"subject CN: not a string (tag 0x{parts[1].tag:02x})")
            try:
                common_name = parts[1].content.decode(codec)
            except UnicodeDecodeError:
                raise ValueError(f"subject CN: not valid {codec}") from None
    return common_name
