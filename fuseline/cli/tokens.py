"""``fuseline tokens``: the API tokens ``fuseline server`` accepts, each with a role.

A token is shown once, when it is created; the database keeps only a salted hash of it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from .common import JsonFlag, console, err_console, open_broker, plain, print_json, user_errors, when

tokens_app = typer.Typer(
    help="API tokens for fuseline server: worker (the worker API only), viewer (read-only) or "
    "operator (everything).\n\n"
    "Example: fuseline tokens create ci-deploy --role operator",
    no_args_is_help=True,
)

TokenName = Annotated[str, typer.Argument(metavar="NAME", help="The token's name.")]


@tokens_app.command("create")
def create(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Argument(
            metavar="NAME",
            help="A name for the token (1-100 letters, digits, '.', '_' or '-'), unique for good: "
            "servers log it, never the token.",
        ),
    ],
    role: Annotated[
        str,
        typer.Option(
            "--role",
            metavar="ROLE",
            help="worker (the worker API only), viewer (read-only) or operator (reads, submit, "
            "cancel, retry, repair, signal and the worker API), e.g. --role worker.",
        ),
    ],
    json_output: JsonFlag = False,
) -> None:
    """Create a token and print it: it is shown this once (only its hash is stored).

    The token is the last line of the output; give it to the client, e.g. in FUSELINE_TOKEN
    or as the HTTP header 'Authorization: Bearer TOKEN'. A warning on stderr says it is
    shown once.

    Example: fuseline tokens create worker-eu-1 --role worker

    Example: FUSELINE_TOKEN=$(fuseline tokens create ci-deploy --role operator)
    """
    from ..service.tokens import Role, TokenStore

    with user_errors():  # refused before the database is opened
        chosen = Role.of(role)
    broker = open_broker(ctx)
    try:
        with user_errors():
            token = TokenStore(broker).create(name, chosen)
    finally:
        broker.close()
    err_console.print(
        f"[yellow]warning:[/] token {plain(name)} ({chosen.value}) is shown this once; store it now",
        highlight=False,
        soft_wrap=True,
    )
    if json_output:
        print_json({"name": name, "role": chosen.value, "token": token})
    else:
        sys.stdout.write(token + "\n")


@tokens_app.command("list")
def list_(ctx: typer.Context, json_output: JsonFlag = False) -> None:
    """List the tokens: name, role, when created and when revoked (never the tokens).

    Example: fuseline tokens list --json
    """
    from ..service.tokens import TokenStore

    broker = open_broker(ctx)
    try:
        with user_errors():
            found = TokenStore(broker).list()
    finally:
        broker.close()
    if json_output:
        print_json(
            [
                {"name": t.name, "role": t.role.value, "created_at": t.created_at, "revoked_at": t.revoked_at}
                for t in found
            ]
        )
        return
    if not found:
        console.print("no tokens (create one: fuseline tokens create NAME --role ROLE)")
        return
    table = Table("name", "role", "state", "created (UTC)", "revoked (UTC)")
    for t in found:
        state = "[red]revoked[/]" if t.revoked_at is not None else "[green]active[/]"
        table.add_row(plain(t.name), t.role.value, state, when(t.created_at), when(t.revoked_at))
    console.print(table)


@tokens_app.command("revoke")
def revoke(ctx: typer.Context, name: TokenName) -> None:
    """Revoke a token: running servers refuse it within a second. Its name stays taken.

    Example: fuseline tokens revoke ci-deploy
    """
    from ..service.tokens import TokenStore

    broker = open_broker(ctx)
    try:
        with user_errors():
            revoked = TokenStore(broker).revoke(name)
    finally:
        broker.close()
    console.print(
        f"token {plain(name)} revoked at {when(revoked.revoked_at)} UTC", highlight=False, soft_wrap=True
    )
