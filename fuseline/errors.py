"""The exceptions fuseline raises, in one tree.

Every error a user can cause or act on derives from :class:`FuselineError`, so
the command line can turn any of them into one clear line instead of a
traceback, and library users can catch them by kind.
"""

from __future__ import annotations


class FuselineError(Exception):
    """Base class of every error fuseline raises on purpose."""


class WorkflowDefinitionError(FuselineError):
    """A workflow is built wrongly (a cycle, a bad dependency, a bad name)."""


class SchemaConflict(FuselineError):
    """A different definition is already stored under the same workflow id and version.

    Changing a workflow's steps or edges without changing its version would
    let running instances continue on a graph they were not started with, so
    the broker refuses it and asks for a new version.
    """

    def __init__(self, workflow_id: str, version: str) -> None:
        self.workflow_id = workflow_id
        self.version = version
        super().__init__(
            f"workflow {workflow_id!r} version {version!r} is already registered with a "
            "different definition; give the changed workflow a new version "
            f"(Workflow(..., version=...)) instead of changing {version!r} in place"
        )


class InvalidInputs(FuselineError):
    """Workflow inputs are not a JSON object of JSON values."""


class ResultNotSerializable(FuselineError):
    """A step returned a value that cannot be stored as JSON."""

    def __init__(self, step_name: str, value: object, reason: str = "") -> None:
        self.step_name = step_name
        self.type_name = type(value).__name__
        detail = f" ({reason})" if reason else ""
        super().__init__(
            f"step {step_name!r} returned a value of type {self.type_name!r} that is not "
            f"JSON-serialisable{detail}; return JSON types (dict, list, str, int, float, "
            "bool, None)"
        )


class ResultTooLarge(FuselineError):
    """A step result is larger than the broker's ``max_result_bytes``."""

    def __init__(self, step_name: str, size: int, limit: int, *, exact: bool = True) -> None:
        self.step_name = step_name
        #: The size of the JSON text, or (``exact=False``) how much of it was counted
        #: before giving up: large results are refused without being encoded whole.
        self.size = size
        self.limit = limit
        amount = f"{size}" if exact else f"at least {size}"
        super().__init__(
            f"step {step_name!r} returned {amount} bytes of JSON, more than the limit of "
            f"{limit} bytes; store large data elsewhere and return a reference to it"
        )


class StepTimeout(FuselineError):
    """A step ran longer than its :class:`~fuseline.policies.StepTimeoutPolicy` allows."""


class BrokerError(FuselineError):
    """A broker refused an operation."""


class UnknownWorker(BrokerError):
    """The worker id was never registered with this broker."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        super().__init__(f"unknown worker {worker_id!r}: call register_worker first")


class WorkerExpired(BrokerError):
    """The worker sent no heartbeat for twice its lease, or was stopped: it is listed dead.

    Its leases have lapsed and its steps may already run elsewhere, so its
    claims and heartbeats are refused until it registers again (under a new
    worker id). :class:`~fuseline.engines.ProcessEngine` does that by itself.
    """

    def __init__(self, worker_id: str, reason: str = "it sent no heartbeat for twice its lease") -> None:
        self.worker_id = worker_id
        super().__init__(f"worker {worker_id!r} is listed dead ({reason}); register it again")


class UnknownWorkflow(BrokerError):
    """No workflow with this id and version is stored."""

    def __init__(self, workflow_id: str, version: str | None = None) -> None:
        self.workflow_id = workflow_id
        self.version = version
        what = f"{workflow_id!r}" + (f" version {version!r}" if version is not None else "")
        super().__init__(f"unknown workflow {what}")


class UnknownInstance(BrokerError):
    """No instance with this id exists."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"unknown instance {instance_id!r}")


class UnknownStep(BrokerError):
    """The instance's workflow has no step with this name."""

    def __init__(self, instance_id: str, step_name: str) -> None:
        self.instance_id = instance_id
        self.step_name = step_name
        super().__init__(f"instance {instance_id!r} has no step named {step_name!r}")


class LeaseLost(BrokerError):
    """A report or renewal came from a worker that no longer holds the step.

    The step's lease expired and it was handed to another worker, or the
    instance was cancelled, or the report names another attempt. The report
    changed nothing: the broker accepts exactly one result per step.
    """

    def __init__(self, instance_id: str, step_name: str, detail: str) -> None:
        self.instance_id = instance_id
        self.step_name = step_name
        super().__init__(f"report for step {step_name!r} of instance {instance_id!r} rejected: {detail}")


class CorruptStoredValue(BrokerError):
    """A value read from the database is not JSON, so fuseline did not write it.

    fuseline stores inputs and results as JSON text only and never unpickles
    or evaluates what it reads: anything else (a damaged row, a pickle written
    by another program) is refused with this error instead of being run.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(
            f"a value stored in the database is not valid JSON ({detail}); fuseline writes only "
            "JSON and never unpickles or evaluates stored data, so the row was changed outside fuseline"
        )


class InvalidDispatch(BrokerError):
    """Options of a dispatch that cannot be honoured (a negative delay, a time without a time
    zone, an over-long key...): refused before anything is written."""


class KeyConflict(BrokerError):
    """An instance already exists under this key of the workflow, with other inputs.

    Dispatching a key again with the same inputs returns the existing
    instance (a retried request is harmless); with different inputs it is
    refused, since the key names one piece of work.
    """

    def __init__(self, workflow_id: str, key: str, existing_id: str) -> None:
        self.workflow_id, self.key, self.existing_id = workflow_id, key, existing_id
        super().__init__(
            f"key {key!r} of workflow {workflow_id!r} already names instance {existing_id}, "
            "dispatched with other inputs"
        )


class ReportConflict(BrokerError):
    """A replayed report disagrees with the result already accepted for that attempt."""


class SignalConflict(BrokerError):
    """A signal of that name was already sent to that instance: signals are delivered once."""

    def __init__(self, instance_id: str, name: str) -> None:
        self.instance_id, self.name = instance_id, name
        super().__init__(
            f"instance {instance_id!r} already received signal {name!r}; a signal is taken once, "
            "the second one was refused"
        )


class InvalidTransition(BrokerError):
    """An operation does not apply to the instance in its current state."""


class ScheduleError(BrokerError):
    """A schedule cannot be added or changed as asked (a bad cron expression, an unknown time
    zone, an interval of 0, a name already taken): refused before anything is written."""


class UnknownSchedule(ScheduleError):
    """No schedule has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown schedule {name!r} (see: fuseline schedules list)")


class DatabaseError(FuselineError):
    """The database cannot be used: unreachable, wrong URL, or not migrated."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached right now (restart, failover, network, deadlock victim).

    Workers wait these out and retry; every other DatabaseError (read-only
    database, missing privilege, missing tables) is permanent and stops them.
    """


class DatabaseBusy(DatabaseUnavailable):
    """The server answered but takes no more connections now: ``max_connections`` is reached,
    or it is starting up. Unlike a refused connection (a wrong port stays wrong), this passes
    by itself, so a worker starting up waits for it instead of exiting."""


class StatementCancelled(DatabaseUnavailable):
    """The server cancelled a statement: ``statement_timeout`` or ``lock_timeout`` (set on the
    role, the database or the server) ran out, or an operator cancelled it (``pg_cancel_backend``).

    Its transaction was rolled back, so nothing of it took effect, and fuseline's transactions
    are short and fenced (a report names its worker and attempt): workers retry it like an
    outage, with a warning naming the setting, and never accept a report twice.
    """


class ServiceUnavailable(DatabaseUnavailable):
    """The fuseline server cannot be reached right now (restarting, overloaded, network).

    A kind of DatabaseUnavailable, because for a worker behind ``fuseline server`` the
    server is its database: it waits this out and retries exactly as it would a restart
    of PostgreSQL, and the broker's fencing refuses its reports if its lease ran out.
    """


class AccessDenied(FuselineError):
    """The server refused the token: none, unknown or revoked (HTTP 401), or its role lacks
    the right (HTTP 403). Permanent: asking again with the same token gives the same answer."""

    def __init__(self, message: str, status: int = 401) -> None:
        self.status = status
        super().__init__(message)


class TokenError(FuselineError):
    """An API token cannot be created or revoked as asked (a bad name, an unknown role, a name
    already taken): refused before anything is written."""


class UnknownToken(TokenError):
    """No token has this name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"unknown token {name!r} (see: fuseline tokens list)")


class SchemaOutOfDate(DatabaseError):
    """The database schema is missing or behind (or ahead of) this fuseline version."""


class MissingInput(FuselineError):
    """A step needs a workflow input that the instance was not given."""

    def __init__(self, step_name: str, input_name: str) -> None:
        self.step_name, self.input_name = step_name, input_name
        super().__init__(
            f"step {step_name!r} needs the workflow input {input_name!r}, which the instance "
            "inputs do not provide"
        )


class WorkflowFailed(FuselineError):
    """An in-process run (``Workflow.run``) ended FAILED without a step exception to re-raise."""
