"""Item 17, injection: hostile names and inputs round-trip exactly or are refused; no SQL is built from text.

Workflow ids, versions, step names and inputs full of ``'; DROP TABLE x; --``,
quotes, backslashes, emoji, NUL and 10,000 characters go through dispatch,
claim, report, ``get_instance`` and ``fuseline instances show --json`` on both
dialects, next to a table ``x`` that must survive. Names are checked when a
workflow is defined: at most 200 characters (versions 100), no control
characters (PostgreSQL cannot store NUL in text); inputs and results are JSON,
where NUL is written ``\\u0000``.

The matrix also mentions a configurable table prefix: fuseline has none (its
tables are always ``fuseline_*``), so there is no prefix to inject into.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fuseline import Status, Step, StepReport, Workflow
from fuseline.broker.sql import SqlBroker
from fuseline.errors import WorkflowDefinitionError
from fuseline.workflow.schema import WorkflowSchema
from tests.contract.support import report
from tests.reliability import flows
from tests.reliability.support import FLOWS, RUFF, execute, fuseline, ok, table_names

HOSTILE = [
    "'; DROP TABLE x; --",
    '"; DROP TABLE x; --',
    "') OR ('1'='1",
    "back\\slash \\' \\\" \\\\",
    "emoji 🚀👩🏽‍💻 Ωμέγα 日本語 \u2028\u2029",
    "nul \x00 in the middle, and other controls \x01\x1f\x7f",
    "%s %(x)s :name $1 ? {0}",
    "x" * 10_000,
]


def hostile_inputs() -> dict[str, Any]:
    inputs: dict[str, Any] = {"payload": {f"k{i}-{s[:40]}": s for i, s in enumerate(HOSTILE)}}
    for i, s in enumerate(HOSTILE):
        inputs[f"{i}:{s}"] = [s, {s: s}]
    inputs["payload"]["list"] = HOSTILE
    return inputs


def _same(a: Any, b: Any) -> bool:
    """Equal, key order included."""
    return json.dumps(a, ensure_ascii=False) == json.dumps(b, ensure_ascii=False)


@pytest.fixture
def guarded_url(db_url: str) -> str:
    """The database with an application table ``x`` that an injected DROP TABLE would remove."""
    execute(db_url, "CREATE TABLE x (id integer)", "INSERT INTO x VALUES (42)")
    yield db_url
    execute(db_url, "DROP TABLE IF EXISTS x")


def test_hostile_names_and_inputs_round_trip_through_the_cli_and_the_api(
    guarded_url: str, tmp_path: Path
) -> None:
    url = guarded_url
    tables = table_names(url)
    inputs = hostile_inputs()
    workflow = flows.evil
    first, second = flows.EVIL_FIRST, flows.EVIL_SECOND

    # -- the command line: submit, a worker, show --json
    submitted = ok(fuseline("submit", f"{FLOWS}:evil", "--inputs-json", json.dumps(inputs), url=url))
    cli_id = submitted.stdout.strip()
    ok(fuseline("worker", "run", f"{FLOWS}:evil", "--burst", url=url))
    shown = json.loads(ok(fuseline("instances", "show", cli_id, "--json", url=url)).stdout)

    assert shown["workflow_id"] == flows.EVIL_WORKFLOW_ID
    assert shown["version"] == flows.EVIL_VERSION
    assert shown["status"] == "SUCCEEDED"
    assert _same(shown["inputs"], inputs)
    assert [(s["name"], s["state"]) for s in shown["steps"]] == [(first, "SUCCEEDED"), (second, "SUCCEEDED")]
    assert _same(shown["steps"][0]["result"], inputs["payload"])
    assert _same(shown["result"], {"echo": inputs["payload"]})
    assert {e["step"] for e in shown["events"]} == {None, first, second}

    # -- the API: dispatch, claim, report, get_instance
    broker = SqlBroker(url)
    try:
        worker = broker.register_worker([workflow.to_schema()])
        instance_id = workflow.dispatch(broker, inputs)
        claimed = broker.get_step(worker)
        assert claimed is not None
        assert (claimed.workflow_id, claimed.version, claimed.step_name) == (
            flows.EVIL_WORKFLOW_ID,
            flows.EVIL_VERSION,
            first,
        )
        assert _same(claimed.payload["workflow_inputs"], inputs)
        result = {"hostile": HOSTILE, **{s: s for s in HOSTILE}}
        broker.report_step(worker, _success(claimed, result))
        nxt = broker.get_step(worker)
        assert nxt is not None and nxt.step_name == second
        assert _same(nxt.payload["results"], {first: result})
        broker.report_step(worker, _success(nxt, [result]))

        info = broker.get_instance(instance_id)
        assert info.status is Status.SUCCEEDED
        assert _same(info.inputs, inputs)
        assert _same(info.step(first).result, result)
        assert _same(info.result, [result])
        listed = broker.list_instances(workflow_id=flows.EVIL_WORKFLOW_ID)
        assert {i.instance_id for i in listed} == {cli_id, instance_id}
    finally:
        broker.close()

    # -- the tables are intact
    assert table_names(url) == tables
    assert execute(url, "SELECT id FROM x")[0] == [(42,)]
    assert execute(url, "SELECT count(*) FROM fuseline_steps")[0] == [(4,)]


def _success(assignment: Any, result: Any) -> StepReport:
    return report(assignment, Status.SUCCEEDED, result, version=assignment.version)


class Echo(Step):
    def run_step(self, value: str = "") -> str:
        return value


LONGEST = {"workflow_id": "🚀" * 200, "version": "Ω" * 100, "step": "'" * 100 + '"' * 99 + "\\"}


def test_names_of_the_longest_allowed_length_round_trip(guarded_url: str) -> None:
    """200 characters of emoji are 800 bytes: the limit counts characters, on both dialects."""
    workflow = Workflow(
        outputs=Echo(name=LONGEST["step"]), workflow_id=LONGEST["workflow_id"], version=LONGEST["version"]
    )
    broker = SqlBroker(guarded_url)
    try:
        worker = broker.register_worker([workflow.to_schema()])
        instance_id = workflow.dispatch(broker, {"value": "\x00"})
        claimed = broker.get_step(worker)
        assert claimed is not None and claimed.step_name == LONGEST["step"]
        broker.report_step(worker, _success(claimed, claimed.payload["workflow_inputs"]["value"]))
        info = broker.get_instance(instance_id)
    finally:
        broker.close()
    assert (info.workflow_id, info.version) == (LONGEST["workflow_id"], LONGEST["version"])
    assert info.result == "\x00"
    assert execute(guarded_url, "SELECT id FROM x")[0] == [(42,)]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("workflow_id", "w" * 10_000, "10000 characters long; the limit is 200"),
        ("workflow_id", "w" * 201, "201 characters long; the limit is 200"),
        ("version", "v" * 101, "101 characters long; the limit is 100"),
        ("step", "s" * 10_000, "10000 characters long; the limit is 200"),
        ("workflow_id", "a\x00b", "contains control characters"),
        ("version", "1\n", "contains control characters"),
        ("step", "tab\there", "contains control characters"),
        ("step", "del\x7f", "contains control characters"),
        ("workflow_id", "", "non-empty string"),
    ],
    ids=[
        "id-10k",
        "id-201",
        "version-101",
        "step-10k",
        "id-nul",
        "version-newline",
        "step-tab",
        "step-del",
        "empty",
    ],
)
def test_names_too_long_or_with_control_characters_are_refused_clearly(
    field: str, value: str, message: str
) -> None:
    names = {"workflow_id": "ok", "version": "1", "step": "echo"} | {field: value}
    with pytest.raises(WorkflowDefinitionError, match=message):
        Workflow(outputs=Echo(name=names["step"]), workflow_id=names["workflow_id"], version=names["version"])
    # a schema built by hand (or read back from a database) is checked the same way
    good = Workflow(outputs=Echo(name="echo"), workflow_id="ok", version="1").to_schema().to_dict()
    if field == "step":
        good["steps"][0]["name"] = value
        good["outputs"] = [value]
    else:
        good[field] = value
    with pytest.raises(WorkflowDefinitionError, match=message):
        WorkflowSchema.from_json(json.dumps(good))


def test_ruff_finds_no_sql_built_from_strings_in_fuseline(tmp_path: Path) -> None:
    clean = subprocess.run(
        [str(RUFF), "check", "--no-cache", "--select", "S608", "fuseline"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr

    # the rule works: the same command flags an f-string query
    bad = tmp_path / "bad.py"
    bad.write_text("def q(name):\n    return f\"SELECT * FROM fuseline_steps WHERE name = '{name}'\"\n")
    flagged = subprocess.run(
        [str(RUFF), "check", "--no-cache", "--isolated", "--select", "S608", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert flagged.returncode == 1 and "S608" in flagged.stdout, flagged.stdout + flagged.stderr
