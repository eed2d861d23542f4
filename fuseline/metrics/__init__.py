"""Prometheus metrics of workers and queues (``prometheus-client``).

- :class:`WorkerMetrics`: the observer a :class:`~fuseline.engines.Worker`
  takes (``Worker(..., observer=WorkerMetrics())``): ``fuseline_steps_total``,
  ``fuseline_step_duration_seconds``, ``fuseline_claim_seconds``,
  ``fuseline_report_seconds``.
- :class:`QueueCollector`: ``fuseline_queue_depth``,
  ``fuseline_queue_oldest_age_seconds`` and ``fuseline_workers_alive``, read
  from a SqlBroker's database by one query at most once per cache period.
- :class:`MetricsServer`: ``/metrics`` over HTTP.

``fuseline worker run --metrics-port P`` wires the three together; the
README's "Metrics" says what each series means.
"""

from .http import MetricsServer
from .queues import QueueCollector
from .steps import WorkerMetrics

__all__ = ["MetricsServer", "QueueCollector", "WorkerMetrics"]
