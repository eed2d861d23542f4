"""Many finished instances at once: copies of instances real brokers ran, rows and all.

The retention chaos test and ``bench/retention_bench.py`` need tens of
thousands of finished instances; running them all would take most of the
time. Instead a few are run for real, then copied with ``INSERT ... SELECT``
(the instance row with a new id, its steps, its events, its signals), so
every copy is exactly what a broker leaves behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from fuseline.broker.sql.models import events, instances, signals, steps

#: Copies made per statement round (their map rows are inserted in one executemany).
CHUNK = 20_000


def copy_instances(engine: sa.Engine, templates: Sequence[str], copies: int) -> list[str]:
    """``copies`` new instances, each a copy of one of ``templates`` (in turn); their ids."""
    made: list[str] = []
    while len(made) < copies:
        n = min(CHUNK, copies - len(made))
        pairs = [{"src": templates[i % len(templates)], "dst": str(uuid.uuid4())} for i in range(n)]
        _copy(engine, pairs)
        made += [p["dst"] for p in pairs]
    return made


def _copy(engine: sa.Engine, pairs: list[dict[str, str]]) -> None:
    mapping = sa.Table(
        "fuseline_copy_map",
        sa.MetaData(),
        sa.Column("src", sa.Uuid(as_uuid=False)),
        sa.Column("dst", sa.Uuid(as_uuid=False)),
        prefixes=["TEMPORARY"],
    )
    with engine.begin() as conn:
        mapping.create(conn)
        conn.execute(sa.insert(mapping), pairs)
        for table, key, skip in (
            (instances, instances.c.id, "id"),
            (steps, steps.c.instance_id, "instance_id"),
            (events, events.c.instance_id, "instance_id"),
            (signals, signals.c.instance_id, "instance_id"),
        ):
            # Every column but the autoincrement id; the instance's id (or reference) is the copy's.
            names = [c.name for c in table.c if c.name != skip and not (c.name == "id" and c.autoincrement)]
            source = sa.select(mapping.c.dst, *[table.c[n] for n in names]).join_from(
                mapping, table, key == mapping.c.src
            )
            conn.execute(sa.insert(table).from_select([skip, *names], source))
        mapping.drop(conn)


def backdate(engine: sa.Engine, ids: Sequence[str], days: float, column: str = "finished_at") -> None:
    """Move ``column`` (``finished_at``) of these instances ``days`` into the past (from now)."""
    at = datetime.now(timezone.utc) - timedelta(days=days)
    if engine.dialect.name == "sqlite":
        at = at.replace(tzinfo=None)  # stored as UTC text
    ids = list(ids)
    with engine.begin() as conn:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            conn.execute(sa.update(instances).where(instances.c.id.in_(chunk)).values({column: at}))
