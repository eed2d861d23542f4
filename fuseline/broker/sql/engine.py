"""Opening databases: URLs, engines and the settings each dialect needs.

Passwords never leave this module in clear: every URL shown to a user goes
through :func:`mask_url`, error texts through :func:`scrub`, and engines are
created with ``hide_parameters=True`` so SQL errors do not echo values.

Behind a transaction pooler (PgBouncer's ``pool_mode = transaction``) each
transaction may run on a different server connection, so nothing may live
on a server connection between transactions. The URL says so with
``?pooler=transaction`` (see :data:`POOLER_OPTION`); direct connections keep
psycopg's prepared statements and the session options.
"""

from __future__ import annotations

import re
import weakref
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

from ...errors import DatabaseError

#: Seconds a SQLite writer waits for the lock before giving up.
SQLITE_BUSY_TIMEOUT_SECONDS = 60
#: Seconds to wait for a PostgreSQL connection before reporting it unreachable.
CONNECT_TIMEOUT_SECONDS = 10

#: "user:password@host..." in URL text, parsable or not (no scheme, a bad port). The password
#: runs to the last "@" before the path: a raw "@" in a password is a common mistake, and must
#: not leave the rest of it showing.
_PASSWORD_IN_URL = re.compile(
    r"^((?:[A-Za-z][\w+.-]*://)?[^:/@\s]*:)([^/?#\s]*)@([^@/?#\s]*(?:[/?#].*)?)$", re.DOTALL
)
_CONFIGURED_SQLITE: weakref.WeakSet[Engine] = weakref.WeakSet()
_LINE_BREAKS = re.compile(r"\s*\n\s*")
#: Hosts with ports listed in the URL's authority ("@a:5432,b:5432/"), which SQLAlchemy cannot
#: parse: the hosts of a primary and its standbys go in the query instead, where libpq tries
#: them in order (``target_session_attrs=read-write`` keeps the first that takes writes).
_SEVERAL_HOSTS_WITH_PORTS = re.compile(r"^[A-Za-z][\w+.-]*://(?:[^/?#]*@)?[^/?#@]*:\d*,[^/?#@]*(?:[/?#]|$)")
_MULTI_HOST_EXAMPLE = "?host=a:5432&host=b:5432&target_session_attrs=read-write"

#: The URL query option saying that connections go through a transaction pooler:
#: ``postgresql+psycopg://app@pgbouncer:6432/app?pooler=transaction``. fuseline reads it and
#: takes it out of the URL (it is not a libpq parameter), so it works wherever a URL is given:
#: ``--database-url``, ``FUSELINE_DATABASE_URL``, ``SqlBroker(url)``.
POOLER_OPTION = "pooler"
_TRANSACTION_POOLER = "transaction"
_BEHIND_TRANSACTION_POOLER: weakref.WeakSet[Engine] = weakref.WeakSet()
#: What a server connection says when it was used as if it were this client's alone: psycopg's
#: prepared statements (``_pg3_0``...) missing or already there, or PgBouncer refusing the
#: session options sent at connect.
_POOLER_SYMPTOMS = ('prepared statement "_pg3_', "unsupported startup parameter")


def parse_url(url: str | URL) -> URL:
    """A SQLAlchemy URL with fuseline's drivers: psycopg 3 for PostgreSQL."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        reason = scrub(str(exc), url)
        if _SEVERAL_HOSTS_WITH_PORTS.match(str(url)):
            reason = f"{reason} (name several hosts in the query: {_MULTI_HOST_EXAMPLE})"
        raise DatabaseError(f"invalid database URL {mask_url(str(url))!r}: {reason}") from None
    if parsed.host and "@" in parsed.host:  # "user:p@ss@host": the rest of the password became the host
        raise DatabaseError(f"invalid database URL {mask_url(str(url))!r}: write an @ in the password as %40")
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres"):
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        elif parsed.drivername != "postgresql+psycopg":
            raise DatabaseError(
                f"use the psycopg 3 driver for PostgreSQL (postgresql+psycopg://...), "
                f"not {parsed.drivername!r}"
            )
    elif backend != "sqlite":
        raise DatabaseError(
            f"unsupported database {backend!r} in {mask_url(parsed)!r}: use postgresql+psycopg:// or sqlite:///"
        )
    return parsed


def mask_url(url: str | URL) -> str:
    """The URL with its password (in the user part or a ``password`` parameter) replaced by ``***``."""
    if isinstance(url, str):
        text = _PASSWORD_IN_URL.sub(r"\1***@\3", url)
        try:
            url = make_url(text)
        except (ArgumentError, ValueError):
            return text
    if "password" in url.query:
        url = url.update_query_dict({"password": "-"})
    return url.render_as_string(hide_password=True).replace("password=-", "password=***")


def scrub(message: str, url: str | URL | None) -> str:
    """Remove the URL's password (raw and percent-decoded) from a message."""
    if url is None:
        return message
    secrets: set[str] = set()
    try:
        parsed = make_url(url)
        if parsed.password:
            secrets.add(str(parsed.password))
        in_query = parsed.query.get("password")
        secrets.update([in_query] if isinstance(in_query, str) else in_query or ())
    except (ArgumentError, ValueError):
        pass
    text = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    match = _PASSWORD_IN_URL.match(text)
    if match:
        raw = match.group(2)
        secrets.update({raw, unquote(raw)})
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, "***")
    return message


#: SQLSTATE classes and codes that mean "try again": the connection failed or
#: was cut (08), the server is shutting down or starting (57P01-57P03), too
#: many connections (53300), the disk is full (53100: the statement's
#: transaction was rolled back, and space may come back), the transaction lost a
#: race (40001, 40P01), the server ended a transaction left idle too long
#: (25P03, see below), or a statement was cancelled (57014, 55P03, see
#: :func:`statement_cancelled`).
_TRANSIENT_SQLSTATES = (
    *("08", "57P01", "57P02", "57P03", "53300", "53100"),
    *("40001", "40P01", "25P03", "57014", "55P03"),
)

#: query_canceled: ``statement_timeout``, or a cancel request (``pg_cancel_backend``).
_QUERY_CANCELED = "57014"
#: lock_not_available: ``lock_timeout`` (fuseline takes no lock with NOWAIT).
_LOCK_NOT_AVAILABLE = "55P03"


def statement_cancelled(error: BaseException) -> str | None:
    """What cancelled the statement that raised ``error``, in words naming the setting; None when
    it was not cancelled.

    Every 57014 (query_canceled) and 55P03 (lock_not_available) counts, whatever cancelled it:
    the role's, database's or server's ``statement_timeout`` or ``lock_timeout``, or an
    operator's ``pg_cancel_backend``. The server rolled the transaction back, so nothing of it
    took effect, and every transaction fuseline runs is short and safe to run again: a report
    is fenced by worker and attempt (and an exact replay of an accepted one is a no-op), a
    claim takes only steps nobody holds, a dispatch cancelled added no instance. So all of
    them are retried by workers (:func:`is_transient`); other callers get StatementCancelled.
    The price: a statement that always runs longer than the timeout is retried for ever,
    each time with this warning; an operator sees it in the log and raises the timeout.
    fuseline's own long work sets its own timeouts: migrations and ``db verify`` run with
    ``statement_timeout = 0``; retention batches with ``lock_timeout = '2s'`` (a batch that
    waits longer is put off, not retried).

    The setting is named from the server's message, which is English unless ``lc_messages``
    says otherwise; the SQLSTATE alone still classifies the error.
    """
    sqlstate = getattr(error, "sqlstate", None)
    text = str(error)
    if sqlstate == _QUERY_CANCELED:
        if "statement timeout" in text:
            return f"statement cancelled by statement_timeout ({sqlstate})"
        if "user request" in text:
            # Also what PostgreSQL says of a statement_timeout that fires as a statement ends (seen
            # with a timeout of 1 ms): nobody may have asked.
            return (
                f"statement cancelled on request (pg_cancel_backend, or a statement_timeout as it ended) "
                f"({sqlstate})"
            )
        return f"statement cancelled ({sqlstate})"
    if sqlstate == _LOCK_NOT_AVAILABLE:
        if "lock timeout" in text:
            return f"statement cancelled by lock_timeout ({sqlstate})"
        return f"statement cancelled: lock not available ({sqlstate})"
    return None


#: fuseline's transactions never wait on anything but the database, so one
#: left idle this long lost its client (a network partition mid-transaction).
#: The server then ends it and releases its row locks, so the steps it held
#: can be reaped and re-run instead of staying locked until the network heals.
#: Brokers shorten it to half their lease.
IDLE_IN_TRANSACTION_SECONDS = 5.0


def _session_options(idle_in_transaction_seconds: float) -> str:
    return f"-c idle_in_transaction_session_timeout={round(idle_in_transaction_seconds * 1000)}"


def is_transient(error: BaseException, *, connection_invalidated: bool = False) -> bool:
    """Whether a driver error is worth retrying (see ``DatabaseUnavailable``)."""
    if connection_invalidated:
        return True
    sqlstate = getattr(error, "sqlstate", None)
    if sqlstate:
        return sqlstate.startswith(_TRANSIENT_SQLSTATES)
    # No SQLSTATE: the client could not talk to the server at all (refused,
    # reset, timed out), or SQLite's lock wait ran out.
    name = type(error).__name__
    return name in ("OperationalError", "InterfaceError")


#: What a server that is up but takes no connection now says: ``max_connections`` reached
#: (53300; the connection attempt carries no SQLSTATE, only the message), or starting up (57P03).
_BUSY_SQLSTATES = ("53300", "57P03")
_BUSY_MESSAGES = (
    "too many clients",
    "remaining connection slots are reserved",
    "database system is starting up",
)


def is_busy(error: BaseException) -> bool:
    """Whether the server refused a connection only because it is full or starting (see DatabaseBusy)."""
    if getattr(error, "sqlstate", None) in _BUSY_SQLSTATES:
        return True
    text = str(error)
    return any(message in text for message in _BUSY_MESSAGES)


def database_error(
    error: BaseException, where: str, url: str | URL | None, *, connection_invalidated: bool = False
) -> DatabaseError:
    """The fuseline error for a driver error: StatementCancelled, DatabaseBusy or
    DatabaseUnavailable if transient, else DatabaseError."""
    from ...errors import DatabaseBusy, DatabaseUnavailable, StatementCancelled

    cancelled = statement_cancelled(error)
    if cancelled is not None:
        return StatementCancelled(f"{where}: {cancelled}; its transaction was rolled back")
    message = f"{where}: {one_line(pooler_hint(scrub(str(error), url)))}"
    if is_busy(error):
        return DatabaseBusy(message)
    if is_transient(error, connection_invalidated=connection_invalidated):
        return DatabaseUnavailable(message)
    return DatabaseError(message)


def one_line(message: str) -> str:
    """The server's message on one line: its DETAIL and HINT lines follow the first after a space
    (a full disk adds "HINT:  Check free disk space."), so a log line or a CLI error stays one."""
    return _LINE_BREAKS.sub(" ", message.strip())


def pooler_hint(message: str) -> str:
    """``message``, with what to do when it is what a transaction pooler makes of a session's state."""
    if not any(symptom in message for symptom in _POOLER_SYMPTOMS):
        return message
    return (
        f"{message} (behind PgBouncer in transaction mode? add ?{POOLER_OPTION}={_TRANSACTION_POOLER} "
        "to the database URL)"
    )


def behind_transaction_pooler(engine: Engine) -> bool:
    """Whether ``engine`` was made for a URL with ``pooler=transaction``: then no LISTEN either."""
    return engine in _BEHIND_TRANSACTION_POOLER


def _transaction_pooler(url: URL) -> bool:
    value = url.query.get(POOLER_OPTION)
    if value is None:
        return False
    if value != _TRANSACTION_POOLER:
        raise DatabaseError(
            f"unknown {POOLER_OPTION}={value!r} in {mask_url(url)!r}: the one it takes is "
            f"{POOLER_OPTION}={_TRANSACTION_POOLER} (PgBouncer's pool_mode = transaction)"
        )
    if url.get_backend_name() != "postgresql":
        raise DatabaseError(
            f"{POOLER_OPTION}={_TRANSACTION_POOLER} is for PostgreSQL URLs, not {mask_url(url)!r}"
        )
    return True


def create_database_engine(
    url: str | URL, *, idle_in_transaction_seconds: float = IDLE_IN_TRANSACTION_SECONDS, **options: Any
) -> Engine:
    """An Engine for ``url`` tuned for fuseline's short transactions."""
    parsed = parse_url(url)
    behind_pooler = _transaction_pooler(parsed)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, **options)
    connect_args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        "application_name": "fuseline",
        "options": _session_options(idle_in_transaction_seconds),
    }
    if behind_pooler:
        # No server-side prepared statements (psycopg prepares a statement run five times on
        # one connection, and the next transaction may land on a server connection that lacks
        # it) and no startup options (PgBouncer refuses them: its idle_transaction_timeout
        # stands in for the idle timeout). Direct connections keep both.
        parsed = parsed.difference_update_query([POOLER_OPTION])
        del connect_args["options"]
        connect_args["prepare_threshold"] = None
    connect_args.update(options.pop("connect_args", {}))
    engine = create_engine(
        parsed,
        hide_parameters=True,
        pool_size=options.pop("pool_size", 5),
        max_overflow=options.pop("max_overflow", 10),
        connect_args=connect_args,
        **options,
    )
    if behind_pooler:
        _BEHIND_TRANSACTION_POOLER.add(engine)
    return engine


def _sqlite_engine(url: URL, **options: Any) -> Engine:
    in_memory = url.database in (None, "", ":memory:")
    if in_memory:
        options.setdefault("poolclass", StaticPool)
    engine = create_engine(
        url,
        hide_parameters=True,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        **options,
    )
    configure_sqlite(engine)
    return engine


_SQLITE_TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"


def sqlite_now() -> str:
    """SQLite's database clock, to the microsecond (see ``dialects``): this machine's UTC time."""
    return datetime.now(timezone.utc).strftime(_SQLITE_TIME_FORMAT)


def sqlite_now_plus(seconds: float | None) -> str | None:
    """``fuseline_now_plus(seconds)``: NULL for NULL, as PostgreSQL's interval arithmetic gives."""
    if seconds is None:
        return None
    return (datetime.now(timezone.utc) + timedelta(seconds=float(seconds))).strftime(_SQLITE_TIME_FORMAT)


def configure_sqlite(engine: Engine) -> None:
    """WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for every transaction.

    Python's sqlite3 module would otherwise open transactions lazily (at the
    first write), so two workers could both read a QUEUED step before either
    writes. Taking the write lock at BEGIN makes each transaction see the
    database alone, which is what the claim and the join rely on.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # fuseline issues BEGIN itself
        dbapi_connection.create_function("fuseline_now", 0, sqlite_now)
        dbapi_connection.create_function("fuseline_now_plus", 1, sqlite_now_plus)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
