"""Repairs through the CLI (issue 13): ``instances retry --from``, ``steps skip``,
``steps set-output``, each with a ``--dry-run`` that changes nothing, on real workers."""

from __future__ import annotations

import getpass

from tests.cli.conftest import on_backend
from tests.cli.helpers import Cli, assert_one_line_error

pytestmark = on_backend("sqlite")


def _failed(cli: Cli) -> tuple[str, str]:
    marker = cli.cwd / "marker"
    marker.touch()
    instance_id = cli.submit("flows:flaky", "--input", f"marker={marker}")
    assert cli.burst("flows:flaky").returncode == 0
    assert cli.show(instance_id)["status"] == "FAILED"
    return instance_id, str(marker)


def _repaired(cli: Cli, instance_id: str) -> list[str]:
    return [e["detail"] for e in cli.show(instance_id)["events"] if e["kind"] == "repaired"]


def test_retry_from_a_step_with_a_dry_run_first(cli: Cli) -> None:
    instance_id, _ = _failed(cli)
    before = cli.show(instance_id)

    dry = cli.ok("instances", "retry", instance_id, "--from", "prepare", "--dry-run")
    assert "dry run, nothing changed: would retry --from 'prepare'" in dry.stdout
    assert "FAILED -> RUNNING" in dry.stdout and "fragile" in dry.stdout
    assert cli.show(instance_id) == before

    (cli.cwd / "marker").unlink()
    done = cli.ok("instances", "retry", instance_id, "--from", "prepare")
    assert "retry --from 'prepare'" in done.stdout and "dry run" not in done.stdout
    assert cli.burst("flows:flaky").returncode == 0
    final = cli.show(instance_id)
    assert (final["status"], final["result"]) == ("SUCCEEDED", "prepared and done")
    assert _repaired(cli, instance_id) == [f"retry --from 'prepare' by {getpass.getuser()}: prepare, fragile"]


def test_set_output_and_skip_with_dry_runs(cli: Cli) -> None:
    instance_id, _ = _failed(cli)
    before = cli.show(instance_id)
    dry = cli.ok("steps", "set-output", instance_id, "fragile", "--result", '"by hand"', "--dry-run")
    assert "would set-output 'fragile'" in dry.stdout and "FAILED -> SUCCEEDED" in dry.stdout
    assert cli.show(instance_id) == before

    cli.ok("steps", "set-output", instance_id, "fragile", "--result", '"by hand"')
    shown = cli.show(instance_id)
    assert (shown["status"], shown["result"]) == ("SUCCEEDED", "by hand")

    other, _ = _failed(cli)
    assert "would skip 'fragile'" in cli.ok("steps", "skip", other, "fragile", "--dry-run").stdout
    cli.ok("steps", "skip", other, "fragile")
    skipped = cli.show(other)
    assert skipped["status"] == "SUCCEEDED"
    assert {s["name"]: s["state"] for s in skipped["steps"]}["fragile"] == "SKIPPED"
    assert len(_repaired(cli, other)) == 1


def test_bad_repairs_are_one_line_errors_and_change_nothing(cli: Cli) -> None:
    instance_id, _ = _failed(cli)
    before = cli.show(instance_id)

    assert_one_line_error(cli.run("instances", "retry", instance_id, "--from", "nope"), 1, "nope")
    assert_one_line_error(cli.run("steps", "skip", instance_id, "prepare"), 1, "'prepare'", "SUCCEEDED")
    bad_json = cli.run("steps", "set-output", instance_id, "fragile", "--result", "{nope")
    assert bad_json.returncode == 2 and "not JSON" in bad_json.stderr and "Traceback" not in bad_json.stderr
    no_from = cli.run("instances", "retry", instance_id, "--dry-run")
    assert no_from.returncode == 2 and "--dry-run needs --from" in no_from.stderr
    assert cli.show(instance_id) == before
