"""API tokens of ``fuseline server``: created and revoked from the CLI, verified on every request.

A token reads ``flt_<id>_<secret>``. The prefix says what it is (to a user reading a config
file, to secret scanners); the id, 12 hex digits, is public and finds the token's row
without a scan; the secret, 43 url-safe characters (256 bits from :mod:`secrets`), is what
nobody can guess. Only a salted scrypt hash of the whole token is stored, so whoever reads
the table learns no token and cannot try guesses quickly.

scrypt is slow on purpose, far too slow to run on every request. A :class:`TokenStore`
therefore keeps a snapshot of the live tokens' rows, read again once it is ``refresh_seconds``
old (so a revoke by any process takes effect everywhere within that) or when a request brings
an id it lacks (so a token just created works at once), and remembers per token id the SHA-256
of the token that passed scrypt: each token costs one scrypt per process, every later request
one SHA-256 and a constant-time comparison.

Tokens are never logged, and no message here ever contains one.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Row

from ..broker.sql.queries.tokens import for_dialect
from ..broker.sql.rows import aware
from ..errors import DatabaseError, TokenError, UnknownToken

if TYPE_CHECKING:
    from ..broker.sql import SqlBroker

logger = logging.getLogger(__name__)

PREFIX = "flt_"
_TOKEN = re.compile(r"flt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
#: Longer text is refused before the pattern looks at it (every token is 60 characters).
MAX_TOKEN_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
NAME_LENGTH = 100

#: scrypt's cost: 16 MiB and some 50 ms per hash, once per token per process.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
SALT_BYTES = 16
HASH_BYTES = 32

#: An id missing from the snapshot reads the tokens again (another process may have created it a
#: moment ago), unless they were read this recently: unknown ids cost at most 20 reads a second.
MISS_REREAD_SECONDS = 0.05
#: While the database cannot be read, one warning per this many seconds.
WARN_EVERY_SECONDS = 10.0

#: The row of ``fuseline_server_secrets`` the dashboard signs its cookies with.
SESSION_ROW = "session"
SESSION_SECRET_BYTES = 32


class Role(str, Enum):
    """What a token may do; the server maps each request to the roles that may make it."""

    #: The worker API only: register, claim, heartbeat, report.
    WORKER = "worker"
    #: Read-only: instances, steps, workers, schedules, the dashboard.
    VIEWER = "viewer"
    #: Everything: reads, submit, cancel, retry, repair, signal, and the worker API.
    OPERATOR = "operator"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def of(cls, value: Role | str) -> Role:
        """The role named ``value``; TokenError for any other name."""
        try:
            return cls(value)
        except ValueError:
            choices = ", ".join(role.value for role in cls)
            raise TokenError(f"unknown role {value!r}: choose one of {choices}") from None


@dataclass(frozen=True)
class Identity:
    """Who a verified token belongs to: its name (for logs and audits) and its role."""

    name: str
    role: Role


@dataclass(frozen=True)
class TokenInfo:
    """A token as ``fuseline tokens list`` shows it: never the token, nor its hash."""

    name: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class _Live:
    """A live token's row, as verifying needs it."""

    identity: Identity
    salt: bytes
    hash: bytes


def new_token() -> tuple[str, str]:
    """A new token and its id."""
    token_id = secrets.token_hex(6)
    return token_id, f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"


def token_id_of(token: object) -> str | None:
    """The id of a well-formed token; None for anything else (no row is read for it)."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _TOKEN.fullmatch(token)
    return match.group(1) if match else None


def check_name(name: str) -> str:
    """A token name: 1 to 100 letters, digits, dots, underscores and dashes (safe in any log)."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise TokenError(
            f"token name {name!r} is not 1 to {NAME_LENGTH} letters, digits, '.', '_' or '-' "
            "(e.g. ci-deploy or worker.eu-1)"
        )
    return name


class TokenStore:
    """The tokens in the broker's database: create, list and revoke them, verify requests.

    ``verify`` may be called from any number of threads at once. Everything else is one short
    transaction inside the broker's connection budget; constructing a store reads nothing.
    """

    def __init__(self, broker: SqlBroker, *, refresh_seconds: float = 1.0) -> None:
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be > 0, not {refresh_seconds}")
        self._db = broker.db
        self._queries = for_dialect(self._db.dialect_name)
        self.refresh_seconds = float(refresh_seconds)
        #: The live tokens by id (None until first read); when the last read began, and how many
        #: tokens this store had created or revoked by then (a change of its own: read again).
        self._live: dict[str, _Live] | None = None
        self._read_at = -math.inf
        self._changes = 0
        self._read_changes = 0
        self._warned_at = -math.inf
        self._reading = threading.Lock()
        #: Guards the two dicts below: per token id, (its stored hash, the SHA-256 of the token
        #: that passed scrypt against it), and the lock that makes that scrypt run once.
        self._lock = threading.Lock()
        self._passed: dict[str, tuple[bytes, bytes]] = {}
        self._checking: dict[str, threading.Lock] = {}
        self._secret: bytes | None = None
        self._secret_lock = threading.Lock()

    # -- the CLI's side ---------------------------------------------------------------------------

    def create(self, name: str, role: Role | str) -> str:
        """Store a new token; the token itself, which nothing can show again."""
        check_name(name)
        role = Role.of(role)
        for _ in range(3):  # a new id is taken once in 2**48 tokens: draw another
            token_id, token = new_token()
            if self._insert(token_id, token, name, role):
                self._changed()
                return token
        raise TokenError("could not draw an unused token id three times in a row; try again")

    def _insert(self, token_id: str, token: str, name: str, role: Role) -> bool:
        """Store the token's row; False when its id is taken, TokenError when its name is."""
        salt = secrets.token_bytes(SALT_BYTES)
        digest = self.slow_hash(token, salt)  # before the transaction: it holds no lock this long
        values = {"id": token_id, "name": name, "role": role.value, "salt": salt.hex(), "hash": digest.hex()}
        with self._db.transaction() as conn:
            if conn.execute(self._queries.token_insert, values).first() is not None:
                return True
            holder = conn.execute(self._queries.token_by_name, {"p_name": name}).first()
            if holder is not None:
                raise self._name_taken(conn, holder)
            return False

    def list(self) -> list[TokenInfo]:
        """Every token ever created, revoked ones too, by name."""
        with self._db.transaction() as conn:
            return [_info(row) for row in conn.execute(self._queries.tokens_all)]

    def revoke(self, name: str) -> TokenInfo:
        """Revoke a token (running servers refuse it within ``refresh_seconds``); a token revoked
        already stays as it was. UnknownToken when no token has this name."""
        with self._db.transaction() as conn:
            row = conn.execute(self._queries.token_revoke, {"p_name": name}).first()
            if row is None:
                row = conn.execute(self._queries.token_by_name, {"p_name": name}).first()
            if row is None:
                raise UnknownToken(name)
        self._changed()
        return _info(row)

    def _name_taken(self, conn: Connection, holder: Row) -> TokenError:
        name = holder.name
        names = set(conn.execute(self._queries.token_names).scalars())
        stem = name[: NAME_LENGTH - 6]
        free = next(f"{stem}-{n}" for n in itertools.count(2) if f"{stem}-{n}" not in names)
        if holder.revoked_at is not None:
            whose = "a revoked token, and names are never reused (so a name in a log means one token)"
        else:
            whose = "another token"
        return TokenError(f"the token name {name!r} is taken by {whose}; choose another, e.g. {free!r}")

    # -- the server's side ------------------------------------------------------------------------

    def verify(self, token: str | None) -> Identity | None:
        """Whose token this is; None when it is missing, malformed, unknown or revoked.

        Cheap after the first request with a token. Raises DatabaseError only while the tokens
        could never be read at all (the server answers 503 rather than refusing every token);
        once read, a database that goes away leaves the last snapshot in use.
        """
        token_id = token_id_of(token)
        if token_id is None:
            return None
        assert isinstance(token, str)
        live = self._snapshot().get(token_id) or self._reread().get(token_id)
        if live is None:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        if self._passed_before(token_id, live, digest):
            return live.identity
        with self._lock_of(token_id):  # one scrypt per token, however many requests bring it at once
            if self._passed_before(token_id, live, digest):
                return live.identity
            if not hmac.compare_digest(self.slow_hash(token, live.salt), live.hash):
                return None
            with self._lock:
                self._passed[token_id] = (live.hash, digest)
        return live.identity

    def session_secret(self) -> bytes:
        """The secret every server process on this database signs session cookies and CSRF tokens
        with: created once (the first process to ask wins any race), kept across restarts."""
        with self._secret_lock:
            if self._secret is None:
                with self._db.transaction() as conn:
                    fresh = {"name": SESSION_ROW, "secret": secrets.token_hex(SESSION_SECRET_BYTES)}
                    conn.execute(self._queries.secret_insert, fresh)
                    stored = conn.execute(self._queries.secret_get, {"p_name": SESSION_ROW}).scalar_one()
                self._secret = bytes.fromhex(stored)
            return self._secret

    def slow_hash(self, token: str, salt: bytes) -> bytes:
        """scrypt of the token: the only slow step (a subclass may wrap it, e.g. to count calls)."""
        return hashlib.scrypt(
            token.encode(),
            salt=salt,
            n=SCRYPT_N,
            r=SCRYPT_R,
            p=SCRYPT_P,
            maxmem=SCRYPT_MAXMEM,
            dklen=HASH_BYTES,
        )

    def _passed_before(self, token_id: str, live: _Live, digest: bytes) -> bool:
        seen = self._passed.get(token_id)
        return seen is not None and seen[0] == live.hash and hmac.compare_digest(seen[1], digest)

    def _lock_of(self, token_id: str) -> threading.Lock:
        with self._lock:
            return self._checking.setdefault(token_id, threading.Lock())

    def _changed(self) -> None:
        with self._lock:
            self._changes += 1

    def _snapshot(self) -> dict[str, _Live]:
        """The live tokens, read again once older than ``refresh_seconds``.

        One thread reads while the others go on with the snapshot they have; only the very
        first read makes them wait.
        """
        live = self._live
        if live is not None and not self._due(self.refresh_seconds):
            return live
        if live is None:
            with self._reading:
                if self._live is None:
                    self._read()
        elif self._reading.acquire(blocking=False):
            try:
                if self._due(self.refresh_seconds):
                    self._read()
            finally:
                self._reading.release()
        assert self._live is not None
        return self._live

    def _reread(self) -> dict[str, _Live]:
        """The live tokens for an id the snapshot lacks: read again unless just read (waiting for
        a read under way, which may bring it)."""
        with self._reading:
            if self._due(MISS_REREAD_SECONDS):
                self._read()
        assert self._live is not None
        return self._live

    def _due(self, age: float) -> bool:
        return self._read_changes != self._changes or time.monotonic() - self._read_at >= age

    def _read(self) -> None:
        """Read the live tokens (under ``_reading``); a failure keeps the snapshot there is."""
        self._read_at, self._read_changes = time.monotonic(), self._changes
        try:
            with self._db.transaction() as conn:
                rows = conn.execute(self._queries.tokens_live).all()
        except DatabaseError as exc:
            if self._live is None:
                raise
            if self._read_at - self._warned_at >= WARN_EVERY_SECONDS:
                self._warned_at = self._read_at
                logger.warning(
                    "cannot read the API tokens again, keeping the %d read before: %s", len(self._live), exc
                )
            return
        live = {
            row.id: _Live(
                Identity(row.name, Role(row.role)), bytes.fromhex(row.salt), bytes.fromhex(row.hash)
            )
            for row in rows
            if row.role in _ROLES  # a role of a newer fuseline: its tokens do not verify here
        }
        with self._lock:
            self._live = live
            self._passed = {k: v for k, v in self._passed.items() if k in live}
            self._checking = {k: v for k, v in self._checking.items() if k in live}


_ROLES = frozenset(role.value for role in Role)


def _info(row: Row) -> TokenInfo:
    created_at = aware(row.created_at)
    assert created_at is not None
    return TokenInfo(
        name=row.name, role=Role(row.role), created_at=created_at, revoked_at=aware(row.revoked_at)
    )
