"""The broker contract suite runs every test once per broker factory.

A *broker factory* is a callable ``(lease_seconds=30.0, max_result_bytes=1 MiB) -> Broker``
that returns a broker on an empty store (no workflows, instances or workers).
Factories are identified by an id, which becomes the test id (``test_x[memory]``).

Adding a factory:

- a plain callable: one entry in :data:`BROKER_FACTORIES`;
- a factory that needs other fixtures (a database): an entry mapping its id to
  ``None``, plus a fixture ``broker_factory_<id>`` (in any conftest.py visible
  from this folder) returning the callable. ``make_broker`` resolves it with
  ``request.getfixturevalue``, so the database fixture is only set up for the
  tests of that id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from fuseline.broker import Broker, MemoryBroker
from fuseline.broker.base import DEFAULT_LEASE_SECONDS, DEFAULT_MAX_RESULT_BYTES
from fuseline.clients import LocalBrokerClient
from fuseline.engines import ProcessEngine
from fuseline.workflow import Workflow

from . import workflows

BrokerFactory = Callable[..., Broker]


def memory_broker(
    lease_seconds: float = DEFAULT_LEASE_SECONDS, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
) -> Broker:
    return MemoryBroker(lease_seconds=lease_seconds, max_result_bytes=max_result_bytes)


#: Factory id -> factory, or None to use the fixture ``broker_factory_<id>``.
BROKER_FACTORIES: dict[str, BrokerFactory | None] = {
    "memory": memory_broker,
    "postgres": None,  # tests/conftest.py: broker_factory_postgres (a migrated database)
    "sqlite": None,  # tests/conftest.py: broker_factory_sqlite (a fresh file)
    "http": None,  # tests/conftest.py: broker_factory_http (HttpBrokerClient, a server process)
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker_id" in metafunc.fixturenames:
        ids = list(BROKER_FACTORIES)
        metafunc.parametrize("broker_id", ids, ids=ids)


@pytest.fixture
def broker_factory(request: pytest.FixtureRequest, broker_id: str) -> BrokerFactory:
    factory = BROKER_FACTORIES.get(broker_id)
    if factory is None:
        factory = request.getfixturevalue(f"broker_factory_{broker_id}")
    return factory


@pytest.fixture
def make_broker(broker_factory: BrokerFactory) -> Iterator[Callable[..., Broker]]:
    """``make_broker(lease_seconds=30.0, max_result_bytes=1 MiB)``: a new broker, closed at teardown."""
    made: list[Broker] = []

    def make(
        lease_seconds: float = DEFAULT_LEASE_SECONDS, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
    ) -> Broker:
        broker = broker_factory(lease_seconds=lease_seconds, max_result_bytes=max_result_bytes)
        made.append(broker)
        return broker

    yield make
    for broker in reversed(made):
        broker.close()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker()


@pytest.fixture
def make_engine(make_broker: Callable[..., Broker]) -> Iterator[Callable[..., ProcessEngine]]:
    """``make_engine(broker, *workflows)``: a ProcessEngine on a LocalBrokerClient, closed at teardown.

    Requesting ``make_broker`` makes the engines close before their brokers do.
    """
    engines: list[ProcessEngine] = []

    def make(broker: Broker, *flows: Workflow, **options: float) -> ProcessEngine:
        engine = ProcessEngine(LocalBrokerClient(broker), list(flows), **options)
        engines.append(engine)
        return engine

    yield make
    for engine in reversed(engines):
        engine.close()


@pytest.fixture(autouse=True)
def _reset_step_counters() -> None:
    workflows.reset()
