"""What the dashboard reads besides the broker's own methods, cached per server process.

Counting instances by status reads the whole status index: with 100,000 instances that
is cheap once, not once per viewer per poll, so counts are kept ``COUNT_SECONDS``. Whether
a session's token is still live is read at most every ``TOKEN_SECONDS`` per token, so a
revoke ends every session of that token within a second. Definitions never change under
a ``(workflow_id, version)``, so they are kept for good.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from ...broker.sql.queries.dashboard import for_dialect
from ...states import INSTANCE_STATES, Status
from ...workflow.schema import WorkflowSchema
from ..tokens import Identity, Role

if TYPE_CHECKING:
    from ...broker.sql import SqlBroker

COUNT_SECONDS = 2.0
TOKEN_SECONDS = 0.5
#: More distinct keys than this and a cache starts again empty (workflow filters typed by people).
MAX_KEYS = 256
#: The order the dashboard lists instance states in.
STATUS_ORDER = [Status.RUNNING, Status.SUCCEEDED, Status.FAILED, Status.CANCELLED]

_INSTANCE_VALUES = frozenset(s.value for s in INSTANCE_STATES)
_ROLE_VALUES = frozenset(r.value for r in Role)

K = TypeVar("K")
V = TypeVar("V")


class TimedCache(Generic[K, V]):
    """Values computed by ``load`` and kept ``seconds``; safe to share between threads."""

    def __init__(self, load: Callable[[K], V], seconds: float) -> None:
        self._load = load
        self.seconds = seconds
        self._lock = threading.Lock()
        self._values: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V:
        now = time.monotonic()
        with self._lock:
            kept = self._values.get(key)
        if kept is not None and now - kept[0] < self.seconds:
            return kept[1]
        value = self._load(key)
        with self._lock:
            if len(self._values) >= MAX_KEYS:
                self._values.clear()
            self._values[key] = (now, value)
        return value


class DashboardReads:
    """Counts, definitions and token checks over one broker's database."""

    def __init__(self, broker: SqlBroker) -> None:
        self._db = broker.db
        self._queries = for_dialect(self._db.dialect_name)
        self._counts: TimedCache[str | None, dict[Status, int]] = TimedCache(self._count, COUNT_SECONDS)
        self._tokens: TimedCache[str, Identity | None] = TimedCache(self._token, TOKEN_SECONDS)
        self._definitions: dict[tuple[str, str], WorkflowSchema | None] = {}

    def counts(self, workflow_id: str | None = None) -> dict[Status, int]:
        """Instances per status (every status listed, zeros included), at most 2 s old."""
        return self._counts.get(workflow_id or None)

    def live_identity(self, token_id: str) -> Identity | None:
        """Who the token ``token_id`` belongs to, or None once it is revoked (or unknown)."""
        return self._tokens.get(token_id)

    def definition(self, workflow_id: str, version: str) -> WorkflowSchema | None:
        """The stored definition of a workflow version (None if the database has none)."""
        key = (workflow_id, version)
        if key not in self._definitions:
            with self._db.transaction() as conn:
                text = conn.execute(
                    self._queries.definition, {"p_workflow_id": workflow_id, "p_version": version}
                ).scalar()
            self._definitions[key] = WorkflowSchema.from_json(text) if text is not None else None
        return self._definitions[key]

    def _count(self, workflow_id: str | None) -> dict[Status, int]:
        with self._db.transaction() as conn:
            if workflow_id is None:
                rows = conn.execute(self._queries.status_counts).all()
            else:
                rows = conn.execute(self._queries.status_counts_of_workflow, {"p_workflow_id": workflow_id})
        counts = dict.fromkeys(STATUS_ORDER, 0)
        for status, count in rows:
            if status in _INSTANCE_VALUES:
                counts[Status(status)] = int(count)
        return counts

    def _token(self, token_id: str) -> Identity | None:
        with self._db.transaction() as conn:
            row = conn.execute(self._queries.live_token, {"p_token_id": token_id}).first()
        if row is None or row.role not in _ROLE_VALUES:
            return None
        return Identity(row.name, Role(row.role))
