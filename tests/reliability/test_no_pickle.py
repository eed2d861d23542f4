"""Item 18, no pickle: fuseline never unpickles or evaluates, and a planted pickle is refused, not run.

Compare Airflow CVE-2023-50943 (XCom pickling) and DBOS, whose default
serializer is pickle. The source is scanned for every way to deserialise
code; then a pickle whose unpickling would create a file is written straight
into the ``result`` and ``inputs`` columns: reading them raises a clear
error, and the file never appears.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from fuseline import Status, StepReport
from fuseline.broker.sql import SqlBroker
from fuseline.broker.sql.models import instances, steps
from fuseline.errors import CorruptStoredValue
from tests.reliability import flows
from tests.reliability.scan import PACKAGE, calls_in, calls_in_source, imports_in_source, python_files
from tests.reliability.support import FLOWS, fuseline, in_parallel

UNSAFE_MODULES = {
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "cloudpickle",
    "marshal",
    "shelve",
    "jsonpickle",
    "joblib",
}
UNSAFE_CALLS = {
    "eval",
    "exec",
    "builtins.eval",
    "builtins.exec",
    "yaml.load",
    "yaml.load_all",
    "yaml.unsafe_load",
    "yaml.unsafe_load_all",
    "yaml.full_load",
    "yaml.full_load_all",
}


def _unsafe_imports(source: str) -> set[str]:
    return {m for m in imports_in_source(source) if m.split(".")[0] in UNSAFE_MODULES}


def test_the_scan_finds_every_spelling_of_unsafe_deserialisation() -> None:
    source = (
        "import pickle\nimport dill as d\nfrom cloudpickle import loads\nimport importlib, yaml\n"
        "m = __import__('marshal')\ns = importlib.import_module('shelve')\n"
        "def load(text):\n    eval(text)\n    exec(text)\n"
        "    return yaml.load(text), yaml.unsafe_load(text)\n"
    )
    assert _unsafe_imports(source) == {"pickle", "dill", "cloudpickle", "marshal", "shelve"}
    assert {c.name for c in calls_in_source(source)} & UNSAFE_CALLS == {
        "eval",
        "exec",
        "yaml.load",
        "yaml.unsafe_load",
    }


def test_fuseline_imports_no_pickle_and_calls_no_eval() -> None:
    files = list(python_files(PACKAGE))
    assert len(files) > 30
    imports = {str(path): _unsafe_imports(path.read_text()) for path in files}
    assert {path: found for path, found in imports.items() if found} == {}
    calls = [str(c) for path in files for c in calls_in(path) if c.name in UNSAFE_CALLS]
    assert calls == []


# -- a planted pickle ------------------------------------------------------------------------------


class _Plant:
    """Unpickling this opens (so creates) the file it names."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _pickle_text(sentinel: Path) -> str:
    """A protocol-0 pickle: plain ASCII, storable in a text column on both dialects."""
    return pickle.dumps(_Plant(sentinel), protocol=0).decode("ascii")


def test_the_planted_pickle_really_runs_code_when_unpickled(tmp_path: Path) -> None:
    """The control: without this, a missing sentinel below would prove nothing."""
    control = tmp_path / "control"
    loader = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", loader], input=_pickle_text(control).encode(), check=True)
    assert control.exists()


def _plant(url: str, column: sa.Column[Any], value: Any, **where: Any) -> None:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            table = column.table
            clauses = [table.c[name] == wanted for name, wanted in where.items()]
            assert conn.execute(sa.update(table).where(*clauses).values({column.name: value})).rowcount == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("column", ["step-result", "instance-inputs", "instance-result"])
def test_a_pickle_in_a_column_raises_a_clear_error_and_runs_nothing(
    db_url: str, tmp_path: Path, column: str
) -> None:
    sentinel = tmp_path / "sentinel"
    payload = _pickle_text(sentinel)
    broker = SqlBroker(db_url)
    try:
        schema = flows.diamond.to_schema()
        worker = broker.register_worker([schema])
        instance_id = broker.dispatch_workflow(schema, {"x": 1})
        top = broker.get_step(worker)
        assert top is not None
        broker.report_step(
            worker,
            StepReport(top.workflow_id, instance_id, "top", Status.SUCCEEDED, 1, top.attempt, version="1"),
        )
        if column == "step-result":
            _plant(db_url, steps.c.result, payload, instance_id=instance_id, name="top")
        elif column == "instance-inputs":
            _plant(db_url, instances.c.inputs, payload, id=instance_id)
        else:
            _plant(db_url, instances.c.result, payload, id=instance_id)

        with pytest.raises(CorruptStoredValue, match="not valid JSON") as read:
            broker.get_instance(instance_id)
        assert "never unpickles" in str(read.value)
        if column != "instance-result":  # the next claim reads the predecessor's result and the inputs
            with pytest.raises(CorruptStoredValue, match="not valid JSON"):
                broker.get_step(worker)
    finally:
        broker.close()

    # through the command line too (one case each: a process start costs a second)
    commands = {
        "instance-inputs": [("worker", "run", f"{FLOWS}:diamond", "--burst")],
        "instance-result": [("instances", "show", instance_id, "--json")],
    }.get(column, [])
    runs = in_parallel([lambda c=c: fuseline(*c, url=db_url) for c in commands])
    for command, proc in zip(commands, runs, strict=True):
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (command, proc.stderr)
        assert "not valid JSON" in proc.stderr and proc.stdout == "", (command, proc.stderr)
    assert not sentinel.exists(), "a stored pickle was unpickled"


def test_a_binary_pickle_in_a_sqlite_text_column_is_refused_too(sqlite_url: str, tmp_path: Path) -> None:
    """SQLite keeps whatever type is written: a BLOB where fuseline expects JSON text."""
    sentinel = tmp_path / "sentinel"
    broker = SqlBroker(sqlite_url, migrate=True)
    try:
        instance_id = broker.dispatch_workflow(flows.diamond.to_schema(), {"x": 1})
        _plant(sqlite_url, instances.c.inputs, pickle.dumps(_Plant(sentinel), protocol=5), id=instance_id)
        with pytest.raises(CorruptStoredValue):
            broker.get_instance(instance_id)
    finally:
        broker.close()
    assert not sentinel.exists()
