"""``fuseline db``: create, migrate and inspect fuseline's tables."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table

from .common import console, fail, masked_url, plain, print_json, settings, user_errors

db_app = typer.Typer(
    help="Create, migrate and inspect fuseline's tables.\n\nExample: fuseline db upgrade",
    no_args_is_help=True,
)


@contextmanager
def _engine(ctx: typer.Context) -> Iterator[object]:
    from sqlalchemy.exc import DBAPIError

    from ..broker.sql.engine import create_database_engine, scrub

    url = settings(ctx).url
    with user_errors():
        engine = create_database_engine(url)
    try:
        yield engine
    except DBAPIError as exc:
        fail(f"cannot use the database {masked_url(ctx)}: {scrub(str(exc.orig), url).splitlines()[0]}")
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
) -> None:
    """Create or migrate fuseline's tables up to REVISION (default: the newest).

    Safe to run again and from several processes at once. Run it as the
    database owner; workers can then use a role without CREATE rights.

    Example: fuseline --database-url postgresql+psycopg://owner@db/app db upgrade
    """
    from ..broker.sql import migrate

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
    that went backwards, and instances whose status disagrees with their steps.

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
