"""``instances list`` filters and keyset pages (issue 13), through the CLI."""

from __future__ import annotations

from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli

pytestmark = on_backend("sqlite")


def test_pages_with_after_and_filters(cli: Cli) -> None:
    ids = [cli.submit("flows:flaky", "--input", f"marker=m{n}", "--key", f"k{n}") for n in range(5)]

    first = cli.ok("instances", "list", "--limit", "2").stdout
    assert f"next page: --after {ids[3]}" in first
    second = cli.json("instances", "list", "--limit", "2", "--after", ids[3], "--json")
    assert [i["instance_id"] for i in second] == [ids[2], ids[1]]
    keyed = cli.json("instances", "list", "--workflow", "cli-flaky", "--key", "k4", "--json")
    assert [i["instance_id"] for i in keyed] == [ids[4]]
    assert cli.json("instances", "list", "--since", "2100-01-01T00:00:00Z", "--json") == []

    no_workflow = cli.run("instances", "list", "--key", "k4")
    assert no_workflow.returncode == 2 and "add --workflow" in no_workflow.stderr
    unknown = cli.run("instances", "list", "--after", "5f0c1a7e-0000-4000-8000-000000000000")
    assert unknown.returncode == 1 and "5f0c1a7e-0000-4000-8000-000000000000" in unknown.stderr
    naive = cli.run("instances", "list", "--until", "2026-12-01T00:00:00")
    assert naive.returncode == 2 and "has no time zone" in naive.stderr
