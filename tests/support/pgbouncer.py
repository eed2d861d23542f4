"""A real PgBouncer in transaction mode, in front of a PostgreSQL server, on a free loopback port.

Used by ``tests/sql/test_pgbouncer.py`` and ``bench/pgbouncer_bench.py``. The
binary is Debian's (``apt-get install pgbouncer``, at ``/usr/sbin/pgbouncer``,
which a non-login PATH may lack); ``make test`` installs it. PgBouncer
refuses to run as root, so as root it runs as the ``postgres`` user, in a
folder of its own that user can write.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
from sqlalchemy.engine import URL

#: Where Debian puts the binary.
DEBIAN_BINARY = "/usr/sbin/pgbouncer"
#: The user PgBouncer runs as when we are root.
RUN_AS = "postgres"
START_TIMEOUT_SECONDS = 10.0


def pgbouncer_binary() -> str:
    """The pgbouncer executable; fails with what to install when there is none."""
    found = shutil.which("pgbouncer") or (DEBIAN_BINARY if os.access(DEBIAN_BINARY, os.X_OK) else None)
    if found is None:
        raise RuntimeError("pgbouncer is not installed: apt-get install -y pgbouncer (make test does)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """One PgBouncer process; :meth:`url` is a server URL rewritten to go through it.

    ``ignore_options=True`` makes it drop the ``options`` startup parameter instead of refusing
    the connection, as many deployments configure it: then only psycopg's prepared statements
    break a client that does not say it is behind a pooler.
    """

    def __init__(
        self,
        server_url: URL,
        *,
        pool_size: int = 4,
        ignore_options: bool = False,
        max_client_conn: int = 500,
    ) -> None:
        self.server_url = server_url
        self.pool_size = pool_size
        self.port = free_port()
        # A folder of its own in the system's temporary folder: PgBouncer runs as another user when
        # we are root, and pytest's tmp_path sits in a folder only its owner may enter.
        self.folder = Path(tempfile.mkdtemp(prefix="fuseline-pgbouncer-"))
        self.folder.chmod(0o755)
        self.log = self.folder / "pgbouncer.log"
        ignored = "extra_float_digits,options" if ignore_options else "extra_float_digits"
        user, password = server_url.username or RUN_AS, server_url.password or ""
        (self.folder / "users.txt").write_text(f"{_quoted(user)} {_quoted(str(password))}\n")
        self.ini = self.folder / "pgbouncer.ini"
        self.ini.write_text(
            "[databases]\n"
            f"* = host={server_url.host or '127.0.0.1'} port={server_url.port or 5432}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = trust\n"
            f"auth_file = {self.folder / 'users.txt'}\n"
            f"admin_users = {user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {pool_size}\n"
            f"max_client_conn = {max_client_conn}\n"
            # What the server's idle_in_transaction_session_timeout does for direct connections.
            "idle_transaction_timeout = 5\n"
            f"ignore_startup_parameters = {ignored}\n"
            f"logfile = {self.log}\n"
            f"pidfile = {self.folder / 'pgbouncer.pid'}\n"
        )
        argv = [pgbouncer_binary(), str(self.ini)]
        if os.geteuid() == 0:
            entry = pwd.getpwnam(RUN_AS)
            for path in (self.folder, *self.folder.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            argv[1:1] = ["-u", RUN_AS]
        # Its stderr goes to a file, never to a pipe: PgBouncer in the foreground logs every
        # connection there too, and once an unread pipe's 64 KiB fill up its one thread blocks on
        # the write and every client behind it hangs (as it did with 50 workers).
        self.errors = self.folder / "stderr.log"
        with self.errors.open("wb") as stderr:
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        self._wait_for_port()

    def _wait_for_port(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if self.process.poll() is not None:
                errors = self.errors.read_text(errors="replace")
                raise RuntimeError(f"pgbouncer exited {self.process.returncode}: {errors}{self.log_text()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pgbouncer did not listen on port {self.port}: {self.log_text()}")
            time.sleep(0.05)

    def url(self, database: str | None = None, *, pooler: bool = True) -> str:
        """The server URL through PgBouncer, as text (password included), with
        ``?pooler=transaction`` unless ``pooler=False``."""
        url = self.server_url.set(
            host="127.0.0.1", port=self.port, database=database or self.server_url.database
        )
        if pooler:
            url = url.update_query_dict({"pooler": "transaction"})
        return url.render_as_string(hide_password=False)

    def admin_url(self) -> str:
        """PgBouncer's own console (SHOW POOLS, SHOW CLIENTS...), for a plain psycopg connection."""
        user = self.server_url.username or RUN_AS
        return f"postgresql://{user}@127.0.0.1:{self.port}/pgbouncer"

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


class ConnectionSampler:
    """While the block runs, every ``interval`` seconds: the server connections PostgreSQL shows
    for ``database`` (``pg_stat_activity``, the sampler's own left out) and, behind ``bouncer``,
    the client connections PgBouncer holds for it (``SHOW POOLS``: active and waiting)."""

    def __init__(self, database: URL, bouncer: PgBouncer | None = None, interval: float = 0.01) -> None:
        self.database, self.bouncer, self.interval = database, bouncer, interval
        self.server_samples: list[int] = []
        self.clients = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @property
    def servers(self) -> int:
        """The most server connections seen at once."""
        return max(self.server_samples, default=0)

    @property
    def servers_mean(self) -> float:
        return statistics.fmean(self.server_samples) if self.server_samples else 0.0

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error

    def _sample(self) -> None:
        try:
            self._sample_until_stopped()
        except BaseException as exc:  # raised by __exit__, in the caller's thread
            self.error = exc

    def _sample_until_stopped(self) -> None:
        direct = self.database.set(drivername="postgresql").render_as_string(hide_password=False)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(psycopg.connect(direct, autocommit=True))
            console = None
            if self.bouncer is not None:
                # The console speaks the simple query protocol only: a client-side cursor's.
                console = stack.enter_context(
                    psycopg.connect(
                        self.bouncer.admin_url(), autocommit=True, cursor_factory=psycopg.ClientCursor
                    )
                )
            while not self._stop.wait(self.interval):
                row = server.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.database.database],
                ).fetchone()
                self.server_samples.append(row[0] if row else 0)
                if console is not None:
                    self.clients = max(self.clients, self._pooled_clients(console))

    def _pooled_clients(self, console: psycopg.Connection) -> int:
        cursor = console.execute("SHOW POOLS")
        names = [column.name for column in cursor.description or ()]
        clients = 0
        for pool in cursor.fetchall():
            fields = dict(zip(names, pool, strict=True))
            if fields["database"] == self.database.database:
                clients += fields["cl_active"] + fields["cl_waiting"]
        return clients
