"""TLS config keys: [listeners.tls], https_redirect, https:// servers, [upstreams.NAME.tls].

Every valid form and every error path, with real PEM files made by trustme.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import trustme

from fastproxy.config import (
    CLIENT_CERT_FIELDS,
    LISTENER_TLS_FIELDS,
    UPSTREAM_TLS_FIELDS,
    CertificateFiles,
    Config,
    ConfigError,
    ListenerTls,
    ServerAddress,
    UpstreamTls,
    load_config,
)

SITE_CERT = 'certificates = [{ cert = "certs/site.pem", key = "certs/site.key" }]'


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """certs/ beside the config: a site certificate, a second one (ECDSA), a CA bundle,
    a client certificate, and files that are not what they claim to be."""
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = trustme.CA()
    site = ca.issue_cert("site.example", "*.site.example", "b.example", "*.b.example",
                         "xn--bcher-kva.example")
    site.cert_chain_pems[0].write_to_path(str(certs / "site.pem"))
    site.private_key_pem.write_to_path(str(certs / "site.key"))
    other = trustme.CA(key_type=trustme.KeyType.ECDSA).issue_cert("other.example")
    other.cert_chain_pems[0].write_to_path(str(certs / "other.pem"))
    other.private_key_pem.write_to_path(str(certs / "other.key"))
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    client = ca.issue_cert("client@example")
    client.cert_chain_pems[0].write_to_path(str(certs / "client.pem"))
    client.private_key_pem.write_to_path(str(certs / "client.key"))
    (certs / "junk.pem").write_text("not a certificate\n")
    (certs / "encrypted.key").write_text(
        "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n"
    )
    (certs / "legacy-encrypted.key").write_text(
        "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n"
        "DEK-Info: AES-128-CBC,00\n\nMIIB\n-----END RSA PRIVATE KEY-----\n"
    )
    return tmp_path


def make(
    tls: str | None = SITE_CERT,
    *,
    listener: str = "",
    servers: str = '["127.0.0.1:9000"]',
    upstream: str = "",
    extra: str = "",
) -> str:
    """A whole config: one listener (with [listeners.tls] holding `tls` unless None),
    one upstream "api" (its `servers`, then the `upstream` lines), one route."""
    text = f'[[listeners]]\naddress = "127.0.0.1:8443"\n{listener}\n'
    if tls is not None:
        text += f"[listeners.tls]\n{tls}\n"
    text += f"\n{extra}\n[upstreams.api]\nservers = {servers}\n{upstream}\n"
    return text + '\n[[routes]]\nupstream = "api"\n'


def load(directory: Path, text: str) -> Config:
    path = directory / "proxy.toml"
    path.write_text(text, encoding="utf-8")
    return load_config(path)


def errors(directory: Path, text: str) -> list[str]:
    """The refused config's issues as "key: reason" lines."""
    with pytest.raises(ConfigError) as info:
        load(directory, text)
    assert all(issue.file == str(directory / "proxy.toml") for issue in info.value.errors)
    return [f"{issue.key}: {issue.reason}" for issue in info.value.errors]


def warnings(directory: Path, text: str) -> list[str]:
    prefix = f"{directory / 'proxy.toml'}: "
    config = load(directory, text)
    assert all(w.startswith(prefix) for w in config.warnings)
    return [w.removeprefix(prefix) for w in config.warnings]


def listener_tls(directory: Path, tls: str, **kwargs: Any) -> ListenerTls:
    result = load(directory, make(tls, **kwargs)).listeners[0].tls
    assert result is not None
    return result


def site(directory: Path, *names: str) -> CertificateFiles:
    return CertificateFiles(str(directory / "certs" / "site.pem"),
                            str(directory / "certs" / "site.key"), names)


# --------------------------------------------------------------------------
# Defaults and valid forms


def test_without_tls_keys_nothing_changes(pki: Path) -> None:
    config = load(pki, make(None))
    (listener,) = config.listeners
    assert listener.tls is None and listener.https_redirect is None
    assert config.upstreams["api"].tls == UpstreamTls()
    assert config.upstreams["api"].servers == (ServerAddress("127.0.0.1", 9000, 1),)


def test_minimal_tls_listener_takes_every_default(pki: Path) -> None:
    tls = listener_tls(pki, SITE_CERT)
    assert tls == ListenerTls(certificates=(site(pki),))
    assert (tls.unknown_sni, tls.min_version, tls.ciphers, tls.alpn, tls.client_auth) == (
        "default", "1.2", None, ("h2", "http/1.1"), "none")  # HTTP/2 first, as Caddy does
    assert (tls.client_ca, tls.client_cert_headers, tls.handshake_timeout, tls.hsts) == (
        None, (), 10.0, None)


def test_field_tables_and_dataclasses_agree_on_defaults(pki: Path) -> None:
    """What the docs (generated from the field tables) say is what the objects hold."""
    for specs, cls, instance in (
        (LISTENER_TLS_FIELDS, ListenerTls, ListenerTls(certificates=())),
        (UPSTREAM_TLS_FIELDS, UpstreamTls, UpstreamTls()),
    ):
        names = {f.name for f in dataclasses.fields(cls)}
        for spec in specs:
            assert spec.name in names
            default = None if spec.default is None else spec.convert(spec.default)
            assert getattr(instance, spec.name) == default, spec.name


def test_paths_are_relative_to_the_config_file_not_the_cwd(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    tls = listener_tls(pki, SITE_CERT)
    assert tls.certificates[0].cert == str(pki / "certs" / "site.pem")
    assert os.path.isabs(tls.certificates[0].key)


def test_absolute_and_dotted_paths_are_normalized(pki: Path) -> None:
    cert = pki / "certs" / "site.pem"
    tls = listener_tls(pki, f'certificates = [{{ cert = "{cert}", '
                            'key = "./certs/../certs/site.key" }]')
    assert tls.certificates == (site(pki),)


def test_every_listener_tls_key(pki: Path) -> None:
    body = """\
certificates = [
    { cert = "certs/site.pem", key = "certs/site.key", names = ["B.Example.", "*.b.example"] },
    { cert = "certs/other.pem", key = "certs/other.key" },
]
unknown_sni = "refuse"
min_version = "1.3"
alpn = ["http/1.1"]
client_auth = "required"
client_ca = "certs/ca.pem"
client_cert_headers = { verify = "X-Client-Verify", subject = "X-Client-Subject", \
fingerprint = "X-Client-Cert-Sha256" }
handshake_timeout = "2500ms"
hsts = "max-age=31536000; includeSubDomains; preload"
"""
    tls = listener_tls(pki, body)
    certs = pki / "certs"
    assert tls == ListenerTls(
        certificates=(
            site(pki, "b.example", "*.b.example"),
            CertificateFiles(str(certs / "other.pem"), str(certs / "other.key")),
        ),
        unknown_sni="refuse",
        min_version="1.3",
        alpn=("http/1.1",),
        client_auth="required",
        client_ca=str(certs / "ca.pem"),
        # In the order given, not the order of CLIENT_CERT_FIELDS.
        client_cert_headers=(("verify", "X-Client-Verify"), ("subject", "X-Client-Subject"),
                             ("fingerprint", "X-Client-Cert-Sha256")),
        handshake_timeout=2.5,
        hsts="max-age=31536000; includeSubDomains; preload",
    )


def test_inline_table_is_the_same_as_a_table(pki: Path) -> None:
    inline = make(None, listener=f"tls = {{ {SITE_CERT}, min_version = \"1.3\" }}")
    table = make(f'{SITE_CERT}\nmin_version = "1.3"')
    assert load(pki, inline).listeners == load(pki, table).listeners


def test_certificate_names_are_normalized_like_route_hosts(pki: Path) -> None:
    tls = listener_tls(pki, 'certificates = [{ cert = "certs/site.pem", key = "certs/site.key",'
                            ' names = ["Site.Example.", "*.SITE.example", "Bücher.example"] }]')
    assert tls.certificates[0].names == ("site.example", "*.site.example",
                                         "xn--bcher-kva.example")


def test_every_client_cert_field_can_be_sent(pki: Path) -> None:
    headers = ", ".join(f'{name} = "X-Client-{name}"' for name in CLIENT_CERT_FIELDS)
    tls = listener_tls(pki, f'{SITE_CERT}\nclient_auth = "optional"\nclient_ca = "certs/ca.pem"\n'
                            f"client_cert_headers = {{ {headers} }}")
    assert tls.client_cert_headers == tuple((n, f"X-Client-{n}") for n in CLIENT_CERT_FIELDS)


@pytest.mark.parametrize("value", ["max-age=0", "max-age=63072000", "MAX-AGE=1;preload",
                                   "max-age=31536000 ; includeSubDomains"])
def test_hsts_values(pki: Path, value: str) -> None:
    assert listener_tls(pki, f'{SITE_CERT}\nhsts = "{value}"').hsts == value


@pytest.mark.parametrize(("value", "port"), [("true", 443), ("8443", 8443), ("1", 1),
                                             ("65535", 65535), ("false", None)])
def test_https_redirect(pki: Path, value: str, port: int | None) -> None:
    config = load(pki, make(None, listener=f"https_redirect = {value}"))
    assert config.listeners[0].https_redirect == port


def test_a_tls_listener_beside_a_redirecting_one(pki: Path) -> None:
    extra = '[[listeners]]\naddress = "127.0.0.1:8080"\nhttps_redirect = 8443\n'
    config = load(pki, make(extra=extra))
    assert [(lst.tls is not None, lst.https_redirect) for lst in config.listeners] == [
        (True, None), (False, 8443)]


# --------------------------------------------------------------------------
# Listener errors: certificate files


def test_missing_cert_file_names_the_absolute_path(pki: Path) -> None:
    tls = ('certificates = [{ cert = "certs/site.pem", key = "certs/site.key" },'
           ' { cert = "certs/nope.pem", key = "certs/nope.key" }]')
    assert errors(pki, make(tls)) == [
        f"listeners[0].tls.certificates[1].cert: cannot read {pki}/certs/nope.pem:"
        " No such file or directory",
        f"listeners[0].tls.certificates[1].key: cannot read {pki}/certs/nope.key:"
        " No such file or directory",
    ]


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0,
                    reason="root reads any file")
def test_unreadable_key_file(pki: Path) -> None:
    key = pki / "certs" / "site.key"
    key.chmod(0)
    try:
        assert errors(pki, make()) == [
            f"listeners[0].tls.certificates[0].key: cannot read {key}: Permission denied"]
    finally:
        key.chmod(0o600)


def test_directory_and_special_files_are_refused(pki: Path) -> None:
    tls = 'certificates = [{ cert = "certs", key = "/dev/null" }]'
    assert errors(pki, make(tls)) == [
        f"listeners[0].tls.certificates[0].cert: cannot read {pki}/certs: Is a directory",
        "listeners[0].tls.certificates[0].key: cannot read /dev/null: not a regular file",
    ]


def test_files_that_are_not_pem(pki: Path) -> None:
    # A key where the certificate goes and the other way round, then plain junk.
    tls = ('certificates = [{ cert = "certs/site.key", key = "certs/site.pem" },'
           ' { cert = "certs/junk.pem", key = "certs/junk.pem" }]')
    certs = pki / "certs"
    no_cert = "holds no PEM certificate (no '-----BEGIN CERTIFICATE-----' line)"
    no_key = "holds no PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line)"
    assert errors(pki, make(tls)) == [
        f"listeners[0].tls.certificates[0].cert: {certs}/site.key {no_cert}",
        f"listeners[0].tls.certificates[0].key: {certs}/site.pem {no_key}",
        f"listeners[0].tls.certificates[1].cert: {certs}/junk.pem {no_cert}",
        f"listeners[0].tls.certificates[1].key: {certs}/junk.pem {no_key}",
    ]


@pytest.mark.parametrize("name", ["encrypted.key", "legacy-encrypted.key"])
def test_encrypted_keys_are_refused(pki: Path, name: str) -> None:
    tls = f'certificates = [{{ cert = "certs/site.pem", key = "certs/{name}" }}]'
    (problem,) = errors(pki, make(tls))
    assert problem.startswith(f"listeners[0].tls.certificates[0].key: {pki}/certs/{name}"
                              " is encrypted with a passphrase")


def test_one_file_may_hold_both_certificate_and_key(pki: Path) -> None:
    both = pki / "certs" / "both.pem"
    both.write_text((pki / "certs" / "site.pem").read_text()
                    + (pki / "certs" / "site.key").read_text())
    tls = listener_tls(pki, 'certificates = [{ cert = "certs/both.pem", key = "certs/both.pem" }]')
    assert tls.certificates == (CertificateFiles(str(both), str(both)),)


def test_oversized_file_is_refused(pki: Path) -> None:
    big = pki / "certs" / "big.pem"
    with open(big, "wb") as fh:
        fh.truncate(16 * 1024**2 + 1)
    tls = 'certificates = [{ cert = "certs/big.pem", key = "certs/site.key" }]'
    assert errors(pki, make(tls)) == [
        f"listeners[0].tls.certificates[0].cert: {big} is larger than 16m: not a PEM file"]


@pytest.mark.parametrize(
    ("tls", "problems"),
    [
        ('min_version = "1.2"', ["listeners[0].tls.certificates: missing required key"]),
        ("certificates = []",
         ["listeners[0].tls.certificates: at least one certificate is required"]),
        ('certificates = "certs/site.pem"',
         ["listeners[0].tls.certificates: expected an array of tables like"
          " { cert = \"site.pem\", key = \"site.key\" }, found string 'certs/site.pem'"]),
        ('certificates = ["certs/site.pem"]',
         ["listeners[0].tls.certificates[0]: expected a table like"
          " { cert = \"site.pem\", key = \"site.key\" }, found string 'certs/site.pem'"]),
        ('certificates = [{ cert = "certs/site.pem" }]',
         ["listeners[0].tls.certificates[0].key: missing required key"]),
        ('certificates = [{ key = "certs/site.key", crt = "certs/site.pem" }]',
         ["listeners[0].tls.certificates[0].crt: unknown key; did you mean 'cert'?",
          "listeners[0].tls.certificates[0].cert: missing required key"]),
        ('certificates = [{ cert = "", key = 5 }]',
         ["listeners[0].tls.certificates[0].cert: must not be empty",
          "listeners[0].tls.certificates[0].key: expected a string, found integer 5"]),
    ],
)
def test_certificates_shape_errors(pki: Path, tls: str, problems: list[str]) -> None:
    assert errors(pki, make(tls)) == problems


@pytest.mark.parametrize(
    ("names", "problems"),
    [
        ("[]", ["names: must not be empty: give at least one of host names"]),
        ('"site.example"', ["names: expected an array of host names, found string 'site.example'"]),
        ('["*.*.site.example"]',
         ["names[0]: a wildcard must be a whole leading label, as in \"*.example.com\","
          " found '*.*.site.example'"]),
        ('["a.*.site.example"]',
         ["names[0]: a wildcard must be a whole leading label, as in \"*.example.com\","
          " found 'a.*.site.example'"]),
        ('["ok.example", "10.0.0.1", "[::1]"]',
         ["names[1]: must be a host name: TLS server names (SNI) are never IP addresses,"
          " found '10.0.0.1'",
          "names[2]: must be a host name: TLS server names (SNI) are never IP addresses,"
          " found '[::1]'"]),
        ('["site.example:443"]', ["names[0]: must not include a port, found 'site.example:443'"]),
        ('["bad_name!"]', ["names[0]: invalid host name 'bad_name!'"]),
        ('["A.example", "a.example."]', ["names[1]: duplicate 'a.example.' (already at index 0)"]),
    ],
)
def test_bad_certificate_names(pki: Path, names: str, problems: list[str]) -> None:
    tls = f'certificates = [{{ cert = "certs/site.pem", key = "certs/site.key", names = {names} }}]'
    prefix = "listeners[0].tls.certificates[0]."
    assert errors(pki, make(tls)) == [prefix + p for p in problems]


# --------------------------------------------------------------------------
# Listener errors: other keys


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('unknown_sni = "refused"',
         "unknown_sni: unsupported value 'refused' (supported: default, refuse);"
         " did you mean 'refuse'?"),
        ('min_version = "1.1"',
         'min_version: TLS 1.1 is not supported (deprecated by RFC 8996); use "1.2" or "1.3"'),
        ("min_version = 1.2", 'min_version: expected a string, found float 1.2 (write "1.2")'),
        ('min_version = "TLSv1.3"',
         "min_version: unsupported value 'TLSv1.3' (supported: 1.2, 1.3); did you mean '1.3'?"),
        ('min_version = "1.4"', "min_version: unsupported value '1.4' (supported: 1.2, 1.3)"),
        ('client_auth = "require"',
         "client_auth: unsupported value 'require' (supported: none, optional, required);"
         " did you mean 'required'?"),
        ('alpn = ["h3", "http/1.1"]',
         "alpn[0]: unsupported protocol 'h3' (supported: h2, http/1.1)"),
        ('alpn = ["http/1.0"]',
         "alpn[0]: unsupported protocol 'http/1.0' (supported: h2, http/1.1);"
         " did you mean 'http/1.1'?"),
        ('alpn = ["http/1.1", "http/1.1"]', "alpn[1]: duplicate 'http/1.1' (already at index 0)"),
        ("alpn = []", 'alpn: must not be empty: give at least one of protocol ids like "http/1.1"'),
        ('ciphers = ""', "ciphers: must not be empty (leave the key out for the default suites)"),
        ('ciphers = "ECDHE-RSA-AES128-GCM-SHA256 AES128-SHA"',
         "ciphers: must not contain ' ': write OpenSSL cipher names joined by ':' (with '!',"
         " '+' and '-'), found 'ECDHE-RSA-AES128-GCM-SHA256 AES128-SHA'"),
        ('ciphers = "NO-SUCH-CIPHER:ALSO-NOT"',
         "ciphers: selects no cipher suite OpenSSL knows, found 'NO-SUCH-CIPHER:ALSO-NOT'"),
        ("handshake_timeout = 0", "handshake_timeout: must be greater than 0, found integer 0"),
        ('hsts = "includeSubDomains; max-age=1"',
         'hsts: must start with "max-age=" and a number of seconds, as in "max-age=31536000;'
         " includeSubDomains\", found 'includeSubDomains; max-age=1'"),
        ('hsts = "max-age=abc"',
         'hsts: must start with "max-age=" and a number of seconds, as in "max-age=31536000;'
         " includeSubDomains\", found 'max-age=abc'"),
        ('hsts = "max-age=1\\r\\nSet-Cookie: a=b"',
         "hsts: must hold only visible ASCII characters and spaces, found '\\r'"),
        ('hsts = "max-age=1;\\tpreload"',
         "hsts: must hold only visible ASCII characters and spaces, found '\\t'"),
        ('hsts = ""',
         'hsts: must start with "max-age=" and a number of seconds, as in "max-age=31536000;'
         " includeSubDomains\", found ''"),
        ('certificate = "certs/site.pem"',
         "certificate: unknown key; did you mean 'certificates'?"),
    ],
)
def test_bad_listener_tls_values(pki: Path, line: str, problem: str) -> None:
    assert errors(pki, make(f"{SITE_CERT}\n{line}")) == [f"listeners[0].tls.{problem}"]


def test_tls_must_be_a_table(pki: Path) -> None:
    assert errors(pki, make(None, listener="tls = true")) == [
        'listeners[0].tls: expected a table like { certificates = [{ cert = "site.pem",'
        ' key = "site.key" }] }, found boolean true'
    ]


@pytest.mark.parametrize("auth", ["optional", "required"])
def test_client_auth_needs_client_ca(pki: Path, auth: str) -> None:
    assert errors(pki, make(f'{SITE_CERT}\nclient_auth = "{auth}"')) == [
        f'listeners[0].tls.client_ca: missing: required with client_auth = "{auth}"'
        " (the CA bundle that signs client certificates)"
    ]


def test_client_ca_must_be_a_readable_certificate_bundle(pki: Path) -> None:
    tls = f'{SITE_CERT}\nclient_auth = "required"\nclient_ca = "certs/site.key"'
    assert errors(pki, make(tls)) == [
        f"listeners[0].tls.client_ca: {pki}/certs/site.key holds no PEM certificate"
        " (no '-----BEGIN CERTIFICATE-----' line)"
    ]
    tls = f'{SITE_CERT}\nclient_auth = "required"\nclient_ca = "nope.pem"'
    assert errors(pki, make(tls)) == [
        f"listeners[0].tls.client_ca: cannot read {pki}/nope.pem: No such file or directory"]


def test_client_ca_without_client_auth_is_a_warning(pki: Path) -> None:
    assert warnings(pki, make(f'{SITE_CERT}\nclient_ca = "certs/ca.pem"')) == [
        'listeners[0].tls.client_ca: has no effect with client_auth = "none"']


def test_client_cert_headers_need_client_auth(pki: Path) -> None:
    tls = f'{SITE_CERT}\nclient_cert_headers = {{ subject = "X-Client-Subject" }}'
    assert errors(pki, make(tls)) == [
        'listeners[0].tls.client_cert_headers: only used with client_auth = "optional"'
        ' or "required"'
    ]


@pytest.mark.parametrize(
    ("headers", "problems"),
    [
        ('{ subject = "X Client" }',
         ["subject: expected a header name (a token like \"X-Client-Subject\"),"
          " found string 'X Client'"]),
        ('{ subject = "" }',
         ["subject: expected a header name (a token like \"X-Client-Subject\"), found string ''"]),
        ("{ subject = true }",
         ["subject: expected a header name (a token like \"X-Client-Subject\"),"
          " found boolean true"]),
        ('{ subject = "X-Forwarded-For" }',
         ["subject: 'X-Forwarded-For' is set by the proxy itself"]),
        ('{ subject = "X-Cert", issuer = "x-cert" }',
         ["issuer: header 'x-cert' already carries the subject"]),
        ('{ subjct = "X-Client-Subject" }', ["subjct: unknown key; did you mean 'subject'?"]),
        ('"X-Client-Subject"',
         [": expected a table like { subject = \"X-Client-Subject\" },"
          " found string 'X-Client-Subject'"]),
    ],
)
def test_bad_client_cert_headers(pki: Path, headers: str, problems: list[str]) -> None:
    tls = (f'{SITE_CERT}\nclient_auth = "optional"\nclient_ca = "certs/ca.pem"\n'
           f"client_cert_headers = {headers}")
    prefix = "listeners[0].tls.client_cert_headers"
    assert errors(pki, make(tls)) == [
        prefix + (p if p.startswith(":") else "." + p) for p in problems]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("0", "must be from 1 to 65535, found 0"),
        ("65536", "must be from 1 to 65535, found 65536"),
        ('"443"', "expected a port (1 to 65535) or true (port 443), found string '443'"),
        ("4.43", "expected a port (1 to 65535) or true (port 443), found float 4.43"),
    ],
)
def test_bad_https_redirect(pki: Path, value: str, problem: str) -> None:
    assert errors(pki, make(None, listener=f"https_redirect = {value}")) == [
        f"listeners[0].https_redirect: {problem}"]


def test_https_redirect_on_a_tls_listener_is_refused(pki: Path) -> None:
    assert errors(pki, make(listener="https_redirect = true")) == [
        "listeners[0].https_redirect: a TLS listener is already https: put https_redirect on"
        " a plain listener"
    ]
    # false is "no redirect", which a TLS listener may say.
    assert load(pki, make(listener="https_redirect = false")).listeners[0].https_redirect is None


def test_cipher_warnings(pki: Path) -> None:
    text = make(f'{SITE_CERT}\nciphers = "ECDHE-RSA-AES128-GCM-SHA256:AES128-SHA"')
    assert warnings(pki, text) == [
        "listeners[0].tls.ciphers: allows suites without forward secrecy or without AEAD:"
        " AES128-SHA"
    ]
    assert listener_tls(pki, f'{SITE_CERT}\nciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"').ciphers == (
        "ECDHE+AESGCM:ECDHE+CHACHA20")
    assert warnings(pki, make(f'{SITE_CERT}\nciphers = "ECDHE+AESGCM:ECDHE+CHACHA20"')) == []
    text = make(f'{SITE_CERT}\nmin_version = "1.3"\nciphers = "ECDHE+AESGCM"')
    assert warnings(pki, text) == [
        'listeners[0].tls.ciphers: has no effect with min_version = "1.3"'
        " (TLS 1.3 suites are always the AEAD ones)"
    ]


# --------------------------------------------------------------------------
# fastproxy.tls.check_certificates: full loading, when the module provides it


def fake_tls_module(monkeypatch: pytest.MonkeyPatch, check: Any) -> list[ListenerTls]:
    calls: list[ListenerTls] = []

    def check_certificates(tls: ListenerTls) -> Any:
        calls.append(tls)
        return check(tls)

    monkeypatch.setitem(sys.modules, "fastproxy.tls",
                        types.SimpleNamespace(check_certificates=check_certificates))
    return calls


def test_check_certificates_problems_are_reported_under_the_listener(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_tls_module(monkeypatch, lambda tls: [
        ("certificates[0].key", "does not match the certificate"),
        ("client_ca", "no CA certificate could be loaded")])
    extra = '[[listeners]]\naddress = "127.0.0.1:8080"\n'
    assert errors(pki, make(extra=extra)) == [
        "listeners[0].tls.certificates[0].key: does not match the certificate",
        "listeners[0].tls.client_ca: no CA certificate could be loaded",
    ]
    assert calls == [ListenerTls(certificates=(site(pki),))]  # once, with the parsed object


def test_check_certificates_is_not_called_when_the_text_checks_fail(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = fake_tls_module(monkeypatch, lambda tls: [])
    tls = 'certificates = [{ cert = "certs/junk.pem", key = "certs/site.key" }]'
    assert len(errors(pki, make(tls))) == 1
    assert calls == []


def test_check_certificates_errors_become_config_errors(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def check(tls: ListenerTls) -> Any:
        raise OSError("[SSL] PEM lib")

    fake_tls_module(monkeypatch, check)
    assert errors(pki, make()) == ["listeners[0].tls.certificates: cannot load: [SSL] PEM lib"]


@pytest.mark.parametrize("module", [None, types.SimpleNamespace()])
def test_without_check_certificates_the_text_checks_suffice(
    pki: Path, monkeypatch: pytest.MonkeyPatch, module: object
) -> None:
    monkeypatch.setitem(sys.modules, "fastproxy.tls", module)  # None: ImportError
    assert load(pki, make()).listeners[0].tls == ListenerTls(certificates=(site(pki),))


# --------------------------------------------------------------------------
# Upstream servers: http:// and https://


@pytest.mark.parametrize(
    ("address", "server"),
    [
        ('"https://api.example"', ("api.example", 443, True)),
        ('"HTTPS://API.Example:8443/"', ("api.example", 8443, True)),
        ('"http://api.example"', ("api.example", 80, False)),
        ('"http://10.0.0.1:8080"', ("10.0.0.1", 8080, False)),
        ('"https://[::1]"', ("::1", 443, True)),
        ('"https://[::1]:9443"', ("::1", 9443, True)),
        ('"api.example:9000"', ("api.example", 9000, False)),
        ('{ address = "https://api.example:8443", weight = 2 }', ("api.example", 8443, True)),
    ],
)
def test_server_schemes(pki: Path, address: str, server: tuple[str, int, bool]) -> None:
    (parsed,) = load(pki, make(None, servers=f"[{address}]")).upstreams["api"].servers
    assert (parsed.host, parsed.port, parsed.tls) == server
    assert parsed.weight == (2 if "weight" in address else 1)


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("ftp://api.example", "unsupported scheme 'ftp://' (use \"http://\", \"https://\" or"
         " \"h2c://\") in"
                              " 'ftp://api.example'"),
        ("https://api.example/v1", "must be a scheme and host[:port] only (no path, query or"
                                   " user), found 'https://api.example/v1'"),
        ("https://user@api.example", "must be a scheme and host[:port] only (no path, query or"
                                     " user), found 'https://user@api.example'"),
        ("https://", "missing host in 'https://'"),
        ("https://api.example:0", "port must be a number from 1 to 65535, found '0'"),
        ("https://::1", 'an IPv6 address must be in brackets, e.g. "[::1]:1"'),
        ("api.example", "missing port in 'api.example' (expected \"host:port\")"),
    ],
)
def test_bad_server_schemes(pki: Path, address: str, problem: str) -> None:
    assert errors(pki, make(None, servers=f'["{address}"]')) == [
        f"upstreams.api.servers[0]: {problem}"]


@pytest.mark.parametrize(
    ("servers", "hint"),
    [
        ('["https://a.example:443", "a.example:443"]',
         "the same host and port; a server is either https:// or not"),
        ('["https://a.example", "https://A.example:443"]', "use weight instead"),
        ('["http://a.example", "a.example:80"]', "use weight instead"),
    ],
)
def test_duplicate_servers_across_schemes(pki: Path, servers: str, hint: str) -> None:
    (problem,) = errors(pki, make(None, servers=servers))
    assert problem.startswith("upstreams.api.servers[1]: duplicate server ")
    assert problem.endswith(f"(already upstreams.api.servers[0]; {hint})")


# --------------------------------------------------------------------------
# [upstreams.NAME.tls]


def test_upstream_tls_every_key(pki: Path) -> None:
    upstream = """\
[upstreams.api.tls]
verify = true
ca = "certs/ca.pem"
sni = "API.Internal."
cert = "certs/client.pem"
key = "certs/client.key"
min_version = "1.3"
"""
    config = load(pki, make(None, servers='["https://10.0.0.1", "http://10.0.0.2"]',
                            upstream=upstream))
    certs = pki / "certs"
    assert config.upstreams["api"].tls == UpstreamTls(
        verify=True, ca=str(certs / "ca.pem"), sni="api.internal",
        cert=str(certs / "client.pem"), key=str(certs / "client.key"), min_version="1.3")
    assert config.warnings == ()


def test_https_servers_without_a_tls_table_verify_with_system_cas(pki: Path) -> None:
    config = load(pki, make(None, servers='["https://api.example"]'))
    assert config.upstreams["api"].tls == UpstreamTls(verify=True, ca=None)


def test_upstream_tls_only_with_https_servers(pki: Path) -> None:
    text = make(None, servers='["http://a.example", "b.example:80"]',
                upstream="tls = { verify = true }")
    assert errors(pki, text) == [
        'upstreams.api.tls: only used with https:// servers (write the addresses as'
        ' "https://host:port")'
    ]


def test_upstream_tls_with_a_bad_server_reports_only_the_server(pki: Path) -> None:
    text = make(None, servers='["https://a.example", "b.example"]',
                upstream="tls = { verify = true }")
    assert errors(pki, text) == [
        "upstreams.api.servers[1]: missing port in 'b.example' (expected \"host:port\")"]


def test_verify_false_is_a_warning(pki: Path) -> None:
    text = make(None, servers='["https://a.example"]', upstream="tls = { verify = false }")
    assert warnings(pki, text) == [
        "upstreams.api.tls.verify: certificates of https:// servers are not verified: anyone"
        " on the path can impersonate them"
    ]
    text = make(None, servers='["https://a.example"]',
                upstream='tls = { verify = false, ca = "certs/ca.pem" }')
    assert warnings(pki, text)[1:] == ["upstreams.api.tls.ca: has no effect with verify = false"]


@pytest.mark.parametrize(
    ("table", "problems"),
    [
        ('{ cert = "certs/client.pem" }',
         ["key: missing: cert and key go together (the client certificate and its key)"]),
        ('{ key = "certs/client.key" }',
         ["cert: missing: key and cert go together (the client certificate and its key)"]),
        ('{ ca = "certs/junk.pem" }',
         ["ca: {certs}/junk.pem holds no PEM certificate (no '-----BEGIN CERTIFICATE-----'"
          " line)"]),
        ('{ ca = "certs/missing.pem" }',
         ["ca: cannot read {certs}/missing.pem: No such file or directory"]),
        ('{ cert = "certs/client.key", key = "certs/client.pem" }',
         ["cert: {certs}/client.key holds no PEM certificate (no '-----BEGIN CERTIFICATE-----'"
          " line)",
          "key: {certs}/client.pem holds no PEM private key (no '-----BEGIN ... PRIVATE"
          " KEY-----' line)"]),
        ('{ sni = "10.0.0.1" }',
         ["sni: must be a host name: TLS server names (SNI) are never IP addresses,"
          " found '10.0.0.1'"]),
        ('{ sni = "*.example.com" }',
         ["sni: must be a single host name, not a wildcard, found '*.example.com'"]),
        ('{ verify = "no" }', ["verify: expected a boolean (true or false), found string 'no'"]),
        ('{ min_version = "1.0" }',
         ['min_version: TLS 1.0 is not supported (deprecated by RFC 8996); use "1.2" or "1.3"']),
        ('{ verfy = false }', ["verfy: unknown key; did you mean 'verify'?"]),
        ("true", [': expected a table like { verify = true, ca = "ca.pem" }, found boolean true']),
    ],
)
def test_bad_upstream_tls(pki: Path, table: str, problems: list[str]) -> None:
    text = make(None, servers='["https://a.example"]', upstream=f"tls = {table}")
    certs = pki / "certs"
    assert errors(pki, text) == [
        "upstreams.api.tls" + ("" if p.startswith(":") else ".") + p.replace("{certs}", str(certs))
        for p in problems
    ]


# --------------------------------------------------------------------------
# Everything at once


def test_all_tls_problems_are_reported_together(pki: Path) -> None:
    text = make(
        'certificates = [{ cert = "certs/nope.pem", key = "certs/site.key",'
        ' names = ["1.2.3.4"] }]\n'
        'min_version = "1.1"\nclient_auth = "required"\nhsts = "preload"',
        listener="https_redirect = 8443",
        servers='["https://a.example:443", "a.example:443"]',
        upstream='tls = { cert = "certs/client.pem" }',
    )
    assert [problem.split(":", 1)[0] for problem in errors(pki, text)] == [
        "listeners[0].tls.certificates[0].cert",
        "listeners[0].tls.certificates[0].names[0]",
        "listeners[0].tls.min_version",
        "listeners[0].tls.hsts",
        "listeners[0].tls.client_ca",
        "listeners[0].https_redirect",
        "upstreams.api.servers[1]",
        "upstreams.api.tls.key",
    ]


def test_an_expired_certificate_is_a_warning_not_an_error(pki: Path) -> None:
    import datetime

    old = trustme.CA().issue_cert(
        "old.example",
        not_before=datetime.datetime(2023, 1, 1, tzinfo=datetime.UTC),
        not_after=datetime.datetime(2024, 1, 1, 12, tzinfo=datetime.UTC),
    )
    old.cert_chain_pems[0].write_to_path(str(pki / "certs" / "old.pem"))
    old.private_key_pem.write_to_path(str(pki / "certs" / "old.key"))
    config = load(pki, make('certificates = [{ cert = "certs/old.pem", key = "certs/old.key" }]'))
    assert any("listeners[0].tls.certificates[0].cert" in w and "expired on 2024-01-01" in w
               for w in config.warnings)


def test_h2c_is_for_plain_listeners(pki: Path) -> None:
    assert errors(pki, make(listener="h2c = true")) == [
        'listeners[0].h2c: is for plain listeners; a TLS listener offers HTTP/2 by ALPN'
        ' ([listeners.tls] alpn, "h2" by default)']
    assert load(pki, make(listener="h2c = false")).listeners[0].h2c is False
    assert load(pki, make(f'{SITE_CERT}\nalpn = ["http/1.1"]')).listeners[0].tls.alpn == (
        "http/1.1",)
