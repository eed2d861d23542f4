"""Every process that imports the same module computes the same names, schema and workflow id.

Workers and the processes that dispatch instances import workflow modules
separately; if they disagreed on a step name or the schema hash, the broker
would refuse the registration or hand out steps nobody knows. ``PYTHONHASHSEED``
differs per process so that set or dict-order bugs show up.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULE = HERE / "determinism_workflows.py"

PRINT_SCHEMA_AND_ID = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import determinism_workflows as module
print(module.workflow.to_schema().to_json())
print(module.workflow.workflow_id)
"""


def run_python(args: list[str], *, hash_seed: str, cwd: Path) -> bytes:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, env=env, cwd=cwd, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def test_two_processes_with_different_hash_seeds_print_byte_identical_schemas(tmp_path: Path) -> None:
    outputs = [
        run_python(["-c", PRINT_SCHEMA_AND_ID], hash_seed=seed, cwd=tmp_path) for seed in ("1", "2", "987654")
    ]

    assert outputs[0] == outputs[1] == outputs[2]
    schema_line, id_line = outputs[0].decode().splitlines()
    schema = json.loads(schema_line)
    assert id_line == schema["workflow_id"]
    assert id_line.startswith("notify-")
    # the module really exercises what could come out in a different order
    assert [s["name"] for s in schema["steps"]] == [
        "fetch_urls",
        "parse_pages",
        "score",
        "score_2",
        "enrich",
        "decide",
        "publish",
        "human review",
        "merge",
        "notify",
        "archive",
    ]
    assert schema["or_groups"] == [
        {"members": ["publish", "human review"], "param": "outcome", "step": "merge"}
    ]
    assert sorted(e["action"] for e in schema["edges"] if e["action"]) == ["publish", "review"]
    assert len(schema["conditions"]) == 2
    assert schema["policies"] == [
        {"config": {"backoff": 2.0, "max_retries": 1, "max_wait": None, "wait": 0.0}, "type": "retry"},
        {"config": {"seconds": 60}, "type": "timeout"},
    ]


def test_the_schema_in_this_process_matches_a_fresh_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    module = importlib.import_module("determinism_workflows")

    fresh = run_python(["-c", PRINT_SCHEMA_AND_ID], hash_seed="3", cwd=tmp_path).decode()

    assert fresh == f"{module.workflow.to_schema().to_json()}\n{module.workflow.workflow_id}\n"


def test_running_the_module_as_a_script_gives_the_workflow_id_it_has_when_imported(tmp_path: Path) -> None:
    imported = run_python(["-c", PRINT_SCHEMA_AND_ID], hash_seed="5", cwd=tmp_path).decode().splitlines()[1]

    as_script = run_python([str(MODULE)], hash_seed="6", cwd=tmp_path).decode()

    assert as_script == f"{imported}\n"


def test_importing_the_library_does_not_load_the_cli_or_database_dependencies(tmp_path: Path) -> None:
    code = (
        "import sys, json\n"
        "import fuseline, fuseline.broker, fuseline.engines, fuseline.clients, fuseline.policies\n"
        "heavy = ('typer', 'alembic', 'rich', 'sqlalchemy', 'click', 'psycopg')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fuseline'))))\n"
    )

    loaded_heavy, loaded_fuseline = (
        run_python(["-c", code], hash_seed="0", cwd=tmp_path).decode().splitlines()
    )

    assert json.loads(loaded_heavy) == []
    # the import really happened
    assert {"fuseline.broker.memory", "fuseline.engines.process", "fuseline.policies"} <= set(
        json.loads(loaded_fuseline)
    )
