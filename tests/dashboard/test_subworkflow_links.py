"""A SubWorkflow instance's page links to its child, and the child's page back to its parent.

A real worker (a thread on a broker of its own) runs ``contract-parent`` to the end, so the
child is the one the broker really dispatched; the links are then followed over HTTP against
the real server process, as a person clicking them would.
"""

from __future__ import annotations

import re
import time

from tests.contract.shapes import PARENT
from tests.dashboard.conftest import Site, running_worker

#: Enough for a worker to run the parent, its child and the parent's last step.
PATIENCE = 30.0


def _links(html: str) -> set[str]:
    """The instance ids the page links to."""
    return set(re.findall(r'href="/instances/([0-9a-f-]{36})"', html))


def test_parent_and_child_link_to_each_other(site: Site) -> None:
    parent_id = site.broker.dispatch_workflow(PARENT.to_schema(), {"n": 1, "mode": "m"})
    started = time.monotonic()
    with running_worker(site.database_url, PARENT):
        while site.broker.get_instance(parent_id).status.value == "RUNNING":
            assert time.monotonic() - started < PATIENCE, "the parent never finished"
            time.sleep(0.05)
    parent = site.broker.get_instance(parent_id)
    assert parent.status.value == "SUCCEEDED", parent.error
    child_id = parent.step("call").child_instance_id
    assert child_id is not None and parent.children == [child_id]
    with site.client("viewer") as client:
        parent_page = client.get(f"/instances/{parent_id}").text
        assert _links(parent_page) == {child_id}
        # the link is everywhere the child shows: the step row, the DAG's node and the facts
        assert parent_page.count(f'href="/instances/{child_id}"') == 3
        assert re.search(
            rf'<a href="/instances/{child_id}">\s*<g class="node[^"]*" data-step="call"', parent_page
        )
        assert f">{child_id[:8]}</a>" in parent_page and "<dt>Parent</dt>" not in parent_page

        child_page = client.get(f"/instances/{child_id}")
        assert child_page.status_code == 200 and "contract-child" in child_page.text
        assert "m:2" in child_page.text  # the child's step ran on the parent's inputs
        assert _links(child_page.text) == {parent_id}
        assert "<dt>Parent</dt>" in child_page.text and "(step call)" in child_page.text
        assert "<dt>Children</dt>" not in child_page.text
        back = client.get(f"/instances/{parent_id}")
        assert back.status_code == 200 and "contract-parent" in back.text
    print(f"parent and child ran in {time.monotonic() - started:.2f} s")
