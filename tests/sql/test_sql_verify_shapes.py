"""``db verify``'s checks on shapes: each one finds the damage it names, on both databases.

The damage is made by hand with SQL on an instance that real brokers ran to
the end, so the checks are shown to fail on what they look for and to pass on
what the brokers leave behind.
"""

from __future__ import annotations

import sqlalchemy as sa

from fuseline import Status
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances, steps
from fuseline.broker.sql.verify import verify
from tests.contract import shapes
from tests.contract.support import register


def _ran(broker: SqlBroker) -> tuple[str, str]:
    """A parent and its mapped child run to the end; (parent id, child id)."""
    from tests.chaos import shape_flows

    worker = register(broker, shape_flows.nested, shape_flows.mapped)
    parent_id = shape_flows.nested.dispatch(broker, {"n": 1, "size": 3})
    shapes.run_all(broker, worker, [shape_flows.nested])
    parent = broker.get_instance(parent_id)
    assert parent.status is Status.SUCCEEDED, parent.error
    (child_id,) = parent.children
    return parent_id, child_id


def kinds(broker: SqlBroker) -> list[str]:
    return sorted(v.kind for v in verify(broker.engine))


def test_what_the_brokers_leave_behind_is_clean(broker: SqlBroker) -> None:
    _ran(broker)
    assert kinds(broker) == []


def test_an_item_whose_map_step_is_missing_is_found(broker: SqlBroker) -> None:
    _, child_id = _ran(broker)
    with broker.engine.begin() as conn:
        conn.execute(
            sa.update(steps)
            .where(steps.c.instance_id == child_id, steps.c.name == "double[1]")
            .values(item_of="gone")
        )
    assert "item_without_map" in kinds(broker)


def test_a_child_whose_parent_step_is_missing_is_found(broker: SqlBroker) -> None:
    _, child_id = _ran(broker)
    with broker.engine.begin() as conn:
        conn.execute(sa.update(instances).where(instances.c.id == child_id).values(parent_step="nowhere"))
    assert kinds(broker) == ["child_without_parent_step"]


def test_a_map_result_of_another_length_than_its_items_is_found(broker: SqlBroker) -> None:
    _, child_id = _ran(broker)
    with broker.engine.begin() as conn:
        conn.execute(
            sa.update(steps)
            .where(steps.c.instance_id == child_id, steps.c.name == "double")
            .values(result="[1, 2]")
        )
    assert kinds(broker) == ["map_items_mismatch"]
