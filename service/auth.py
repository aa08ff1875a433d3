"""API keys: who may call the service, for what, and how often. Off unless keys are configured.

A key is ``fsk_<id>_<secret>``: the id (8 hex digits) names the key and is not secret; the secret is 32 random
bytes. The service keeps only a line per key, never the key itself::

    id=3f9c01ab scopes=inference,tasks rate=50/s burst=50 salt=<hex> sha256=<hex>

made by ``python -m service.auth new-key --scopes inference,tasks --rate 50/s`` (it prints the key once, and
the line). The lines come from ``FASHION_API_KEYS_FILE`` or ``FASHION_API_KEYS`` (service.config).

Scopes, by route (:func:`required_scope`): ``inference`` (classify, v2 inference and metadata, parity,
/model_info, and any route not named below), ``tasks`` (the dataset task routes), ``admin`` (/metrics, and the
model repository routes under ``/v2/repository/``, which exist only when a key with this scope is configured:
service.repository). Open to
all: the probes, the OpenAPI page and schema, the web page's files.

A request carries its key as ``Authorization: Bearer <key>`` (what BentoML's ``SyncHTTPClient(url, token=...)``
sends) or ``X-API-Key: <key>``; never in the URL, where access logs and proxies would keep it. Admission control
(service.admission) asks :meth:`KeyRing.check` before anything else and answers its refusal:

* no key, or a key that is not configured: 401 with ``WWW-Authenticate: Bearer``;
* a key without the route's scope: 403;
* a key over its rate (a token bucket per key, :class:`TokenBucket`): 429 with ``Retry-After``.

Each refusal's message names the scope or the rate, never the key or its hash.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import math
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

SCOPES = ("inference", "tasks", "admin")
KEY_PREFIX = "fsk"
# Where admission leaves the caller's key id for the routes behind it (the task routes' owner).
KEY_STATE = "fashion_key_id"
# Request headers that may carry a key; the task routes drop them before BentoML stores a task's request.
KEY_HEADERS = (b"authorization", b"x-api-key")
OPEN_PATHS = frozenset({"/", "/livez", "/readyz", "/healthz", "/v2/health/live", "/v2/health/ready", "/docs.json",
                        "/schema.json", "/ui"})
OPEN_PREFIXES = ("/ui/", "/static_content/")
SCOPE_OF_PATH = {"/metrics": "admin"}
# The model repository routes load, promote and unload model versions (service.repository).
SCOPE_PREFIXES = (("/classify_dataset/", "tasks"), ("/v2/repository/", "admin"))
PER_UNIT = {"s": 1.0, "min": 60.0, "h": 3600.0}
CHALLENGE = b'Bearer realm="fashion-serve"'


@dataclass(frozen=True)
class Rate:
    """A token bucket's size: ``per_second`` tokens added each second, at most ``burst`` kept; ``spec`` as written
    (``50/s``, ``600/min``)."""

    per_second: float
    burst: int
    spec: str

    def __str__(self) -> str:
        return f"rate={self.spec} burst={self.burst}"


@dataclass(frozen=True)
class KeyEntry:
    """One configured key: its id, scopes, rate (``None``: no limit), and the salted hash of its secret."""

    key_id: str
    scopes: frozenset[str]
    rate: Rate | None
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def line(self) -> str:
        """The configuration line for this key (no secret in it)."""
        rate = f" {self.rate}" if self.rate else ""
        return (f"id={self.key_id} scopes={','.join(s for s in SCOPES if s in self.scopes)}{rate} "
                f"salt={self.salt.hex()} sha256={self.digest.hex()}")


@dataclass(frozen=True)
class Refusal:
    """What admission answers instead of the route: status, message, extra headers."""

    status: int
    message: str
    headers: tuple[tuple[bytes, bytes], ...] = ()


def hash_secret(salt: bytes, secret: str) -> bytes:
    """HMAC-SHA256 of the secret under the key's salt.

    One fast hash is enough here, unlike for passwords: the secret is 32 random bytes, so no dictionary or
    brute-force search can reach it, and a slow hash (bcrypt, scrypt) would cost every request its time. The salt
    keeps two stores' lines for the same key from matching.
    """
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def parse_rate(text: str) -> float:
    """Requests per second from ``50/s``, ``600/min`` or ``1000/h``."""
    count, _, unit = text.partition("/")
    if unit not in PER_UNIT:
        raise ValueError(f"rate must be <count>/s, /min or /h, not {text!r}")
    per_second = float(count) / PER_UNIT[unit]
    if not per_second > 0 or math.isinf(per_second):
        raise ValueError(f"rate must be positive, not {text!r}")
    return per_second


def parse_key_line(line: str) -> KeyEntry:
    """A :class:`KeyEntry` from one configuration line; ValueError naming what is wrong (never the hash)."""
    fields = dict(item.partition("=")[::2] for item in line.split())
    unknown = set(fields) - {"id", "scopes", "rate", "burst", "salt", "sha256"}
    missing = {"id", "scopes", "salt", "sha256"} - set(fields)
    if unknown or missing:
        raise ValueError(f"API key line: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    scopes = frozenset(fields["scopes"].split(","))
    if not scopes or not scopes <= set(SCOPES):
        raise ValueError(f"API key {fields['id']}: scopes must be among {list(SCOPES)}, not {fields['scopes']!r}")
    rate = None
    if "rate" in fields:
        per_second = parse_rate(fields["rate"])
        rate = Rate(per_second, int(fields.get("burst") or max(1, math.ceil(per_second))), fields["rate"])
        if rate.burst < 1:
            raise ValueError(f"API key {fields['id']}: burst must be at least 1")
    salt, digest = bytes.fromhex(fields["salt"]), bytes.fromhex(fields["sha256"])
    if len(fields["id"]) != 8 or len(salt) < 16 or len(digest) != 32:
        raise ValueError(f"API key {fields['id'][:8]!r}: id must be 8 characters, salt 16+ bytes, sha256 32 bytes")
    return KeyEntry(fields["id"], scopes, rate, salt, digest)


def parse_keys(text: str) -> tuple[KeyEntry, ...]:
    """Every key line in ``text`` (blank lines and ``#`` comments skipped); ids must be unique."""
    entries = tuple(parse_key_line(line) for line in text.splitlines() if line.strip() and not
                    line.lstrip().startswith("#"))
    ids = [entry.key_id for entry in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("API key ids must be unique")
    return entries


def new_key(scopes: Iterable[str], rate: str | None = None, burst: int | None = None) -> tuple[str, KeyEntry]:
    """A fresh key and its configuration entry."""
    key_id, secret, salt = secrets.token_hex(4), secrets.token_hex(32), secrets.token_bytes(16)
    limit = Rate(parse_rate(rate), burst or max(1, math.ceil(parse_rate(rate))), rate) if rate else None
    entry = KeyEntry(key_id, frozenset(scopes), limit, salt, hash_secret(salt, secret))
    parse_key_line(entry.line())  # the same checks as the service's
    return f"{KEY_PREFIX}_{key_id}_{secret}", entry


def required_scope(path: str) -> str | None:
    """The scope a route needs; ``None`` for the open ones (probes, OpenAPI page, web page files)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path in SCOPE_OF_PATH:
        return SCOPE_OF_PATH[path]
    return next((scope for prefix, scope in SCOPE_PREFIXES if path.startswith(prefix)), "inference")


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key from ``Authorization: Bearer`` or ``X-API-Key``, if either is there."""
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif lowered == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
    return None


class TokenBucket:
    """Up to ``rate.burst`` requests at once, then ``rate.per_second`` a second."""

    def __init__(self, rate: Rate, clock: Callable[[], float]) -> None:
        self.rate, self.clock = rate, clock
        self.tokens = float(rate.burst)
        self.updated = clock()

    def take(self) -> float:
        """Take a token: 0.0 when one was there, else the seconds until one will be (nothing taken)."""
        now = self.clock()
        self.tokens = min(self.rate.burst, self.tokens + (now - self.updated) * self.rate.per_second)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate.per_second


class KeyRing:
    """The configured keys and one token bucket each; built once per worker (service.serving.Serving)."""

    def __init__(self, entries: Iterable[KeyEntry], clock: Callable[[], float] = time.monotonic) -> None:
        self.entries = {entry.key_id: entry for entry in entries}
        self.buckets = {key_id: TokenBucket(entry.rate, clock) for key_id, entry in self.entries.items()
                        if entry.rate}
        # Compared against when the id is unknown, so that a wrong id costs the same hash as a wrong secret.
        self.decoy = KeyEntry("00000000", frozenset(), None, secrets.token_bytes(16), secrets.token_bytes(32))

    def identify(self, key: str | None) -> KeyEntry | None:
        """The entry whose hash the key's secret matches (compared in constant time); ``None`` otherwise."""
        prefix, _, rest = (key or "").partition("_")
        key_id, _, secret = rest.partition("_")
        entry = self.entries.get(key_id)
        candidate = entry or self.decoy
        matches = hmac.compare_digest(hash_secret(candidate.salt, secret), candidate.digest)
        return entry if matches and entry is not None and prefix == KEY_PREFIX else None

    def check(self, scope: dict[str, Any]) -> Refusal | None:
        """``None`` to let the request in (its key id then on the request's state), else the refusal."""
        needed = required_scope(scope["path"])
        if needed is None:
            return None
        key = presented_key(scope.get("headers", ()))
        entry = self.identify(key)
        if entry is None:
            challenge = CHALLENGE + (b', error="invalid_token"' if key else b"")
            return Refusal(401, "a valid API key is required: send Authorization: Bearer <key> or X-API-Key: <key>"
                           if key is None else "the API key is not valid", ((b"www-authenticate", challenge),))
        if needed not in entry.scopes:
            return Refusal(403, f"this API key lacks the {needed!r} scope this route needs",
                           ((b"www-authenticate", CHALLENGE + f', error="insufficient_scope", scope="{needed}"'
                             .encode()),))
        wait = self.buckets[entry.key_id].take() if entry.key_id in self.buckets else 0.0
        if wait:
            return Refusal(429, f"this API key is over its rate ({entry.rate}); retry after the Retry-After seconds",
                           ((b"retry-after", str(max(1, math.ceil(wait))).encode()),))
        scope.setdefault("state", {})[KEY_STATE] = entry.key_id
        return None


def key_id_of(scope: dict[str, Any]) -> str | None:
    """The id of the key that admission let this request in with; ``None`` when keys are off."""
    return (scope.get("state") or {}).get(KEY_STATE)


def without_key_headers(scope: dict[str, Any]) -> dict[str, Any]:
    """``scope`` minus the headers that carry a key (BentoML stores a task's request headers for a day)."""
    return {**scope, "headers": [(n, v) for n, v in scope.get("headers", ()) if n.lower() not in KEY_HEADERS]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.auth", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("new-key", help="make a key; print it (once) and its configuration line")
    make.add_argument("--scopes", default="inference", help=f"comma list from {','.join(SCOPES)} (default inference)")
    make.add_argument("--rate", default=None, help="requests per second, minute or hour: 50/s, 600/min "
                                                   "(default: no limit)")
    make.add_argument("--burst", type=int, default=None, help="requests at once (default: one second's rate)")
    args = parser.parse_args(argv)
    try:
        key, entry = new_key([s.strip() for s in args.scopes.split(",") if s.strip()], args.rate, args.burst)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"key (give it to the client; it is not stored anywhere): {key}", file=sys.stderr)
    print(entry.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
