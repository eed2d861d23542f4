"""What every request of a server process shares: its broker, its tokens, its work hub."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from .hub import WorkHub

if TYPE_CHECKING:
    from ..broker.sql import SqlBroker
    from .tokens import TokenStore

#: Largest request body the server reads (a batch of reports with their results): 413 past it.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


@dataclass
class ServiceContext:
    """One per server process. The broker's connection budget is the process's: every
    request borrows from it, so the database sees the same few connections however many
    workers the server serves."""

    broker: SqlBroker
    tokens: TokenStore
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    hub: WorkHub = field(init=False)

    def __post_init__(self) -> None:
        self.hub = WorkHub(self.broker.wait_for_work)


def context_of(request: Request) -> ServiceContext:
    return request.app.state.fuseline
