"""``--server URL --token T``: any command that reads or changes instances, through the service.

Every such command takes the two options (or ``FUSELINE_SERVER`` and
``FUSELINE_TOKEN``) after its name (``fuseline instances list --server URL``).
With a server, the command needs no database URL: :func:`~.common.open_broker` gives it an
:class:`~fuseline.clients.HttpBrokerClient` instead of a SqlBroker.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

SERVER_ENV = "FUSELINE_SERVER"
TOKEN_ENV = "FUSELINE_TOKEN"  # noqa: S105 (a variable name, not a secret)

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        envvar=SERVER_ENV,
        show_envvar=True,
        metavar="URL",
        help="Go through a fuseline server (e.g. http://orchestrator:8000) instead of the database.",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar=TOKEN_ENV,
        show_envvar=True,
        metavar="TOKEN",
        help="The token for --server (see: fuseline tokens create).",
    ),
]

F = TypeVar("F", bound=Callable[..., Any])


def accepts_server(command: F) -> F:
    """Give ``command`` the ``--server`` and ``--token`` options; their values go to the
    command's Settings (where ``open_broker`` reads them) before it runs."""
    from .common import settings

    signature = inspect.signature(command, eval_str=True)  # typer reads the Annotated options
    added = [
        inspect.Parameter("server", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ServerOption),
        inspect.Parameter("token", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=TokenOption),
    ]

    @functools.wraps(command)
    def wrapper(*args: Any, server: str | None = None, token: str | None = None, **kwargs: Any) -> Any:
        ctx = kwargs.get("ctx") or next(a for a in args if isinstance(a, typer.Context))
        chosen = settings(ctx)
        if server:
            chosen.server = server
        if token:
            chosen.token = token
        return command(*args, **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *added])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**command.__annotations__, "server": ServerOption, "token": TokenOption}
    return wrapper  # type: ignore[return-value]
