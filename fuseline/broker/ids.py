"""Identifiers for instances and workers: UUIDs that sort by creation time.

Version-7 UUIDs (48-bit millisecond timestamp, then a counter, then random
bits) keep index inserts local and make "newest first" a matter of ordering
by id. Within one process ids strictly increase, even inside a millisecond;
across processes they are ordered to the millisecond. The timestamp only
orders ids: no lease or deadline is ever computed from it.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

from ..errors import UnknownInstance, UnknownWorker

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def new_id() -> str:
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > _COUNTER_MAX:
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        counter = _counter
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand
    return str(uuid.UUID(int=value))


def parse_id(value: object) -> str | None:
    """The canonical form of a UUID string, or None when ``value`` is not one."""
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def worker_uuid(worker_id: object) -> str:
    """A worker id in canonical form; anything that is not a UUID is an unknown worker.

    Checked before it reaches SQL, where a malformed id would be a cast error.
    """
    parsed = parse_id(worker_id)
    if parsed is None:
        raise UnknownWorker(str(worker_id))
    return parsed


def instance_uuid(instance_id: object) -> str:
    """An instance id in canonical form; anything that is not a UUID is an unknown instance."""
    parsed = parse_id(instance_id)
    if parsed is None:
        raise UnknownInstance(str(instance_id))
    return parsed
