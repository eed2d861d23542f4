"""``fuseline db``: create, migrate and inspect fuseline's tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from .common import (
    JsonFlag,
    console,
    err_console,
    fail,
    masked_url,
    open_broker,
    plain,
    print_json,
    settings,
    user_errors,
)
from .durations import DEFAULT_RETENTION, RETENTION_ENV, duration_option, shown

db_app = typer.Typer(
    help="Create, migrate and inspect fuseline's tables.\n\nExample: fuseline db upgrade",
    no_args_is_help=True,
)


@contextmanager
def _engine(ctx: typer.Context) -> Iterator[object]:
    from sqlalchemy.exc import DBAPIError

    from ..broker.sql.engine import create_database_engine, pooler_hint, scrub

    url = settings(ctx).url
    with user_errors():
        engine = create_database_engine(url)
    try:
        yield engine
    except DBAPIError as exc:
        message = scrub(str(exc.orig), url).splitlines()[0]
        fail(f"cannot use the database {masked_url(ctx)}: {pooler_hint(message)}")
    finally:
        engine.dispose()


def _current(engine: object) -> str | None:
    from ..broker.sql.migrate import current_revision

    with engine.connect() as connection:  # type: ignore[attr-defined]
        return current_revision(connection)


@db_app.command()
def upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    sql: Annotated[
        bool,
        typer.Option(
            "--sql",
            help="Print the SQL of the upgrade instead of running it, for a DBA to apply: from the "
            "database's revision (only read) to REVISION, or for a range FROM:TO without reading "
            "the database at all, e.g. --sql > upgrade.sql. PostgreSQL; SQLite only when no "
            "table is rebuilt.",
        ),
    ] = False,
) -> None:
    """Create or migrate fuseline's tables up to REVISION (default: the newest).

    Safe to run again and from several processes at once. Run it as the
    database owner; workers can then use a role without CREATE rights.

    Example: fuseline --database-url postgresql+psycopg://owner@db/app db upgrade

    Example: fuseline db upgrade --sql > upgrade.sql
    """
    from ..broker.sql import migrate

    if sql:
        _print_upgrade_sql(ctx, revision)
        return
    with _engine(ctx) as engine, user_errors():
        before = _current(engine)
        migrate.upgrade(engine, revision)  # type: ignore[arg-type]
        after = _current(engine)
    if before == after:
        console.print(f"{plain(masked_url(ctx))} is already at revision {after}", highlight=False)
    else:
        console.print(
            f"upgraded {plain(masked_url(ctx))} from {before or 'an empty database'} to revision {after}",
            highlight=False,
        )


@db_app.command()
def downgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops every fuseline table.")],
) -> None:
    """Migrate fuseline's tables down to REVISION ('base' removes them and their data).

    Example: fuseline db downgrade base
    """
    from ..broker.sql import migrate

    with _engine(ctx) as engine, user_errors():
        before = _current(engine)
        migrate.downgrade(engine, revision)  # type: ignore[arg-type]
        after = _current(engine)
    console.print(
        f"downgraded {plain(masked_url(ctx))} from {before or 'an empty database'} to {after or 'base'}",
        highlight=False,
    )


@db_app.command()
def current(ctx: typer.Context) -> None:
    """Show the database's revision and whether it is up to date.

    Example: fuseline db current
    """
    from ..broker.sql.migrate import HEAD_REVISION

    with _engine(ctx) as engine:
        revision = _current(engine)
    if revision is None:
        console.print(
            f"{plain(masked_url(ctx))} has no fuseline tables (run `fuseline db upgrade`)", highlight=False
        )
        raise typer.Exit(1)
    note = "up to date" if revision == HEAD_REVISION else f"behind {HEAD_REVISION}: run `fuseline db upgrade`"
    console.print(f"{revision} ({note})", highlight=False)
    if revision != HEAD_REVISION:
        raise typer.Exit(1)


@db_app.command()
def history(
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """List the migrations this version of fuseline ships, newest first.

    Example: fuseline db history
    """
    from ..broker.sql.migrate import history as revisions

    with user_errors():
        items = revisions()
    if json_output:
        print_json(
            [
                {"revision": r.revision, "down_revision": r.down_revision, "description": r.description}
                for r in items
            ]
        )
        return
    table = Table("revision", "down", "description")
    for r in items:
        table.add_row(r.revision + (" (head)" if r.is_head else ""), r.down_revision or "-", r.description)
    console.print(table)


@db_app.command()
def verify(
    ctx: typer.Context,
    stale_after: Annotated[
        float, typer.Option(min=0, help="Report RUNNING steps whose lease expired this many seconds ago.")
    ] = 60.0,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """Check the database's invariants; exit 1 if any is violated.

    Looks for RUNNING steps without a live lease, steps accepted or queued
    more than once, steps queued before their dependencies were met, attempts
    that went backwards, instances whose status disagrees with their steps,
    and steps, events or signals whose instance is gone.

    Example: fuseline db verify
    """
    from ..broker.sql.verify import verify as check

    with _engine(ctx) as engine:
        violations = check(engine, stale_after_seconds=stale_after)  # type: ignore[arg-type]
    if json_output:
        print_json(
            [
                {"kind": v.kind, "instance_id": v.instance_id, "step": v.step_name, "detail": v.detail}
                for v in violations
            ]
        )
    elif not violations:
        console.print(f"{masked_url(ctx)}: every invariant holds", highlight=False)
    else:
        for v in violations:
            console.print(str(v), highlight=False, markup=False)
        console.print(f"{len(violations)} violation(s)", style="red")
    if violations:
        raise typer.Exit(1)


def _print_upgrade_sql(ctx: typer.Context, revision: str) -> None:
    """``db upgrade --sql``: the SQL on stdout; the database is read for its revision, never
    written (and not even read for a range ``FROM:TO``)."""
    import sys
    from pathlib import Path

    from ..broker.sql import migrate
    from ..broker.sql.engine import parse_url

    with user_errors():
        url = parse_url(settings(ctx).url)
    dialect = url.get_backend_name()
    start: str | None
    if ":" in revision:
        start, revision = revision.split(":", 1)
        start = None if start in ("", "base") else start
    elif dialect == "sqlite" and not Path(url.database or "").is_file():
        start = None  # no file yet: an empty database (and do not create one by looking)
    else:
        with _engine(ctx) as engine:
            start = _current(engine)
    if start == migrate.HEAD_REVISION and revision in ("head", migrate.HEAD_REVISION):
        err_console.print(f"{plain(masked_url(ctx))} is already at revision {start}: no SQL to print")
        return
    with user_errors():
        sys.stdout.write(migrate.upgrade_sql(dialect, start, revision))


@db_app.command()
def check(ctx: typer.Context) -> None:
    """Exit 0 when the database is at the newest revision, 1 when it is not (for deploy scripts).

    Prints one line: the revision, or the revisions the database lacks. It
    only reads alembic's version table.

    Example: fuseline db check || fuseline db upgrade
    """
    from ..broker.sql.migrate import HEAD_REVISION, missing_revisions

    with _engine(ctx) as engine:
        revision = _current(engine)
    where = plain(masked_url(ctx))
    missing = missing_revisions(revision)
    if missing == ():
        console.print(f"{where} is at revision {revision} (head)", highlight=False, soft_wrap=True)
        return
    if missing is None:
        line = (
            f"{where} is at revision {plain(revision)}, which this fuseline does not know "
            f"(its newest is {HEAD_REVISION}): upgrade fuseline"
        )
    else:
        at = f"at revision {revision}" if revision else "without fuseline tables"
        line = f"{where} is {at}, behind: missing {', '.join(missing)} (run `fuseline db upgrade`)"
    console.print(line, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


_PRUNED_TABLES = ("instances", "steps", "events", "signals", "workers")


@db_app.command()
def prune(
    ctx: typer.Context,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            envvar=RETENTION_ENV,
            metavar="DURATION",
            help="Delete the instances finished longer ago than this (30s, 15m, 12h, 7d, 2w; 0 "
            "keeps everything), e.g. --older-than 30d.",
        ),
    ] = DEFAULT_RETENTION,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Count what would be deleted and delete nothing, e.g. --dry-run --older-than 90d.",
        ),
    ] = False,
    json_output: JsonFlag = False,
) -> None:
    """Delete finished instances older than --older-than now, with their steps, events and signals,
    and the rows of workers stopped for more than a day; print the rows per table.

    Running workers do this by themselves (worker run --retention); prune is
    for a first clean-up, or a database no worker runs on. It deletes in the
    same small batches, so workers keep running meanwhile. Children of a
    running instance, and instances with an unfinished or recent descendant,
    are kept.

    Example: fuseline db prune --older-than 30d --dry-run
    """
    age = duration_option(ctx, "older_than", older_than, "--older-than")
    counts = None
    if age:
        broker = open_broker(ctx)
        try:
            with user_errors():
                counts = broker.prune(age, dry_run=dry_run)
        finally:
            broker.close()
    table = counts.as_dict() if counts is not None else dict.fromkeys(_PRUNED_TABLES, 0)
    if json_output:
        print_json({"dry_run": dry_run, "older_than_seconds": age, **table})
        return
    if counts is None:
        console.print("--older-than 0 keeps everything: nothing deleted", highlight=False)
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{verb} in {plain(masked_url(ctx))} (instances finished more than {shown(age)} ago, "
        "workers stopped more than 1d ago):",
        highlight=False,
        soft_wrap=True,
    )
    for name, rows in table.items():
        console.print(f"  {name:<10} {rows:>9}", highlight=False)
