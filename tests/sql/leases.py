"""Making leases expire in SQL, and looking at every stored row."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from fuseline.broker.sql.models import steps

#: How fuseline stores times on SQLite (see fuseline.broker.sql.dialects): text that sorts as time.
SQLITE_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}$")


def expire_leases(engine: Engine, step_name: str | None = None) -> int:
    """Move the lease of RUNNING steps (all, or those named ``step_name``) a minute into the past."""
    if engine.dialect.name == "postgresql":
        past = "now() - interval '1 minute'"
    else:
        # the format the broker writes (YYYY-MM-DD HH:MM:SS.ffffff, UTC), a minute ago
        past = "strftime('%Y-%m-%d %H:%M:%f', 'now', '-60 seconds') || '000'"
    where = "state = 'RUNNING'" + (" AND name = :name" if step_name is not None else "")
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for (current,) in conn.execute(
                sa.text(f"SELECT lease_expires_at FROM fuseline_steps WHERE {where}"), {"name": step_name}
            ):
                assert SQLITE_TIME.match(current), f"the broker stores times as {current!r}, not as expected"
        return conn.execute(
            sa.text(f"UPDATE fuseline_steps SET lease_expires_at = {past} WHERE {where}"), {"name": step_name}
        ).rowcount


def stored_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the steps, instances and events tables, in a stable order."""
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {order}"))]
            for table, order in (
                ("fuseline_steps", "id"),
                ("fuseline_instances", "id"),
                ("fuseline_events", "id"),
            )
        }


def step_row(engine: Engine, instance_id: str, name: str) -> Any:
    """The stored step, with columns typed as the broker reads them."""
    with engine.connect() as conn:
        return conn.execute(
            sa.select(steps).where(steps.c.instance_id == instance_id, steps.c.name == name)
        ).one()
