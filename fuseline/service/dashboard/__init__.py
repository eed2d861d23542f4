"""The web dashboard of ``fuseline server``: instances, their DAGs, workers, schedules, repairs.

Server-rendered HTML (jinja2, autoescaped) with a little vanilla JavaScript for the live
parts, and nothing fetched from another site: it works behind any firewall and needs no
front-end build. People sign in with an API token (viewer: read-only; operator: actions
too) into a signed, HttpOnly, SameSite=Strict session cookie; see :mod:`.sessions`.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from ..context import ServiceContext
from . import actions, login, pages, schedule_actions
from .reads import DashboardReads
from .render import STATIC

#: Where the stylesheet and script are served (no clash with the APIs under /api).
STATIC_PATH = "/static/dashboard"


def mount(app: FastAPI) -> None:
    """Add the dashboard's routes to ``app``, whose ``state.fuseline`` is the ServiceContext."""
    context: ServiceContext = app.state.fuseline
    app.state.dashboard_reads = DashboardReads(context.broker)
    app.include_router(login.router)
    app.include_router(pages.router)
    app.include_router(actions.router)
    app.include_router(schedule_actions.router)
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC), name="dashboard-static")
