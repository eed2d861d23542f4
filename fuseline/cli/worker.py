"""``fuseline worker run``: worker processes that claim, run and report steps."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..engines.retry import reconnect_delay
from ..workflow.workflow import Workflow
from .common import fail, masked_url, open_broker, settings
from .durations import DEFAULT_RETENTION, RetentionOption, duration_option
from .remote import accepts_server

if TYPE_CHECKING:
    from ..broker import Broker
    from ..engines.worker import Worker
from .loading import load_workflow
from .metrics import DEFAULT_METRICS_HOST, MetricsEndpoint, MetricsHost, MetricsPort, worker_observer

worker_app = typer.Typer(
    help="Run worker processes.\n\nExample: fuseline worker run my_app.flows:etl --concurrency 4",
    no_args_is_help=True,
)

logger = logging.getLogger("fuseline.worker")

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True)
class WorkerOptions:
    url: str
    specs: tuple[str, ...]
    lease_seconds: float
    poll_interval: float
    burst: bool
    log_level: str
    listen: bool = True
    #: Seconds after which finished instances are deleted (None: never; 7 days by default).
    retention: float | None = 7 * 86400.0
    prefetch: int = 1
    #: Steps each process runs at once (``--slots``).
    slots: int = 1
    #: The queues to claim from; None: every queue of the workflows.
    queues: tuple[str, ...] | None = None
    #: Whether the workers count for Prometheus (``--metrics-port``).
    metrics: bool = False
    #: ``--server``: work through a fuseline server (no database credentials), with ``token``.
    server: str | None = None
    token: str | None = field(default=None, repr=False)


@worker_app.command("run")
@accepts_server
def run(
    ctx: typer.Context,
    workflows: Annotated[
        list[str],
        typer.Argument(metavar="MODULE:WORKFLOW...", help="Workflows to run, e.g. my_app.flows:etl."),
    ],
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Worker processes to start.")
    ] = 1,
    burst: Annotated[
        bool, typer.Option("--burst", help="Exit (code 0) once no instance of these workflows is running.")
    ] = False,
    lease_seconds: Annotated[
        float,
        typer.Option(min=0.1, help="How long a claimed step stays reserved without a heartbeat."),
    ] = 30.0,
    poll_interval: Annotated[
        float, typer.Option(min=0.001, help="Seconds between polls when no step is ready.")
    ] = 0.5,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    listen: Annotated[
        bool,
        typer.Option(
            "--listen/--no-listen",
            help="Wake up on PostgreSQL notifications when work is queued (--no-listen: poll only, "
            "e.g. behind PgBouncer in transaction mode).",
        ),
    ] = True,
    prefetch: Annotated[
        int,
        typer.Option(
            min=1,
            help="Steps each process claims at a time; their reports are sent in batches. Above 1 "
            "suits many short steps: fewer database round trips, but a killed worker re-runs the "
            "finished steps it had not reported yet.",
        ),
    ] = 1,
    slots: Annotated[
        int,
        typer.Option(
            min=1,
            help="Steps each process runs at once: async steps on one event loop, plain steps on "
            "threads, each with its own lease. For steps that mostly wait (APIs, databases). Each "
            "claim takes as many steps as there are free slots, so --prefetch is for one slot only; "
            "e.g. --slots 100.",
        ),
    ] = 1,
    retention: RetentionOption = DEFAULT_RETENTION,
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-q",
            metavar="QUEUE",
            help="Claim only the steps of this queue; repeat it for several [default: every queue of "
            "these workflows], e.g. --queue gpu --queue default.",
        ),
    ] = None,
    metrics_port: MetricsPort = None,
    metrics_host: MetricsHost = DEFAULT_METRICS_HOST,
) -> None:
    """Run worker processes for one or more workflows until stopped.

    Each process claims ready steps, runs them and reports back, logging one
    line per step. SIGTERM or Ctrl-C stops gracefully: the step in hand is
    finished and reported, then the worker exits 0. A second signal stops at
    once and hands the step back to the queue for another worker.

    With --queue it claims only the steps of those queues (a step's queue is
    Step(queue="gpu") in the workflow, "default" otherwise), e.g. to keep GPU
    steps on GPU machines.

    Running workers also delete what finished longer ago than --retention
    (7 days by default), a few hundred rows at a time; see `fuseline db prune`.

    Example: fuseline worker run my_app.flows:etl --concurrency 4

    With --slots N each process runs up to N steps at once (AsyncSteps on one
    event loop, plain steps on threads), for steps that mostly wait on I/O;
    a graceful stop finishes every running step. The processes of
    --concurrency each have their own slots.

    Example: fuseline worker run my_app.flows:train --queue gpu

    Example: fuseline worker run my_app.flows:fetch --slots 100

    Example: fuseline worker run my_app.flows:etl --concurrency 4 --metrics-port 9100
    """
    level = log_level.upper()
    if level not in LOG_LEVELS:
        raise typer.BadParameter(
            f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}", param_hint="--log-level"
        )
    if slots > 1 and prefetch > 1:
        raise typer.BadParameter(
            "cannot be combined with --slots: each claim takes as many steps as there are free slots",
            param_hint="--prefetch",
        )
    wanted_queues = checked_queues(queues)
    retention_seconds = duration_option(ctx, "retention", retention, "--retention")
    # Before the workflow modules load: they may import prometheus_client, which reads its mode once.
    metrics = MetricsEndpoint.before_loading(metrics_host, metrics_port, concurrency)
    loaded = [load_workflow(spec) for spec in workflows]
    configure_logging(level)
    check_before_starting(ctx, loaded, lease_seconds)
    server = settings(ctx).server_url
    if metrics is not None:  # a port in use is one line and exit 1, before any worker starts
        metrics.bind(None if server else settings(ctx).url, lease_seconds, loaded)
    options = WorkerOptions(
        url=settings(ctx).url,
        specs=tuple(workflows),
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        burst=burst,
        log_level=level,
        listen=listen,
        prefetch=prefetch,
        slots=slots,
        retention=retention_seconds or None,
        queues=wanted_queues,
        metrics=metrics is not None,
        server=server,
        token=settings(ctx).server_token,
    )
    serving = (
        "" if wanted_queues is None else f", {plural('queue', wanted_queues)} {', '.join(wanted_queues)}"
    )
    logger.info(
        "starting %d worker process%s%s for %s on %s%s",
        concurrency,
        "" if concurrency == 1 else "es",
        "" if slots == 1 else f" of {slots} slots",
        ", ".join(f"{wf.workflow_id}@{wf.version}" for wf in loaded),
        masked_url(ctx),
        serving,
    )
    if wanted_queues is not None:
        warn_about_idle_queues(loaded, wanted_queues)
    if metrics is None:
        if concurrency == 1:
            raise typer.Exit(work_in_this_process(options, loaded))
        raise typer.Exit(supervise(options, concurrency))
    try:
        if concurrency == 1:
            metrics.start()
            raise typer.Exit(work_in_this_process(options, loaded))
        raise typer.Exit(supervise(options, concurrency, started=metrics.start))
    finally:
        metrics.close()


def checked_queues(queues: list[str] | None) -> tuple[str, ...] | None:
    """``--queue`` values, each a valid queue name (else a usage error), without repeats."""
    from ..errors import WorkflowDefinitionError
    from ..workflow.step import check_queue_name

    if not queues:
        return None
    for queue in queues:
        try:
            check_queue_name(queue)
        except WorkflowDefinitionError as exc:
            raise typer.BadParameter(str(exc), param_hint="--queue") from None
    return tuple(dict.fromkeys(queues))


def warn_about_idle_queues(loaded: list[Workflow], queues: tuple[str, ...]) -> None:
    """A queue no step of these workflows uses is probably a typo: say so (the worker still runs,
    as a later version of a workflow may use it)."""
    from ..broker.scheduling import scheduling_of

    used = set().union(*(scheduling_of(wf.to_schema()).queues for wf in loaded))
    unused = [q for q in queues if q not in used]
    if unused:
        logger.warning(
            "no step of these workflows is in %s %s (their queues: %s)",
            plural("queue", unused),
            ", ".join(unused),
            ", ".join(sorted(used)) or "none",
        )


def plural(word: str, items: Sequence[object]) -> str:
    return word if len(items) == 1 else f"{word}s"


def check_before_starting(ctx: typer.Context, loaded: list[Workflow], lease_seconds: float) -> None:
    """Check the database and the definitions once, before any process starts: a wrong URL, a
    database not migrated or a changed definition is one clear line and exit 1. A database that
    is only busy or restarting is not: the workers wait for it themselves."""
    from ..broker.sql import SqlBroker
    from ..errors import DatabaseBusy, FuselineError

    try:
        broker = (
            open_broker(ctx)
            if settings(ctx).server_url
            else SqlBroker.for_url(settings(ctx).url, lease_seconds=lease_seconds)
        )
        try:
            broker.register_workflows([wf.to_schema() for wf in loaded])
        finally:
            broker.close()
    except DatabaseBusy as exc:
        logger.warning("cannot check the database yet (%s); the workers will wait for it", first_line(exc))
    except FuselineError as exc:
        fail(first_line(exc))


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s [pid %(process)d] %(message)s",
        force=True,
    )
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLevelName(level)))
    # One line per HTTP request of a worker behind a server would drown the step lines.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLevelName(level)))


def work_in_this_process(options: WorkerOptions, workflows: list[Workflow] | None = None) -> int:
    """One worker: register, work until stopped (or idle, with --burst), deregister.

    Returns the exit code: 0 after a graceful stop, 130 after an immediate one.
    """
    from ..errors import FuselineError

    if workflows is None:
        workflows = [load_workflow(spec) for spec in options.specs]
    configure_logging(options.log_level)
    try:
        broker, engine = start_worker_when_connections_free(options, workflows)
    except FuselineError as exc:
        logger.error("%s", first_line(exc))
        return 1
    keys = [(wf.workflow_id, wf.version) for wf in workflows]
    signals = 0

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            logger.info(
                "%s received: finishing the step in hand, then stopping (signal again to stop at once)",
                signal.Signals(signum).name,
            )
            engine.stop()
        else:
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info("worker %s started (pid %d)", engine.worker_id, os.getpid())
    code = 0
    try:
        idle = (lambda: not broker.has_running_instances(keys)) if options.burst else None
        engine.work(block=True, poll_interval=options.poll_interval, until=idle)
    except KeyboardInterrupt:
        logger.warning("stopping at once: the step in hand goes back to the queue")
        code = 130
    except FuselineError as exc:
        logger.error("worker %s stopped: %s", engine.worker_id, first_line(exc))
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            engine.close()
        except FuselineError as exc:
            logger.warning("could not mark worker %s stopped: %s", engine.worker_id, exc)
        broker.close()
    logger.info("worker %s stopped after %d steps", engine.worker_id, engine.steps_run)
    return code


def start_worker_when_connections_free(
    options: WorkerOptions, workflows: list[Workflow]
) -> tuple[Broker, Worker]:
    """:func:`start_worker`, waiting (growing, jittered pauses) while the server is full or starting
    up. Any other error, an unreachable server included, is an answer: the worker exits 1."""
    from ..errors import DatabaseBusy

    failures = 0
    while True:
        try:
            return start_worker(options, workflows)
        except DatabaseBusy as exc:
            delay = reconnect_delay(failures)
            failures += 1
            logger.warning("database busy (%s); trying again in %.3fs", first_line(exc), delay)
            time.sleep(delay)


def start_worker(options: WorkerOptions, workflows: list[Workflow]) -> tuple[Broker, Worker]:
    """Open the broker and register the worker; DatabaseUnavailable (a busy or restarting
    database, ``max_connections`` reached) leaves nothing open behind, so the caller retries."""
    from ..broker.sql import SqlBroker
    from ..clients import LocalBrokerClient
    from ..engines.worker import Worker

    broker: Broker
    if options.server is not None:  # the server's broker decides leases, listening and retention
        from ..clients.http import HttpBrokerClient

        broker = HttpBrokerClient(options.server, options.token)
    else:
        broker = SqlBroker.for_url(
            options.url,
            lease_seconds=options.lease_seconds,
            listen=options.listen,
            retention=options.retention,
        )
    observer = worker_observer() if options.metrics else None
    try:
        return broker, Worker(
            LocalBrokerClient(broker),
            workflows,
            prefetch=options.prefetch,
            queues=options.queues,
            observer=observer,
            slots=options.slots,
        )
    except BaseException:
        broker.close()
        raise


def first_line(error: BaseException) -> str:
    """An error as one log line (database errors can carry the statement on further lines)."""
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__


def _child(options: WorkerOptions) -> None:
    # Ctrl-C reaches the whole process group; the supervisor forwards it as
    # SIGTERM, so children listen to SIGTERM only and never count one twice.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(work_in_this_process(options))


def supervise(options: WorkerOptions, concurrency: int, started: Callable[[], None] | None = None) -> int:
    """Start ``concurrency`` worker processes and pass stop signals on to them; ``started`` is
    called once they are forked (the metrics endpoint serves from then on)."""
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    children = [
        context.Process(target=_child, args=(options,), name=f"fuseline-worker-{n}")
        for n in range(concurrency)
    ]
    for child in children:
        child.start()
    if started is not None:
        started()

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for child in children:
        child.join()
    codes = [child.exitcode or 0 for child in children]
    failed = [(c.pid, code) for c, code in zip(children, codes, strict=True) if code not in (0, 130)]
    for pid, code in failed:
        logger.error("worker process %s exited with code %s", pid, code)
    if failed:
        return 1
    return 130 if 130 in codes else 0
