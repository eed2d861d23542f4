"""``fuseline worker run --metrics-port``: a real worker serves ``/metrics``; its counters are what it did.

The worker runs as the console script on PostgreSQL, with one process and
with two (one endpoint adding both up); the test dispatches through a
broker of its own (faster than a ``submit`` process per instance). It scrapes over HTTP and
compares the counters with the worker's own log (one line per step run)
and with the instances' final states; the queue gauges with work that no
running worker serves.
"""

from __future__ import annotations

import importlib.util
import socket
import textwrap
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fuseline.broker.sql import SqlBroker
from tests.cli.conftest import on_backend
from tests.cli.helpers import Background, Cli, assert_one_line_error, wait_for

pytestmark = on_backend("postgres")

MODULE = textwrap.dedent(
    '''
    """Workflows of the metrics test: judge fails for odd inputs, flap always (retried twice)."""

    from fuseline import Computed, Depends, Step, Workflow
    from fuseline.policies import RetryPolicy


    class Load(Step):
        def run_step(self, x: int) -> int:
            return x


    load = Load()


    class Judge(Step):
        def run_step(self, value: Computed[int] = Depends(load)) -> int:
            if value % 2:
                raise ValueError(f"{value} is odd")
            return value


    metered = Workflow(outputs=Judge(), workflow_id="metrics-metered", version="1")


    class Flap(Step):
        def run_step(self) -> None:
            raise RuntimeError("flapping")


    flapping = Workflow(
        outputs=Flap(policies=[RetryPolicy(max_retries=2)]), workflow_id="metrics-flapping", version="1"
    )


    class Parked(Step):
        def run_step(self) -> None:
            return None


    parked = Workflow(outputs=Parked(queue="slow"), workflow_id="metrics-parked", version="1")
    '''
)
#: Samples by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
OUTCOMES = ("started", "succeeded", "skipped", "failed", "retried", "lost")
#: Instances of each workflow: metered (x = 0..5: three fail), flapping, parked (no worker).
METERED, FLAPPING, PARKED = 6, 2, 3


def load_module(path: Path) -> ModuleType:
    """The workflows module the worker imports, imported here too (to dispatch its workflows)."""
    spec = importlib.util.spec_from_file_location(f"{path.stem}_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    """Every sample of ``http://127.0.0.1:port/metrics``, by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def outcomes(samples: Samples, workflow: str, step: str) -> dict[str, int]:
    return {
        outcome: int(value(samples, "fuseline_steps_total", workflow=workflow, step=step, outcome=outcome))
        for outcome in OUTCOMES
    }


def logged_runs(worker: Background, step: str) -> Counter[str]:
    """The states the worker logged for the runs of ``step`` (one line per run)."""
    return Counter(
        line.split(" state=")[1].split()[0]
        for line in worker.stderr.splitlines()
        if f" step={step} attempt=" in line
    )


def finished(samples: Samples) -> Samples | None:
    """The samples, once every run is counted (else None, to scrape again)."""
    return samples if all_finished(samples) else None


def all_finished(samples: Samples) -> bool:
    """Every run started has its outcome, the last expected ones are in, and the queue gauges
    (read at most every 5 s) have caught up with an empty queue."""
    if value(samples, "fuseline_queue_depth", workflow="metrics-metered", queue="default") != 0:
        return False
    runs = [("metrics-metered", "load"), ("metrics-metered", "judge"), ("metrics-flapping", "flap")]
    counted = [outcomes(samples, workflow, step) for workflow, step in runs]
    expected_started = [METERED, METERED, 3 * FLAPPING]
    return [c["started"] for c in counted] == expected_started and all(
        c["started"] == sum(c[o] for o in OUTCOMES[1:]) for c in counted
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_a_worker_serves_metrics_that_count_what_it_did(
    cli: Cli, processes: int, request: pytest.FixtureRequest
) -> None:
    path = cli.cwd / "metered_flows.py"
    path.write_text(MODULE)
    flows = load_module(path)
    assert cli.url is not None
    broker = SqlBroker(cli.url)
    request.addfinalizer(broker.close)
    for _ in range(PARKED):
        flows.parked.dispatch(broker)
    port = free_port()

    worker = cli.start_worker(
        "metered_flows:metered",
        "metered_flows:flapping",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        "--concurrency",
        str(processes),
    )
    worker.wait_for_log("serving metrics at http://127.0.0.1:")
    for x in range(METERED):
        flows.metered.dispatch(broker, {"x": x})
    for _ in range(FLAPPING):
        flows.flapping.dispatch(broker)
    samples = wait_for(lambda: finished(scrape(port)), 60, "every run counted")

    # What the worker did, by its own log and by the broker.
    assert outcomes(samples, "metrics-metered", "load") == {
        **dict.fromkeys(OUTCOMES, 0),
        "started": METERED,
        "succeeded": METERED,
    }
    judge = outcomes(samples, "metrics-metered", "judge")
    assert judge == {**dict.fromkeys(OUTCOMES, 0), "started": 6, "succeeded": 3, "failed": 3}
    assert logged_runs(worker, "judge") == {"SUCCEEDED": 3, "FAILED": 3}
    flap = outcomes(samples, "metrics-flapping", "flap")
    assert flap == {**dict.fromkeys(OUTCOMES, 0), "started": 6, "retried": 4, "failed": 2}
    assert logged_runs(worker, "flap") == {"FAILED": 3 * FLAPPING}
    statuses = Counter(i["status"] for i in cli.json("instances", "list", "--limit", "100"))
    assert statuses == {"SUCCEEDED": 3, "FAILED": 3 + FLAPPING, "RUNNING": PARKED}

    for workflow, step, runs in [("metrics-metered", "judge", 6), ("metrics-flapping", "flap", 6)]:
        count = value(samples, "fuseline_step_duration_seconds_count", workflow=workflow, step=step)
        assert count == runs
        assert (
            value(samples, "fuseline_step_duration_seconds_bucket", workflow=workflow, step=step, le="+Inf")
            == runs
        )
    # One claim per step run, with the report of the run before it, plus the empty claims of idling.
    assert value(samples, "fuseline_claim_seconds_count") >= METERED * 2 + 3 * FLAPPING
    assert value(samples, "fuseline_report_seconds_count") >= 0

    # The database's view: nothing left of the served workflows, the parked one untouched.
    assert value(samples, "fuseline_queue_depth", workflow="metrics-parked", queue="slow") == PARKED
    assert value(samples, "fuseline_queue_oldest_age_seconds", workflow="metrics-parked", queue="slow") > 0
    assert value(samples, "fuseline_queue_depth", workflow="metrics-metered", queue="default") == 0
    assert (
        "fuseline_queue_depth",
        frozenset({("workflow", "metrics-flapping"), ("queue", "default")}),
    ) in samples
    assert value(samples, "fuseline_workers_alive") >= processes

    worker.signal()
    assert worker.wait(30) == 0


def test_a_metrics_port_in_use_is_one_line_and_exit_1_before_any_worker_starts(cli: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        proc = cli.run(
            "worker", "run", "flows:diamond", "--metrics-host", "127.0.0.1", "--metrics-port", str(port)
        )

    assert_one_line_error(proc, 1, f"cannot serve metrics on 127.0.0.1:{port}")
    assert "worker" not in proc.stderr.split("error:")[1]
    assert cli.json("workers", "list", "--all") == []
