"""A ``BaseException`` in an in-process run stops the pool and reaches the caller.

Regression: a step raising ``SystemExit`` or ``KeyboardInterrupt`` on a pool
thread killed that thread and left ``Workflow.run`` polling forever, and
Ctrl-C hung in ``join()`` because the other threads never stopped claiming.
A hang fails these tests through their timeout. It uses the ``thread``
method: a hang of this kind can survive the ``signal`` method's single
interrupt (the interrupted caller then hangs again joining its threads).
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any

import pytest

from fuseline import Computed, Depends, Step, Workflow
from fuseline.engines import PoolEngine
from fuseline.policies import WorkflowPolicy

pytestmark = pytest.mark.timeout(20, method="thread")

#: How long the step in hand keeps running after the stop began (so "nothing new was claimed" is seen).
IN_HAND_SECONDS = 0.2


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("fuseline-pool-")]


def make_stopping_workflow(exc: BaseException, log: list[str]) -> Workflow:
    """Two roots that start together: ``stopper`` raises ``exc``; ``busy`` finishes after it,
    and ``next_step`` (queued once ``busy`` succeeds) must never start."""
    both_started = threading.Barrier(2, timeout=5)

    class Stopper(Step):
        def run_step(self) -> None:
            both_started.wait()
            raise exc

    class Busy(Step):
        def run_step(self) -> int:
            both_started.wait()
            time.sleep(IN_HAND_SECONDS)
            log.append("busy")
            return 1

    busy = Busy()

    class NextStep(Step):
        def run_step(self, v: Computed[int] = Depends(busy)) -> int:
            log.append("next_step")
            return v

    return Workflow([Stopper(), NextStep()], workflow_id="stopping")


@pytest.mark.parametrize(
    "exc", [SystemExit(3), KeyboardInterrupt("from a step")], ids=["SystemExit", "KeyboardInterrupt"]
)
def test_a_base_exception_raised_by_a_step_on_a_pool_thread_reaches_the_caller(exc: BaseException) -> None:
    log: list[str] = []
    workflow = make_stopping_workflow(exc, log)

    with pytest.raises(type(exc)) as caught:
        workflow.run(engine=PoolEngine(workers=2))

    assert caught.value is exc
    # the step in hand finished; nothing was claimed after the stop; the threads were joined
    assert log == ["busy"]
    assert pool_threads() == []


def test_the_workflow_runs_normally_after_a_run_stopped_by_system_exit() -> None:
    calls: list[int] = []

    class MaybeExit(Step):
        def run_step(self, stop: bool) -> str:
            calls.append(1)
            if stop:
                raise SystemExit(1)
            return "done"

    workflow = Workflow(MaybeExit())
    with pytest.raises(SystemExit):
        workflow.run({"stop": True})
    assert workflow.run({"stop": False}) == "done"
    assert len(calls) == 2


def test_workflow_policies_hear_that_a_run_stopped_by_a_base_exception_failed() -> None:
    finished: list[tuple[str, Any]] = []

    class Finished(WorkflowPolicy):
        def on_workflow_finished(self, workflow: Workflow, status: str, result: Any) -> None:
            finished.append((status, result))

    class Exit(Step):
        def run_step(self) -> None:
            raise SystemExit(2)

    with pytest.raises(SystemExit):
        Workflow(Exit(), policies=[Finished()]).run()
    assert finished == [("FAILED", None)]


def test_ctrl_c_while_a_run_waits_stops_claiming_and_joins_the_pool() -> None:
    """A real SIGINT to the main thread while the run waits for a slow step: the step in hand
    finishes, its successor never starts, and KeyboardInterrupt reaches the caller."""
    started, release = threading.Event(), threading.Event()
    ran: list[str] = []

    class Slow(Step):
        def run_step(self) -> int:
            started.set()
            release.wait(10)
            ran.append("slow")
            return 1

    slow = Slow()

    class After(Step):
        def run_step(self, v: Computed[int] = Depends(slow)) -> int:
            ran.append("after")
            return v

    main = threading.main_thread()
    assert threading.current_thread() is main, "the test must run on the main thread to get SIGINT"

    def press_ctrl_c() -> None:
        started.wait(5)
        signal.pthread_kill(main.ident, signal.SIGINT)
        time.sleep(IN_HAND_SECONDS)  # the interrupt is seen while the step is still in hand
        release.set()

    # Ctrl-C must reach Python's own handler: an earlier test of the session may have left
    # another one (a library's event loop, say), which this test is not about.
    earlier_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            Workflow(After(), workflow_id="ctrl-c").run(engine=PoolEngine(workers=2))
    finally:
        release.set()
        presser.join(5)
        signal.signal(signal.SIGINT, earlier_handler)

    assert ran == ["slow"]
    assert pool_threads() == []
