"""The tables of ``SqlBroker`` (prefixed ``fuseline_``), as typed SQLAlchemy models.

JSON values (inputs, results, schemas) are stored as text that fuseline
writes itself: it round-trips exactly (key order, ``\\u0000``, large
integers), costs no second parse on PostgreSQL, and reads the same on both
dialects. Cast with ``::jsonb`` to query them in SQL.

Times come from the database clock (see :mod:`.dialects`), never from a
worker's clock.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: Set before the first migration so constraint names are the same on every
#: dialect and autogenerate never churns.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: alembic's version table, namespaced so it never clashes with the application's own.
VERSION_TABLE = "fuseline_alembic_version"

# SQLite only auto-increments an INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Timestamp = DateTime(timezone=True)
Name = String(200)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class WorkflowRow(Base):
    """A workflow definition, stored once per (workflow_id, version)."""

    __tablename__ = "fuseline_workflows"

    workflow_id: Mapped[str] = mapped_column(Name, primary_key=True)
    version: Mapped[str] = mapped_column(String(100), primary_key=True)
    schema_hash: Mapped[str] = mapped_column(String(64))
    definition: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("CURRENT_TIMESTAMP"))


class InstanceRow(Base):
    """One run of a workflow; its status moves RUNNING -> SUCCEEDED | FAILED | CANCELLED once."""

    __tablename__ = "fuseline_instances"
    __table_args__ = (
        # No foreign key to its definition (migration 0011): the check locked the definition's
        # row (KEY SHARE) at every dispatch, so dispatchers of one workflow made a MultiXact per
        # instance between them. Instances are only created from a stored definition, and none
        # is ever deleted; ``db verify`` reports an instance whose definition is missing.
        Index("ix_fuseline_instances_created_at", "created_at"),
        Index("ix_fuseline_instances_status_created_at", "status", "created_at"),
        Index("ix_fuseline_instances_workflow_id_created_at", "workflow_id", "created_at"),
        # At most one instance per key of a workflow. Only keyed instances enter it: NULL keys
        # never collide, and an entry per instance would cost one more index write at each change.
        Index(
            "ix_fuseline_instances_workflow_id_key",
            "workflow_id",
            "key",
            unique=True,
            postgresql_where=text("key IS NOT NULL"),
            sqlite_where=text("key IS NOT NULL"),
        ),
        # A workflow ConcurrencyLimit counts the instances in progress (started, not finished).
        Index(
            "ix_fuseline_instances_workflow_id_limit_key",
            "workflow_id",
            "limit_key",
            postgresql_where=text("status = 'RUNNING' AND started_at IS NOT NULL"),
            sqlite_where=text("status = 'RUNNING' AND started_at IS NOT NULL"),
        ),
        # Cancelling a parent finds its children; only children enter it.
        Index(
            "ix_fuseline_instances_parent_instance_id",
            "parent_instance_id",
            postgresql_where=text("parent_instance_id IS NOT NULL"),
            sqlite_where=text("parent_instance_id IS NOT NULL"),
        ),
        # Retention deletes the oldest finished instances first (migration 0008).
        Index(
            "ix_fuseline_instances_finished_at",
            "finished_at",
            postgresql_where=text("finished_at IS NOT NULL"),
            sqlite_where=text("finished_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(Name)
    version: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16))
    inputs: Mapped[str] = mapped_column(Text)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: The idempotency key it was dispatched with (migration 0005).
    key: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: Its first claim: from then on it counts against its workflow's ConcurrencyLimit.
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: Its workflow's ConcurrencyLimit(max), and the value of that limit's key input (JSON).
    concurrency_max: Mapped[int | None] = mapped_column(Integer)
    limit_key: Mapped[str | None] = mapped_column(Text)
    #: A child instance (migration 0007): the instance and SubWorkflow step that started it.
    parent_instance_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    parent_step: Mapped[str | None] = mapped_column(Name)


class StepRow(Base):
    """One step of one instance: its state, lease, attempts and result.

    ``workflow_id``/``version`` repeat the instance's so the claim reads one
    table. ``attempt`` counts claims and only grows; a report must name the
    holder (``worker_id``) and the attempt to be accepted. The step has run
    ``attempt - released`` times, out of ``max_attempts``.
    """

    __tablename__ = "fuseline_steps"
    __table_args__ = (
        # One row per step of an instance; also serves "all steps of an instance".
        UniqueConstraint("instance_id", "name"),
        # The claim: the QUEUED step of a workflow that became available first.
        # Partial, so its size follows the queue, not the history; ordered by
        # available_at, which no other index offers, so the planner cannot
        # prefer walking the primary key past finished rows.
        Index(
            "ix_fuseline_steps_queued",
            "workflow_id",
            "version",
            "queue",
            "urgency",
            "available_at",
            "id",
            postgresql_where=text("state = 'QUEUED'"),
            sqlite_where=text("state = 'QUEUED'"),
        ),
        # A step ConcurrencyLimit counts the steps under it running now, per key value. Only
        # limited steps enter it: the others would pay an index write at every claim for nothing.
        Index(
            "ix_fuseline_steps_running_limit",
            "workflow_id",
            "name",
            "limit_key",
            postgresql_where=text("state = 'RUNNING' AND concurrency_max IS NOT NULL"),
            sqlite_where=text("state = 'RUNNING' AND concurrency_max IS NOT NULL"),
        ),
        # The Map items not final yet: whether an item is the last of its map is one look here.
        Index(
            "ix_fuseline_steps_open_items",
            "instance_id",
            "item_of",
            postgresql_where=text("item_of IS NOT NULL AND state IN ('PENDING', 'QUEUED', 'RUNNING')"),
            sqlite_where=text("item_of IS NOT NULL AND state IN ('PENDING', 'QUEUED', 'RUNNING')"),
        ),
        # The reaper: RUNNING steps whose lease expired.
        Index(
            "ix_fuseline_steps_running_lease",
            "lease_expires_at",
            postgresql_where=text("state = 'RUNNING'"),
            sqlite_where=text("state = 'RUNNING'"),
        ),
        # keep_alive and deregistration: the steps a worker holds.
        Index(
            "ix_fuseline_steps_running_worker",
            "worker_id",
            postgresql_where=text("state = 'RUNNING'"),
            sqlite_where=text("state = 'RUNNING'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: No foreign key (migration 0011): its check looked the instance up and locked it for every
    #: step a dispatch inserted. Steps are only inserted beside their instance, and retention
    #: deletes them itself before it (``db verify``: ``orphaned_step``).
    instance_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    workflow_id: Mapped[str] = mapped_column(Name)
    version: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(Name)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: Claims given back unstarted (a stopping worker, unused prefetch): each refunds its
    #: attempt, so the step has run ``attempt - released`` times (migration 0004).
    released: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    max_attempts: Mapped[int] = mapped_column(Integer)
    result: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    #: The branch action the result chose (None: default edges).
    action: Mapped[str | None] = mapped_column(Name)
    #: JSON list of the predecessors whose results the step receives, fixed when it is queued.
    inputs_from: Mapped[str | None] = mapped_column(Text)
    worker_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    #: The worker whose report set the final state; replays are checked against it.
    reported_by: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    available_at: Mapped[datetime | None] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: Minus its instance's priority: the queue index orders by it, ascending (migration 0005).
    urgency: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    queue: Mapped[str] = mapped_column(String(100), server_default="default")
    #: RetryPolicy retries the broker scheduled after failures.
    retries: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: Leases that ran out (the lost-worker budget, counted apart from retries and releases).
    lost: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    #: A limit applies to it (its own, or its workflow's): claims check it one by one.
    gated: Mapped[bool] = mapped_column(Boolean, server_default=false())
    concurrency_max: Mapped[int | None] = mapped_column(Integer)
    rate_n: Mapped[int | None] = mapped_column(Integer)
    rate_per: Mapped[float | None] = mapped_column(Float)
    #: The value of its limit's key input (JSON text), or None.
    limit_key: Mapped[str | None] = mapped_column(Text)
    #: A Map item (migration 0007): its value (JSON), its Map step and its place in the list.
    item: Mapped[str | None] = mapped_column(Text)
    item_of: Mapped[str | None] = mapped_column(Name)
    item_index: Mapped[int | None] = mapped_column(Integer)
    #: A Map step: how many items it fanned out (None for other steps).
    item_count: Mapped[int | None] = mapped_column(Integer)
    #: A SubWorkflow step: the child instance it started.
    child_instance_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))


class SignalRow(Base):
    """A signal an instance received (migration 0007): one per name, kept until a WaitFor
    step takes it, deleted with the instance."""

    __tablename__ = "fuseline_signals"

    instance_id: Mapped[str] = mapped_column(
        Uuid(as_uuid=False), ForeignKey("fuseline_instances.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(Name, primary_key=True)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, server_default=text("CURRENT_TIMESTAMP"))


class StartRow(Base):
    """When a step under a RateLimit was claimed: the sliding window counts these."""

    __tablename__ = "fuseline_starts"
    __table_args__ = (
        Index(
            "ix_fuseline_starts_workflow_id_step_name_limit_key_at",
            "workflow_id",
            "step_name",
            "limit_key",
            "at",
        ),
        # The reaper prunes the rows older than any window (RATE_WINDOW_MAX) by this one.
        Index("ix_fuseline_starts_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    workflow_id: Mapped[str] = mapped_column(Name)
    step_name: Mapped[str] = mapped_column(Name)
    limit_key: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(Timestamp)


class ScheduleRow(Base):
    """A cron or interval schedule (migration 0006); running workers fire its due ticks.

    Exactly one of ``cron`` (read in ``timezone``) and ``every`` (whole seconds) is set.
    ``next_fire_at`` is the first tick not fired yet (UTC); firing locks the row, so two
    workers never fire the same tick, and the tick's instance key makes a replay harmless.
    """

    __tablename__ = "fuseline_schedules"
    __table_args__ = (
        ForeignKeyConstraint(
            ["workflow_id", "version"],
            ["fuseline_workflows.workflow_id", "fuseline_workflows.version"],
        ),
        # Workers ask "which schedules are due" every half second: the due rows come first.
        Index("ix_fuseline_schedules_next_fire_at", "next_fire_at"),
    )

    name: Mapped[str] = mapped_column(Name, primary_key=True)
    workflow_id: Mapped[str] = mapped_column(Name)
    version: Mapped[str] = mapped_column(String(100))
    cron: Mapped[str | None] = mapped_column(String(200))
    every: Mapped[int | None] = mapped_column(Integer)
    timezone: Mapped[str] = mapped_column(String(64))
    inputs: Mapped[str] = mapped_column(Text)
    paused: Mapped[bool] = mapped_column(Boolean, server_default=false())
    next_fire_at: Mapped[datetime] = mapped_column(Timestamp)
    last_tick: Mapped[datetime | None] = mapped_column(Timestamp)
    last_instance_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


class WorkerRow(Base):
    """A registered worker process. Its id is never reused, so it is a safe lease holder."""

    __tablename__ = "fuseline_workers"

    id: Mapped[str] = mapped_column(Uuid(as_uuid=False), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: JSON list of [workflow_id, version] pairs the worker runs.
    workflows: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(Timestamp)
    last_heartbeat: Mapped[datetime] = mapped_column(Timestamp)
    stopped_at: Mapped[datetime | None] = mapped_column(Timestamp)
    #: JSON list of the queues it claims from; NULL: every queue of its workflows.
    queues: Mapped[str | None] = mapped_column(Text)


class EventRow(Base):
    """Append-only history of an instance: dispatched, succeeded, lease_expired, ...

    No foreign key to the instance (migration 0003): events are written only
    together with the instance change they record, and the check cost a row
    lock per event on the hottest path.
    """

    __tablename__ = "fuseline_events"
    __table_args__ = (Index("ix_fuseline_events_instance_id_id", "instance_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instance_id: Mapped[str] = mapped_column(Uuid(as_uuid=False))
    at: Mapped[datetime] = mapped_column(Timestamp)
    kind: Mapped[str] = mapped_column(String(32))
    step_name: Mapped[str | None] = mapped_column(Name)
    attempt: Mapped[int | None] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(Uuid(as_uuid=False))
    detail: Mapped[str | None] = mapped_column(Text)
    #: When the attempt this event ends was claimed (migration 0010); ``worker_id`` claimed it.
    #: A claim writes no row of its own: the step row holds it while it runs, and the event
    #: that ends the attempt keeps it, so a step costs one history row fewer.
    claimed_at: Mapped[datetime | None] = mapped_column(Timestamp)


class TokenRow(Base):
    """An API token of ``fuseline server`` (migration 0009): its role and a salted scrypt hash.

    ``id`` is the token's public part, so a request's token finds its row without a scan;
    the token itself is never stored. A name is never reused, not even once its token is
    revoked, so a name in a log or an audit always means one token.
    """

    __tablename__ = "fuseline_tokens"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    #: Hex: the scrypt salt (16 bytes) and the hash of the whole token (32 bytes).
    salt: Mapped[str] = mapped_column(String(32))
    hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    revoked_at: Mapped[datetime | None] = mapped_column(Timestamp)


class ServerSecretRow(Base):
    """A random secret all server processes on this database share, by purpose (migration 0009):
    ``session`` signs the dashboard's cookies, so any process accepts another's, across restarts."""

    __tablename__ = "fuseline_server_secrets"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    #: Hex.
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(Timestamp)


workflows = WorkflowRow.__table__
instances = InstanceRow.__table__
steps = StepRow.__table__
workers = WorkerRow.__table__
events = EventRow.__table__
starts = StartRow.__table__
schedules = ScheduleRow.__table__
signals = SignalRow.__table__
tokens = TokenRow.__table__
server_secrets = ServerSecretRow.__table__
