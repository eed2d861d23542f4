"""What every command shares: the database setting, opening the broker, errors, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import FuselineError

#: The embedded database used when neither --database-url nor FUSELINE_DATABASE_URL is given.
DEFAULT_DATABASE_URL = "sqlite:///fuseline.db"
DATABASE_ENV = "FUSELINE_DATABASE_URL"

#: Options and arguments several commands share.
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON only (machine-readable).")]
InstanceId = Annotated[str, typer.Argument(metavar="ID", help="The instance id.")]

# Piped output (logs, CI, `| less`) gets wide tables instead of 80 wrapped columns.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


@dataclass
class Settings:
    """Options of the root command, handed to subcommands through the typer context."""

    database_url: str | None = None
    #: ``--server``: go through a fuseline server instead of the database.
    server: str | None = None
    token: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.database_url or os.environ.get(DATABASE_ENV) or DEFAULT_DATABASE_URL

    @property
    def server_url(self) -> str | None:
        return self.server or os.environ.get("FUSELINE_SERVER") or None

    @property
    def server_token(self) -> str | None:
        return self.token or os.environ.get("FUSELINE_TOKEN") or None


def settings(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        root.obj = Settings()
    return root.obj


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit with ``code`` (1: failure, 2: usage)."""
    # The message is text, not markup (errors quote paths like "[/tmp/x]"), and
    # stays one line however long it is.
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn fuseline's errors into one clear line and exit code 1, never a traceback."""
    try:
        yield
    except FuselineError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)


def open_broker(ctx: typer.Context, *, lease_seconds: float | None = None):
    """The broker the command works on: the configured server's (``--server``), else the
    SqlBroker of the configured database (see :meth:`SqlBroker.for_url`: SQLite is created
    and upgraded on first use, PostgreSQL is upgraded by its owner)."""
    chosen = settings(ctx)
    if chosen.server_url is not None:
        from ..clients.http import HttpBrokerClient

        with user_errors():
            return HttpBrokerClient(chosen.server_url, chosen.server_token)
    from ..broker.sql import SqlBroker

    options: dict[str, Any] = {} if lease_seconds is None else {"lease_seconds": lease_seconds}
    with user_errors():
        return SqlBroker.for_url(chosen.url, **options)


def hide_secrets(message: str) -> str:
    """Remove the configured database password from a message."""
    from ..broker.sql.engine import scrub

    url = os.environ.get(DATABASE_ENV)
    for arg_index, arg in enumerate(sys.argv):
        if arg == "--database-url" and arg_index + 1 < len(sys.argv):
            url = sys.argv[arg_index + 1]
        elif arg.startswith("--database-url="):
            url = arg.split("=", 1)[1]
    return scrub(message, url) if url else message


def masked_url(ctx: typer.Context) -> str:
    """Where the command works, for logs: the server's URL, or the database's without password."""
    from ..broker.sql.engine import mask_url

    server = settings(ctx).server_url
    return server if server is not None else mask_url(settings(ctx).url)


def print_json(value: Any) -> None:
    """Machine-readable output: JSON only, on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=_json_default, ensure_ascii=False) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if hasattr(value, "value"):
        return value.value
    raise TypeError(f"cannot show {type(value).__name__} as JSON")


def iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def when(value: datetime | None) -> str:
    """A timestamp for tables: UTC, to the second."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    seconds = ((end or datetime.now(timezone.utc)) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


STATUS_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLED": "yellow",
    "RUNNING": "cyan",
    "QUEUED": "blue",
    "SKIPPED": "dim",
    "PENDING": "dim",
}


def plain(text: object) -> str:
    """Text a user chose (names, errors, URLs), escaped so rich shows it verbatim."""
    return escape(str(text))


def styled(status: object) -> str:
    text = str(status)
    style = STATUS_STYLE.get(text)
    return f"[{style}]{text}[/]" if style else text
