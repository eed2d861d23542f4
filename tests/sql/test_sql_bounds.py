"""What a broker keeps or reads grows with the work in flight, not with history.

- It remembers the workflows of at most ``KEYS_CACHE_SIZE`` workers (a long-lived
  broker, such as a server's, sees a new worker id at every deploy).
- The starts a RateLimit counts are pruned once older than the longest
  window (a day): a rate-limited step claimed for years leaves a day of rows.
- ``list_workers`` reads the steps running now with their holders: it used to
  put the id of every worker ever registered into one ``IN`` list, which
  PostgreSQL's protocol refuses beyond 65,535 parameters.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import URL

from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql import workers as sql_workers
from fuseline.broker.sql.models import starts
from tests.contract import workflows as wf


def test_a_broker_remembers_a_bounded_number_of_workers(sqlite_url: str, monkeypatch) -> None:
    monkeypatch.setattr(sql_workers, "KEYS_CACHE_SIZE", 50)
    broker = SqlBroker(sqlite_url, migrate=True)
    try:
        schema = wf.SINGLE.to_schema()
        first = broker.register_worker([schema])
        for _ in range(80):
            broker.register_worker([schema])
        assert len(broker._workers._keys) == 50
        wf.SINGLE.dispatch(broker, {"x": 1})
        assert broker.get_step(first) is not None  # forgotten here, still known to the database
    finally:
        broker.close()


def test_rate_limit_starts_older_than_any_window_are_pruned(broker: SqlBroker) -> None:
    now = datetime.now(UTC)
    ages = {"old": timedelta(days=1, minutes=5), "recent": timedelta(hours=23)}
    with broker.engine.begin() as conn:
        conn.execute(
            sa.insert(starts),
            [
                {"workflow_id": "w", "step_name": name, "limit_key": None, "at": now - age}
                for name, age in ages.items()
                for _ in range(3)
            ],
        )
    worker = broker.register_worker([wf.SINGLE.to_schema()])

    assert broker.get_step(worker) is None  # a claim that finds nothing runs a reaper pass

    with broker.engine.connect() as conn:
        left = conn.execute(sa.select(starts.c.step_name)).scalars().all()
    assert sorted(left) == ["recent"] * 3


#: More than one statement can carry parameters for (PostgreSQL's protocol allows 65,535).
PAST_WORKERS = 70_000


def test_workers_are_listed_whatever_the_number_ever_registered(postgres_url: URL) -> None:
    broker = SqlBroker(postgres_url)
    try:
        schema = wf.SINGLE.to_schema()
        holder = broker.register_worker([schema])
        instance_id = wf.SINGLE.dispatch(broker, {"x": 1})
        assert broker.get_step(holder) is not None
        with broker.engine.begin() as conn:  # workers that came and went
            conn.execute(
                sa.text(
                    "INSERT INTO fuseline_workers (id, host, pid, workflows, started_at, last_heartbeat, "
                    "stopped_at) SELECT gen_random_uuid(), 'old', i, '[]', now() - interval '1 day', "
                    "now() - interval '1 day', now() - interval '1 day' FROM generate_series(1, :n) i"
                ),
                {"n": PAST_WORKERS},
            )

        listed = broker.list_workers()

        assert len(listed) == PAST_WORKERS + 1
        (current,) = [w for w in listed if w.worker_id == holder]
        assert current.alive and current.current_steps == [f"{instance_id}/double"]
    finally:
        broker.close()
