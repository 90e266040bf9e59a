"""HTTP Basic authentication for routes (RFC 7617), with hashed passwords.

Passwords are stored as PBKDF2-HMAC-SHA256 hashes, written
``pbkdf2_sha256$ITERATIONS$SALT$HASH`` (salt and hash in unpadded base64;
`fastproxy hash-password` makes them). Checking one costs tens of
milliseconds on purpose, so it never runs on the event loop: the worker hands
it to a thread (hashlib releases the GIL while it hashes) and the request waits.
A credential that was checked is remembered (by a SHA-256 of the header value,
never the password) in a small LRU, so a logged-in client pays once, and so does
a client repeating a wrong password. Comparisons are constant-time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict

SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 200_000
MIN_ITERATIONS = 10_000
CACHE_SIZE = 4096


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS,
                  salt: bytes | None = None) -> str:
    """A stored form of `password` for `basic_auth.users`."""
    salt = salt if salt is not None else os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of a stored hash; ValueError saying what is wrong."""
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError(f"expected a hash like {SCHEME}$ITERATIONS$SALT$HASH "
                         "(make one with `fastproxy hash-password`)")
    try:
        iterations = int(parts[1])
        salt, digest = _unb64(parts[2]), _unb64(parts[3])
    except (ValueError, binascii.Error):
        raise ValueError("the iterations, salt or hash of the hash is malformed") from None
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"at least {MIN_ITERATIONS} iterations are needed, found {iterations}")
    if len(salt) < 8 or len(digest) != 32:
        raise ValueError("the salt must have at least 8 bytes and the hash 32")
    return iterations, salt, digest


def credentials(header: bytes | None) -> tuple[str, str] | None:
    """(user, password) of an "Authorization: Basic ..." value, or None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


class BasicAuth:
    """One route's users. `cached(header)` answers at once when it can (True/False),
    else None: then `verify(header)` (slow, for a thread) decides."""

    def __init__(self, realm: str, users: dict[str, str]) -> None:
        self.realm = realm
        self.users = {user: parse_hash(stored) for user, stored in users.items()}
        self.challenge = (f'WWW-Authenticate: Basic realm="{realm}", charset="UTF-8"\r\n'
                          .encode())
        self._seen: OrderedDict[bytes, bool] = OrderedDict()
        # A stand-in for unknown users, so that they cost the same as known ones.
        self._decoy = (DEFAULT_ITERATIONS, b"fastproxy-decoy!", bytes(32))

    def cached(self, header: bytes | None) -> bool | None:
        if credentials(header) is None:
            return False
        assert header is not None
        key = hashlib.sha256(header).digest()
        verdict = self._seen.get(key)
        if verdict is not None:
            self._seen.move_to_end(key)
        return verdict

    def verify(self, header: bytes) -> bool:
        """Check the password (PBKDF2: slow by design; call it off the loop)."""
        pair = credentials(header)
        if pair is None:
            return False
        user, password = pair
        iterations, salt, digest = self.users.get(user, self._decoy)
        got = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
        return hmac.compare_digest(got, digest) and user in self.users

    def remember(self, header: bytes, verdict: bool) -> None:
        """Record a verdict (on the loop: the LRU is not thread-safe)."""
        key = hashlib.sha256(header).digest()
        self._seen[key] = verdict
        self._seen.move_to_end(key)
        while len(self._seen) > CACHE_SIZE:
            self._seen.popitem(last=False)
