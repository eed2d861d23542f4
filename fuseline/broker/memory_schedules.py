"""``MemoryBroker``'s schedules: kept by name, fired under the broker's lock by its claims.

The tick math is :mod:`.schedules`'; this module only keeps the records and
fires them the way ``SqlBroker`` does: the latest due tick dispatches one
instance keyed ``name@tick`` (a tick fired twice names the same instance),
and the next fire time becomes the first tick after now. The clock is the
wall clock in UTC, replaceable (``ScheduleBook.clock``) so tests can move it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..errors import FuselineError, UnknownSchedule
from ..workflow.schema import WorkflowSchema
from . import codec
from .dispatching import Dispatch
from .schedules import NewSchedule, ScheduleInfo, schedule_exists, tick_key

logger = logging.getLogger(__name__)


def wall_clock() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class ScheduleBook:
    """The schedules of one MemoryBroker, by name, with what firing them needs."""

    clock: Callable[[], datetime] = wall_clock
    infos: dict[str, ScheduleInfo] = field(default_factory=dict)
    schemas: dict[str, WorkflowSchema] = field(default_factory=dict)


class MemoryScheduling:
    """The schedule methods of :class:`~fuseline.broker.memory.MemoryBroker` (a mixin: it uses
    the broker's lock, definitions and dispatch)."""

    _lock: threading.RLock
    _schedules: ScheduleBook

    if TYPE_CHECKING:  # MemoryBroker's own

        def register_workflows(self, schemas: Sequence[WorkflowSchema]) -> None: ...

        def dispatch_instances(self, schema: WorkflowSchema, dispatches: Sequence[Dispatch]) -> list[str]: ...

    def store_schedule(self, schedule: NewSchedule) -> ScheduleInfo:
        book = self._schedules
        with self._lock:
            if schedule.name in book.infos:
                raise schedule_exists(schedule.name)
            self.register_workflows([schedule.schema])
            now = book.clock()
            info = ScheduleInfo(
                name=schedule.name,
                workflow_id=schedule.schema.workflow_id,
                version=schedule.schema.version,
                spec=schedule.spec,
                inputs=codec.decode(schedule.inputs),
                paused=False,
                next_fire_at=schedule.spec.next_tick(now),
                created_at=now,
            )
            book.infos[schedule.name] = info
            book.schemas[schedule.name] = schedule.schema
            return info

    def list_schedules(self) -> list[ScheduleInfo]:
        with self._lock:
            return [self._schedules.infos[name] for name in sorted(self._schedules.infos)]

    def pause_schedule(self, name: str) -> ScheduleInfo:
        with self._lock:
            return self._replace_schedule(name, paused=True)

    def resume_schedule(self, name: str) -> ScheduleInfo:
        with self._lock:
            info = self._schedule(name)
            if not info.paused:
                return info
            now = self._schedules.clock()
            return self._replace_schedule(name, paused=False, next_fire_at=info.spec.next_tick(now))

    def remove_schedule(self, name: str) -> None:
        with self._lock:
            self._schedule(name)
            del self._schedules.infos[name]
            del self._schedules.schemas[name]

    def fire_schedules(self) -> list[str]:
        """Fire every due schedule once (its latest due tick); the instances dispatched."""
        book = self._schedules
        if not book.infos:
            return []
        fired: list[str] = []
        with self._lock:
            now = book.clock()
            for name, info in sorted(book.infos.items()):
                if info.paused:
                    continue
                tick, following = info.spec.due_tick(info.next_fire_at, now)
                if tick is None:
                    continue
                changes: dict[str, Any] = {"next_fire_at": following}
                dispatch = Dispatch(info.inputs, key=tick_key(name, tick))
                try:
                    instance_id = self.dispatch_instances(book.schemas[name], [dispatch])[0]
                except FuselineError as exc:  # the tick's key taken with other inputs: skip it
                    logger.warning("schedule %r could not fire its tick %s: %s", name, tick.isoformat(), exc)
                else:
                    changes.update(last_tick=tick, last_instance_id=instance_id)
                    fired.append(instance_id)
                book.infos[name] = replace(info, **changes)
        return fired

    def _schedule(self, name: str) -> ScheduleInfo:
        info = self._schedules.infos.get(name)
        if info is None:
            raise UnknownSchedule(name)
        return info

    def _replace_schedule(self, name: str, **changes: Any) -> ScheduleInfo:
        info = replace(self._schedule(name), **changes)
        self._schedules.infos[name] = info
        return info
