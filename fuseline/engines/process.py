"""``ProcessEngine``: the name the worker loop had first; it is :class:`.worker.Worker`.

``ProcessEngine`` starts no process: it is the loop a worker process runs.
The old name stays importable from here and from :mod:`fuseline.engines`,
as the same class, for the code and documents that use it.
"""

from __future__ import annotations

from .retry import RECONNECT_DELAYS
from .worker import DEFAULT_HEARTBEAT_SECONDS, IDLE_SLICE_SECONDS, REPORT_FLUSH_SECONDS, Worker

ProcessEngine = Worker

__all__ = [
    "DEFAULT_HEARTBEAT_SECONDS",
    "IDLE_SLICE_SECONDS",
    "RECONNECT_DELAYS",
    "REPORT_FLUSH_SECONDS",
    "ProcessEngine",
    "Worker",
]
