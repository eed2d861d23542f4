"""The instances page over 100,000 instances: keyset pages and cached counts keep it quick.

Dispatches 100,000 instances of a one-step workflow (in batches, never run), then asks a real
server for the first page, a page deep in the list (``after`` an instance far down), filtered
pages and the live counts, printing how long each took. Nothing asserts a time (machines
differ); what is checked is that every page renders the right rows and counts.
"""

from __future__ import annotations

import re
import time

from fuseline.broker.base import InstancePage
from fuseline.states import Status
from tests.dashboard.conftest import Site
from tests.dashboard.flows import pipeline, quick

INSTANCES = 100_000
BATCH = 5_000
_ROW = re.compile(r'href="/instances/([0-9a-f-]{36})"')


def rows_of(html: str) -> list[str]:
    return _ROW.findall(html)


def test_the_instances_page_with_100k_instances(site: Site) -> None:
    schema = quick.to_schema()
    started = time.monotonic()
    for first in range(0, INSTANCES, BATCH):
        site.broker.dispatch_many(schema, [{"n": n} for n in range(first, first + BATCH)])
    site.broker.dispatch_workflow(pipeline.to_schema(), {"count": 1}, key="needle")
    print(f"\ndispatched {INSTANCES + 1:,} instances in {time.monotonic() - started:.1f} s")
    # The test may find a deep instance by offset, once; the dashboard never does.
    deep = site.broker.instances_page(InstancePage(limit=1, offset=90_000))[0].instance_id

    with site.client("viewer") as client:
        timings: dict[str, float] = {}

        def timed(name: str, path: str) -> str:
            began = time.monotonic()
            response = client.get(path)
            timings[name] = time.monotonic() - began
            assert response.status_code == 200, (path, response.text[:500])
            return response.text

        timed("first page (cold)", "/instances")
        first = timed("first page", "/instances")
        assert len(rows_of(first)) == 50 and 'id="next-page"' in first
        assert 'data-count="RUNNING">100001<' in first
        following = re.search(r'id="next-page" href="([^"]+)"', first)
        assert following is not None
        second = timed("second page", following.group(1).replace("&amp;", "&"))
        assert len(rows_of(second)) == 50 and not set(rows_of(second)) & set(rows_of(first))
        far = timed("page after instance 90,000", f"/instances?after={deep}")
        assert len(rows_of(far)) == 50
        last = timed("deep page, RUNNING only", f"/instances?after={rows_of(far)[0]}&status=RUNNING")
        assert rows_of(last)
        needle = timed("by key", "/instances?key=needle")
        assert len(rows_of(needle)) == 1
        by_workflow = timed("by workflow", "/instances?workflow=dash-pipeline")
        assert len(rows_of(by_workflow)) == 1 and 'data-count="RUNNING">1<' in by_workflow
        none = timed("a status none has", "/instances?status=FAILED")
        assert rows_of(none) == [] and "No instances match." in none
        began = time.monotonic()
        counts = client.get("/counts.json").json()
        timings["counts.json"] = time.monotonic() - began
        assert counts[Status.RUNNING.value] == INSTANCES + 1
    for name, seconds in timings.items():
        print(f"  {name:<28} {seconds * 1000:8.1f} ms")
