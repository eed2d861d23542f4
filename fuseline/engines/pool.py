"""``PoolEngine``: runs a whole workflow instance in this process on a thread pool."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..broker.memory import MemoryBroker
from ..errors import WorkflowFailed
from ..states import Status
from .assignment import run_assignment

if TYPE_CHECKING:
    from ..workflow.workflow import Workflow

#: Leases never expire in-process: no other worker could take the step over.
_IN_PROCESS_LEASE_SECONDS = 365 * 24 * 3600.0


class PoolEngine:
    """Runs ``Workflow.run`` with up to ``workers`` steps at a time.

    The instance lives in a private :class:`MemoryBroker` (keeping Python
    objects, not JSON), so joins, branches and skips follow exactly the
    rules every broker keeps. Independent branches run concurrently on
    threads, which suits steps that wait on I/O.
    """

    def __init__(self, workers: int = 4) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.workers = workers

    def run(self, workflow: Workflow, inputs: dict[str, Any]) -> Any:
        """Run one instance to the end; return its result or raise the first step error."""
        broker = MemoryBroker(store_json=False, lease_seconds=_IN_PROCESS_LEASE_SECONDS)
        schema = workflow.to_schema()
        instance_id = broker.dispatch_workflow(schema, inputs)
        worker_id = broker.register_worker([schema])
        changed = threading.Condition()
        errors: list[Exception] = []

        def finished() -> bool:
            return broker.get_instance(instance_id).status is not Status.RUNNING

        def loop() -> None:
            while True:
                assignment = broker.get_step(worker_id)
                if assignment is None:
                    with changed:
                        if finished():
                            return
                        changed.wait(0.1)
                    continue
                execution = run_assignment(workflow, assignment)
                with changed:
                    if execution.error is not None:
                        errors.append(execution.error)
                    broker.report_step(worker_id, execution.report)
                    changed.notify_all()

        threads = [
            threading.Thread(target=loop, name=f"fuseline-pool-{n}", daemon=True)
            for n in range(1, self.workers)
        ]
        for thread in threads:
            thread.start()
        try:
            loop()
        finally:
            for thread in threads:
                thread.join()
            workflow.close()
        info = broker.get_instance(instance_id)
        if info.status is Status.FAILED:
            if errors:
                raise errors[0]
            raise WorkflowFailed(info.error or "the workflow failed")
        return info.result
