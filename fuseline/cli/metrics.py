"""``fuseline worker run --metrics-port P``: one ``/metrics`` endpoint for all the worker processes.

With one process (``--concurrency 1``) the worker counts in
prometheus_client's default registry and serves it, together with the
process's own series (CPU, memory, ...) and anything the workflow modules
registered there. With N processes the supervisor serves one endpoint for
all of them, through prometheus_client's multiprocess mode: each worker
process writes its counters to files in a fresh temporary folder
(``PROMETHEUS_MULTIPROC_DIR``, set before any module imports
prometheus_client and removed when the command ends) and a scrape adds them
up. Either way the queue gauges are read by the serving process alone, on
one connection of its own, so the port is one target however many
processes run. Nothing here imports prometheus_client before that folder is
chosen.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ..engines.observer import WorkerObserver
    from ..metrics import MetricsServer, QueueCollector
    from ..workflow.workflow import Workflow

logger = logging.getLogger("fuseline.worker")

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        envvar="FUSELINE_METRICS_PORT",
        help="Serve Prometheus metrics at http://HOST:PORT/metrics (one endpoint for all the "
        "processes), e.g. --metrics-port 9100.",
    ),
]
MetricsHost = Annotated[
    str,
    typer.Option(
        "--metrics-host",
        envvar="FUSELINE_METRICS_HOST",
        help="Address the metrics endpoint listens on, e.g. --metrics-host 127.0.0.1 to keep it local.",
    ),
]
#: Every interface (see :data:`fuseline.metrics.http.DEFAULT_HOST`; not imported: that imports
#: prometheus_client, which must wait for the multiprocess folder).
DEFAULT_METRICS_HOST = "0.0.0.0"  # noqa: S104


class MetricsEndpoint:
    """The ``/metrics`` of one ``worker run``: chosen before the workflow modules load
    (:meth:`before_loading`), bound before the workers start (:meth:`bind`), served once they
    run (:meth:`start`)."""

    def __init__(self, host: str, port: int, processes: int) -> None:
        self.host = host
        self.port = port
        #: Where the worker processes write their counters (multiprocess mode), or None.
        self.directory: str | None = None
        if processes > 1:
            self.directory = tempfile.mkdtemp(prefix="fuseline-metrics-")
            os.environ[MULTIPROCESS_ENV] = self.directory
            # Also when the command stops before close() (a module that fails to load, a port in
            # use); worker processes leave through os._exit and never run it.
            atexit.register(shutil.rmtree, self.directory, ignore_errors=True)
        self.server: MetricsServer | None = None
        self.collector: QueueCollector | None = None

    @classmethod
    def before_loading(cls, host: str, port: int | None, processes: int) -> MetricsEndpoint | None:
        return None if port is None else cls(host, port, processes)

    def bind(self, url: str | None, lease_seconds: float, workflows: list[Workflow]) -> None:
        """Bind the port (in use: one line, exit 1) and set up the registry it serves; without a
        database ``url`` (workers behind ``fuseline server``) the queue gauges are the server's."""
        from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics
        from prometheus_client.multiprocess import MultiProcessCollector

        from ..broker.scheduling import scheduling_of
        from ..metrics import MetricsServer, QueueCollector
        from .common import fail

        # The process is the command's: leave out the ``_created`` series of every counter and
        # histogram, as multiprocess mode does, so both modes show the same series.
        disable_created_metrics()
        registry = REGISTRY
        if self.directory is not None:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.directory)
        served = [wf for parent in workflows for wf in (parent, *parent.children)]
        always = {(wf.workflow_id, q) for wf in served for q in scheduling_of(wf.to_schema()).queues}
        if url is not None:
            self.collector = QueueCollector(url, dead_after=2 * lease_seconds, queues=always)
            registry.register(self.collector)
        try:
            self.server = MetricsServer(registry, self.host, self.port)
        except OSError as exc:
            self.close()
            fail(f"cannot serve metrics on {self.host}:{self.port}: {exc.strerror or exc}")

    def start(self) -> None:
        """Serve (after the worker processes are forked: no serving thread is ever forked)."""
        assert self.server is not None
        self.server.start()
        logger.info("serving metrics at %s", self.server.url)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.collector is not None:
            if self.directory is None:
                from prometheus_client import REGISTRY

                REGISTRY.unregister(self.collector)
            self.collector.close()
            self.collector = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            os.environ.pop(MULTIPROCESS_ENV, None)
            self.directory = None


def worker_observer() -> WorkerObserver:
    """What a worker process counts with (in the default registry, or the multiprocess files)."""
    from ..metrics import WorkerMetrics

    return WorkerMetrics()
