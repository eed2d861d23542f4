"""API tokens: created once, stored as a salted scrypt hash only, verified cheaply, revoked everywhere
within ``refresh_seconds``; the session secret is one per database.

Every test runs on real databases (PostgreSQL and SQLite). Two brokers on one database stand
for two server processes: each has its own TokenStore, and so its own snapshot and cache.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import server_secrets, tokens
from fuseline.errors import DatabaseError, DatabaseUnavailable, TokenError, UnknownToken
from fuseline.service.tokens import Identity, Role, TokenStore
from tests.support.databases import PostgresServer

TOKEN = re.compile(r"flt_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
#: Small, so waiting out a refresh costs little.
REFRESH = 0.2


class CountingStore(TokenStore):
    """A TokenStore that counts its scrypt runs (through the hook meant for it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hashed = 0
        self._count_lock = threading.Lock()

    def slow_hash(self, token: str, salt: bytes) -> bytes:
        with self._count_lock:
            self.hashed += 1
        return super().slow_hash(token, salt)


@pytest.fixture(params=["postgres", "sqlite"])
def make_broker(request: pytest.FixtureRequest) -> Callable[..., SqlBroker]:
    """Brokers on one database with empty tables (each broker: another server process)."""
    return request.getfixturevalue(f"broker_factory_{request.param}")


@pytest.fixture
def broker(make_broker: Callable[..., SqlBroker]) -> SqlBroker:
    return make_broker()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll ``condition`` until it holds; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)
    return time.monotonic() - started


def stored_rows(broker: SqlBroker, table: sa.Table) -> list[sa.Row[Any]]:
    with broker.engine.connect() as conn:
        return list(conn.execute(sa.select(table)))


@pytest.mark.parametrize("role", list(Role))
def test_a_created_token_verifies_as_its_name_and_role(broker: SqlBroker, role: Role) -> None:
    store = TokenStore(broker)

    token = store.create("client-1", role.value)  # a role by its name, as the CLI passes it

    assert TOKEN.fullmatch(token), token
    assert store.verify(token) == Identity("client-1", role)
    assert TokenStore(broker).verify(token) == Identity("client-1", role)  # a store that never saw it
    (info,) = store.list()
    assert (info.name, info.role, info.revoked_at) == ("client-1", role, None)
    assert info.created_at.tzinfo is not None


def test_each_token_verifies_as_its_own_and_the_ids_differ(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    made = {
        name: store.create(name, role)
        for name, role in [("w", Role.WORKER), ("v", "viewer"), ("o", "operator")]
    }

    assert {name: store.verify(token) for name, token in made.items()} == {
        "w": Identity("w", Role.WORKER),
        "v": Identity("v", Role.VIEWER),
        "o": Identity("o", Role.OPERATOR),
    }
    assert len({TOKEN.fullmatch(token).group(1) for token in made.values()}) == 3  # type: ignore[union-attr]


def test_a_wrong_secret_with_a_right_id_is_refused(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    token = store.create("ci", Role.OPERATOR)
    last = token[-1]
    wrong = token[:-1] + ("A" if last != "A" else "B")

    assert store.verify(wrong) is None  # before the right token was ever seen
    assert store.verify(token) == Identity("ci", Role.OPERATOR)
    assert store.verify(wrong) is None  # and after: the cache remembers the right token only
    assert store.verify(token) == Identity("ci", Role.OPERATOR)


def test_malformed_and_borrowed_tokens_are_refused_and_only_well_formed_ones_reach_scrypt(
    broker: SqlBroker,
) -> None:
    TokenStore(broker).create("a", Role.OPERATOR)
    token_a = TokenStore(broker).create("b", Role.OPERATOR)
    token_b = TokenStore(broker).create("c", Role.WORKER)
    id_b = TOKEN.fullmatch(token_b).group(1)  # type: ignore[union-attr]
    secret_a = TOKEN.fullmatch(token_a).group(2)  # type: ignore[union-attr]
    store = CountingStore(broker)
    malformed: list[Any] = [
        None,
        "",
        "garbage",
        "flt_",
        "Bearer " + token_a,
        token_a + "\n",
        " " + token_a,
        token_a[:-1],
        token_a + "x",
        token_a.upper(),
        token_a.replace("flt_", "flx_", 1),
        token_a * 2,
        "x" * 100_000,
        token_a.encode(),
    ]

    for text in malformed:
        assert store.verify(text) is None, text
    assert store.hashed == 0  # none of them is worth a row, let alone a scrypt
    assert store.verify(f"flt_{id_b}_{secret_a}") is None  # well formed: another token's id, this secret
    assert store.verify(f"flt_{'0' * 12}_{secret_a}") is None  # well formed, no such id
    assert store.hashed == 1
    assert store.verify(token_a) == Identity("b", Role.OPERATOR)


def test_only_a_salted_scrypt_hash_is_stored(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    made = [store.create("one", Role.WORKER), store.create("two", Role.WORKER)]

    rows = stored_rows(broker, tokens)
    stored_text = repr([tuple(row) for row in rows])
    for token in made:
        token_id, secret = TOKEN.fullmatch(token).groups()  # type: ignore[union-attr]
        assert token not in stored_text and secret not in stored_text
        assert secret[:16] not in stored_text
        (row,) = [row for row in rows if row.id == token_id]
        expected = hashlib.scrypt(token.encode(), salt=bytes.fromhex(row.salt), n=2**14, r=8, p=1, dklen=32)
        assert row.hash == expected.hex()
    assert len({row.salt for row in rows}) == 2  # each token its own salt


def test_a_revoke_on_one_process_is_effective_on_another_within_refresh_seconds(
    make_broker: Callable[..., SqlBroker],
) -> None:
    cli_side, server_side = TokenStore(make_broker()), TokenStore(make_broker(), refresh_seconds=REFRESH)
    token = cli_side.create("ci", Role.OPERATOR)
    other = cli_side.create("worker-1", Role.WORKER)
    assert server_side.verify(token) == Identity("ci", Role.OPERATOR)  # now snapshotted and cached

    revoked = cli_side.revoke("ci")
    took = wait_until(lambda: server_side.verify(token) is None, 5, "the revoke to reach the other store")

    assert took <= REFRESH + 1.0, took
    assert revoked.revoked_at is not None
    assert server_side.verify(other) == Identity("worker-1", Role.WORKER)
    assert cli_side.verify(token) is None


def test_a_token_created_by_another_process_verifies_at_once(make_broker: Callable[..., SqlBroker]) -> None:
    cli_side, server_side = TokenStore(make_broker()), TokenStore(make_broker(), refresh_seconds=60)
    assert server_side.verify(cli_side.create("first", Role.WORKER)) is not None  # snapshot read

    token = cli_side.create("second", Role.VIEWER)

    # an id the snapshot lacks reads the tokens again: no waiting out refresh_seconds (60)
    took = wait_until(lambda: server_side.verify(token) is not None, 5, "the new token to verify")
    assert took < 1, took
    assert server_side.verify(token) == Identity("second", Role.VIEWER)


def test_a_token_whose_row_vanished_stops_verifying(broker: SqlBroker) -> None:
    store = TokenStore(broker, refresh_seconds=REFRESH)
    token = store.create("gone", Role.VIEWER)
    assert store.verify(token) == Identity("gone", Role.VIEWER)

    with broker.engine.begin() as conn:
        conn.execute(sa.delete(tokens))

    wait_until(lambda: store.verify(token) is None, 5, "the deleted token to stop verifying")


def test_revoking_twice_is_fine_and_an_unknown_name_is_refused(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    store.create("ci", Role.OPERATOR)

    first = store.revoke("ci")
    again = store.revoke("ci")

    assert first.revoked_at is not None and again == first
    assert [(t.name, t.revoked_at) for t in store.list()] == [("ci", first.revoked_at)]
    with pytest.raises(UnknownToken, match="unknown token 'nope'"):
        store.revoke("nope")


def test_list_is_by_name_and_shows_revoked_tokens(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    for name in ("zeta", "alpha", "Mid.1"):
        store.create(name, Role.VIEWER)
    store.revoke("zeta")

    listed = store.list()

    assert [t.name for t in listed] == sorted(["zeta", "alpha", "Mid.1"])
    assert {t.name for t in listed if t.revoked_at is not None} == {"zeta"}


@pytest.mark.parametrize("name", ["", "a b", "a/b", "é", "ci\n", "x" * 101, "semi;colon", "tab\tname"])
def test_a_bad_name_is_refused_with_one_sentence(broker: SqlBroker, name: str) -> None:
    store = TokenStore(broker)

    with pytest.raises(TokenError) as refused:
        store.create(name, Role.WORKER)

    message = str(refused.value)
    assert "letters, digits" in message and "\n" not in message.replace(repr(name), "")
    assert stored_rows(broker, tokens) == []


def test_the_longest_and_punctuated_names_are_accepted(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    for name in ("x" * 100, "a", "worker.eu-1_b", "0"):
        assert store.verify(store.create(name, Role.WORKER)) == Identity(name, Role.WORKER)


def test_an_unknown_role_is_refused_before_anything_is_written(broker: SqlBroker) -> None:
    with pytest.raises(TokenError, match="unknown role 'admin': choose one of worker, viewer, operator"):
        TokenStore(broker).create("ci", "admin")
    assert stored_rows(broker, tokens) == []


def test_a_taken_name_is_refused_even_when_revoked_with_a_free_name_suggested(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    store.create("ci", Role.OPERATOR)
    store.create("ci-2", Role.OPERATOR)

    with pytest.raises(TokenError, match=r"'ci' is taken by another token; choose another, e\.g\. 'ci-3'"):
        store.create("ci", Role.WORKER)
    store.revoke("ci")
    with pytest.raises(TokenError, match=r"'ci' is taken by a revoked token.*never reused.*e\.g\. 'ci-3'"):
        store.create("ci", Role.WORKER)

    assert store.verify(store.create("ci-3", Role.WORKER)) == Identity("ci-3", Role.WORKER)
    assert [(t.name, t.role) for t in store.list()] == [
        ("ci", Role.OPERATOR),
        ("ci-2", Role.OPERATOR),
        ("ci-3", Role.WORKER),
    ]


def test_scrypt_runs_once_per_token_per_store_however_many_threads_ask(
    make_broker: Callable[..., SqlBroker],
) -> None:
    creator = TokenStore(make_broker())
    first, second = creator.create("one", Role.WORKER), creator.create("two", Role.VIEWER)
    store = CountingStore(make_broker(), refresh_seconds=0.05)  # refreshes while the threads verify
    results: list[Identity | None] = []
    gate = threading.Barrier(8)

    def verify_many() -> None:
        gate.wait()
        for _ in range(40):
            results.extend([store.verify(first), store.verify(second)])
            time.sleep(0.001)

    threads = [threading.Thread(target=verify_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 8 * 40 * 2
    assert set(results) == {Identity("one", Role.WORKER), Identity("two", Role.VIEWER)}
    assert store.hashed == 2
    assert CountingStore(make_broker()).verify(first) is not None  # another process pays its own
    assert store.hashed == 2


def test_the_session_secret_is_one_per_database_and_stable(make_broker: Callable[..., SqlBroker]) -> None:
    brokers = [make_broker() for _ in range(4)]
    stores = [TokenStore(broker) for broker in brokers]
    secrets_seen: list[bytes] = []
    gate = threading.Barrier(len(stores))

    def ask(store: TokenStore) -> None:
        gate.wait()
        secrets_seen.append(store.session_secret())

    threads = [threading.Thread(target=ask, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(secrets_seen) == 4 and len(set(secrets_seen)) == 1  # the race has one winner
    secret = secrets_seen[0]
    assert len(secret) == 32
    assert TokenStore(make_broker()).session_secret() == secret  # a restarted server
    assert stores[0].session_secret() == secret
    (row,) = stored_rows(brokers[0], server_secrets)
    assert bytes.fromhex(row.secret) == secret


def test_retention_leaves_tokens_alone(broker: SqlBroker) -> None:
    store = TokenStore(broker)
    store.create("kept", Role.VIEWER)
    store.revoke("kept")
    store.create("live", Role.WORKER)
    store.session_secret()

    broker.prune(older_than=1e-6)

    assert [t.name for t in store.list()] == ["kept", "live"]
    assert len(stored_rows(broker, server_secrets)) == 1


# -- the database going away ----------------------------------------------------------------------


@pytest.fixture
def own_database(postgres_server: PostgresServer) -> Iterator[URL]:
    """A migrated PostgreSQL database of this test alone (it is closed to connections)."""
    url = postgres_server.create_database()
    SqlBroker(url, migrate=True).close()
    try:
        yield url
    finally:
        _allow_connections(postgres_server, url, True)
        postgres_server.drop_database(url)


def _allow_connections(server: PostgresServer, url: URL, allowed: bool) -> None:
    engine = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS {str(allowed).lower()}')
            if not allowed:
                conn.execute(
                    sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"),
                    {"d": url.database},
                )
    finally:
        engine.dispose()


def test_an_unreachable_database_leaves_the_last_snapshot_in_use(
    own_database: URL, postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    broker = SqlBroker(own_database, listen=False)
    try:
        store = TokenStore(broker, refresh_seconds=REFRESH)
        token = store.create("ci", Role.OPERATOR)
        assert store.verify(token) == Identity("ci", Role.OPERATOR)

        _allow_connections(postgres_server, own_database, False)
        with caplog.at_level(logging.WARNING, logger="fuseline.service.tokens"):

            def still_verified_after_a_failed_read() -> bool:
                assert store.verify(token) == Identity("ci", Role.OPERATOR)  # before, during, after it
                return "cannot read the API tokens again" in caplog.text

            wait_until(still_verified_after_a_failed_read, 10, "a failed read")
            assert store.verify(token) == Identity("ci", Role.OPERATOR)
            with pytest.raises(DatabaseUnavailable):  # a store that never read them: 503, not 401
                TokenStore(broker).verify(token)
        assert token not in caplog.text and TOKEN.fullmatch(token).group(2) not in caplog.text  # type: ignore[union-attr]

        _allow_connections(postgres_server, own_database, True)
        wait_until(lambda: _revoked(store, "ci"), 10, "the database to come back")
        wait_until(lambda: store.verify(token) is None, 5, "the revoke after the outage")
    finally:
        broker.close()


def _revoked(store: TokenStore, name: str) -> bool:
    try:
        return store.revoke(name).revoked_at is not None
    except DatabaseError:
        return False
