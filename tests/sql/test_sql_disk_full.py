"""A full disk (SQLSTATE 53100) is an outage workers wait out, not a permanent error that stops them.

PostgreSQL rolls back the statement's transaction when it cannot extend a
file, and the space may come back (an operator deletes files, the volume
grows). Before this, ``disk_full`` was a plain DatabaseError and every worker
exited 1 as soon as one of its reports hit it (tests/chaos/test_chaos_full_disk.py
fills a real tablespace).
"""

from __future__ import annotations

import psycopg.errors

from fuseline.broker.sql.engine import database_error, is_transient
from fuseline.errors import DatabaseBusy, DatabaseUnavailable


def test_disk_full_is_transient_so_workers_retry_instead_of_exiting() -> None:
    error = psycopg.errors.DiskFull('could not extend file "base/1/2": No space left on device')

    assert is_transient(error)
    raised = database_error(error, "report failed", None)
    assert isinstance(raised, DatabaseUnavailable) and not isinstance(raised, DatabaseBusy)
    assert str(raised).startswith("report failed: could not extend file")
    assert "No space left on device" in str(raised)
