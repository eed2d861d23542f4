"""``fuseline worker run --server URL --token T`` processes: workers that never see a database URL.

Their environment has no ``FUSELINE_DATABASE_URL`` (a worker that fell back
to the database would fail to start, not pass quietly); the only database
they can reach is the chaos ledger, named by ``CHAOS_LEDGER_URL`` for the
steps of :mod:`tests.chaos.flows`, never read by fuseline itself.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.chaos.flows import LEDGER_ENV
from tests.chaos.workers import DATABASE_ENV, REPOSITORY, SCRIPT, Worker, Workers, worker_env

SERVER_ENV = "FUSELINE_SERVER"
TOKEN_ENV = "FUSELINE_TOKEN"


def http_worker_env(ledger_url: str) -> dict[str, str]:
    """The environment of a worker behind a server: no database URL, no server or token
    variables (they go on the command line), the ledger's URL under its own name."""
    env = worker_env(ledger_url)
    for name in (DATABASE_ENV, SERVER_ENV, TOKEN_ENV):
        env.pop(name, None)
    env[LEDGER_ENV] = ledger_url
    return env


class HttpWorkers(Workers):
    """:class:`Workers` started with ``--server`` and ``--token``; killed on the way out."""

    def __init__(
        self, folder: Path, ledger_url: str, server_url: str, token: str, spec: str, *options: str
    ) -> None:
        super().__init__(folder, ledger_url, spec, "--server", server_url, "--token", token, *options)

    def start(self, url: str | None = None, *options: str) -> Worker:
        number = len(self.started)
        log = self.folder / f"worker-{number}.stderr"
        argv = [str(SCRIPT), "worker", "run", self.spec, *self.options, *options]
        with log.open("wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=REPOSITORY,
                env=http_worker_env(url or self.url),
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )
        worker = Worker(proc, log, number)
        self.started.append(worker)
        return worker
