"""Listing instances at scale (issue 13): filters and keyset pagination, on every broker."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

from fuseline import Status
from fuseline.errors import UnknownInstance

from . import workflows as wf
from .support import UNKNOWN_IDS, claim, register, succeed


def _ids(page) -> list[str]:
    return [i.instance_id for i in page]


def test_keyset_pages_cover_every_instance_once_newest_first(broker):
    ids = [wf.SINGLE.dispatch(broker, {"x": n}) for n in range(7)]
    newest_first = list(reversed(ids))

    seen, after = [], None
    while True:
        page = broker.list_instances(limit=3, after=after)
        if not page:
            break
        seen += _ids(page)
        after = page[-1].instance_id
    assert seen == newest_first


@pytest.mark.parametrize("instance_id", UNKNOWN_IDS)
def test_paging_after_an_unknown_instance_is_refused(broker, instance_id):
    with pytest.raises(UnknownInstance):
        broker.list_instances(after=instance_id)


def test_filters_by_status_workflow_key_and_creation_time(broker):
    worker = register(broker, wf.SINGLE)
    keyed = [wf.SINGLE.dispatch(broker, {"x": n}, key=f"order-{n}") for n in range(3)]
    time.sleep(0.05)
    middle = datetime.now(timezone.utc)
    time.sleep(0.05)
    other = wf.SEQUENCE.dispatch(broker, {"x": 1})
    succeed(broker, worker, claim(broker, worker), 2)  # keyed[0] succeeds

    assert _ids(broker.list_instances(workflow_id=wf.SINGLE.workflow_id, key="order-1")) == [keyed[1]]
    assert _ids(broker.list_instances(status=Status.SUCCEEDED)) == [keyed[0]]
    assert _ids(broker.list_instances(since=middle)) == [other]
    assert _ids(broker.list_instances(until=middle)) == list(reversed(keyed))
    assert _ids(broker.list_instances(since=middle, until=middle + timedelta(hours=1), status="RUNNING")) == [
        other
    ]
    assert broker.list_instances(workflow_id=wf.SEQUENCE.workflow_id, key="order-1") == []
