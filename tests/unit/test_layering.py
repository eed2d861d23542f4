"""The workflow layer stands alone: engines run it through the ``Runner`` protocol.

Arrows point one way (cli -> engines/clients -> broker -> workflow): the
workflow package imports no engine and no broker, and ``Workflow.run`` finds
its default runner in a registry that ``fuseline.engines`` fills.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import fuseline
import fuseline.policies
import fuseline.workflow.policies
from fuseline import Status, Step, Workflow, WorkflowRun
from fuseline.engines import PoolEngine
from fuseline.errors import WorkflowFailed
from fuseline.workflow import NoRunner, Runner, default_runner, set_default_runner

PACKAGE = Path(fuseline.__file__).resolve().parent
MAX_LINES = 500


def imported_modules(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, anywhere in it (TYPE_CHECKING blocks and functions too)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module) if part)
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def test_the_workflow_layer_imports_no_engine_and_no_broker() -> None:
    offending = {
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in sorted((PACKAGE / "workflow").rglob("*.py"))
        for module in imported_modules(path)
        if module.startswith(("fuseline.engines", "fuseline.broker", "fuseline.cli", "fuseline.clients"))
    }
    assert offending == set()


@pytest.mark.parametrize(
    "relative",
    ["workflow", "policies.py", "__init__.py", "engines/pool.py", "engines/assignment.py"],
)
def test_workflow_layer_modules_stay_under_500_lines(relative: str) -> None:
    target = PACKAGE / relative
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    too_long = {
        str(path.relative_to(PACKAGE)): lines
        for path in files
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert too_long == {}


def test_fuseline_policies_is_the_workflow_policies_module_under_its_public_name() -> None:
    public = ("Policy", "StepPolicy", "WorkflowPolicy", "RetryPolicy", "StepTimeoutPolicy")
    for name in (*public, "policy_from_config"):
        assert getattr(fuseline.policies, name) is getattr(fuseline.workflow.policies, name)

    class Audit(fuseline.policies.StepPolicy):
        kind = "test-layering-audit"

    # one registry: a policy defined through either path is rebuilt through the other
    rebuilt = fuseline.workflow.policies.policy_from_config({"type": "test-layering-audit", "config": {}})
    assert type(rebuilt) is Audit


def test_importing_fuseline_registers_the_pool_engine_without_loading_the_database_or_cli() -> None:
    code = (
        "import sys, fuseline\n"
        "from fuseline.workflow import default_runner\n"
        "from fuseline.engines import PoolEngine\n"
        "assert isinstance(default_runner(), PoolEngine), default_runner()\n"
        "assert 'sqlalchemy' not in sys.modules and 'typer' not in sys.modules\n"
        "print('ok')\n"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


class Const(Step):
    def run_step(self) -> int:
        return 5


class FixedRunner:
    """A Runner that is not a PoolEngine: answers every run with one WorkflowRun."""

    def __init__(self, run: WorkflowRun) -> None:
        self.run_result = run
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def run(self, workflow: Workflow, inputs: Mapping[str, Any]) -> WorkflowRun:
        self.calls.append((workflow.workflow_id, dict(inputs)))
        return self.run_result


def test_any_runner_can_run_a_workflow() -> None:
    runner = FixedRunner(WorkflowRun(Status.SUCCEEDED, "fixed", None, {"const": Status.SUCCEEDED}))
    assert isinstance(runner, Runner)
    assert isinstance(PoolEngine(), Runner)

    workflow = Workflow(Const(), workflow_id="const", execution_engine=runner)

    assert workflow.run({"a": 1}) == "fixed"
    assert workflow.run_instance().steps == {"const": Status.SUCCEEDED}
    assert workflow.run(engine=PoolEngine()) == 5  # engine= wins over execution_engine
    assert runner.calls == [("const", {"a": 1}), ("const", {})]


def test_a_failed_run_without_a_step_exception_raises_workflow_failed() -> None:
    runner = FixedRunner(WorkflowRun(Status.FAILED, None, "worker lost", {"const": Status.FAILED}))
    workflow = Workflow(Const(), execution_engine=runner)

    assert workflow.run_instance().status is Status.FAILED
    with pytest.raises(WorkflowFailed, match="worker lost"):
        workflow.run()


def test_without_a_registered_runner_run_says_how_to_get_one() -> None:
    previous = set_default_runner(None)
    try:
        with pytest.raises(NoRunner, match=r"import fuseline\.engines"):
            Workflow(Const()).run()
        assert Workflow(Const()).run(engine=PoolEngine()) == 5
    finally:
        set_default_runner(previous)
    assert default_runner() is previous
