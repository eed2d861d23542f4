"""Shared helpers for the peer benchmarks in bench/peers/.

Every peer script measures one competitor (or the raw PostgreSQL ceiling) in its own
database ``peer_<name>`` and writes ``bench/results/<name>.json``::

    {"peer": "procrastinate", "version": "3.10.0", "quick": false,
     "params": {...}, "env": {...}, "notes": [...],
     "figures": {"drain_c1_per_s": 369.0, ...},     # only figures that were measured
     "error": null or "phase: message; ...",        # one line, for `make bench`
     "errors": {"phase": "message", ...}, "elapsed_s": 42.1}

A failing phase is recorded and the script goes on with the next one; a whole-script
deadline (SIGALRM, or SIGTERM from run_all.sh's `timeout`) saves what was measured,
kills the worker processes the script started, and exits non-zero.

The measuring helpers need psycopg (bench/.venv-peers); the small CLI used by run_all.sh
runs on any python3::

    python peerutil.py fail <name> <message>   # record a script that died silently
    python peerutil.py summary [names...]      # print the figures of every peer
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PGHOST = os.environ.get("PGHOST", "127.0.0.1")
PGPORT = os.environ.get("PGPORT", "5432")
PGUSER = os.environ.get("PGUSER", "postgres")
RESULTS = Path(__file__).resolve().parents[1] / "results"
PEERS = ("pgbench", "procrastinate", "pgqueuer", "dbos")


def dsn(db: str) -> str:
    return f"postgresql://{PGUSER}@{PGHOST}:{PGPORT}/{db}"


def recreate_db(db: str) -> None:
    """Drop database `db` (disconnecting anyone still on it) and create it empty."""
    import psycopg  # lazily: the CLI below (run_all.sh) must work without the peers venv
    from psycopg import sql as pgsql

    ident = pgsql.Identifier(db)
    with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
        conn.execute(pgsql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(pgsql.SQL("CREATE DATABASE {}").format(ident))


def sql(db: str, statement: str, params: tuple | None = None) -> list[tuple] | None:
    """Run one statement on a fresh autocommit connection; rows if it returns any."""
    import psycopg

    with psycopg.connect(dsn(db), autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else None


def checkpoint(db: str) -> None:
    """Flush dirty pages so a timed phase does not pay for the previous one's writes."""
    sql(db, "CHECKPOINT")


def server_version() -> str:
    return sql("postgres", "SHOW server_version")[0][0]


def percentile(values: list[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Timer:
    """`with Timer() as t: ...` then `t.elapsed` in seconds (perf_counter)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.elapsed = time.perf_counter() - self.t0


# --- worker processes ---------------------------------------------------------------

_children: list[subprocess.Popen] = []


def spawn(args: list[str], stdin: bool = False) -> subprocess.Popen:
    """Start `python <args>` with a stdout pipe (and a stdin pipe if asked); killed on deadline
    or exit."""
    proc = subprocess.Popen(
        [sys.executable, *args], stdin=subprocess.PIPE if stdin else None, stdout=subprocess.PIPE, text=True
    )
    _children.append(proc)
    return proc


def release_together(args: list[str], procs: int, timeout: float) -> tuple[float, list[dict | list]]:
    """Start `procs` workers `python <args>`, wait for each one's READY, then release them all at
    once with a GO line on stdin; returns the seconds from the release until the last exited,
    and each one's JSON (see collect_json)."""
    workers = [spawn(args, stdin=True) for _ in range(procs)]
    for proc in workers:
        wait_ready(proc)
    time.sleep(0.5)  # let every worker settle before the release
    with Timer() as t:
        for proc in workers:
            proc.stdin.write("GO\n")
            proc.stdin.flush()
        # Each worker's output is read by its own thread, so none blocks on a full pipe.
        with ThreadPoolExecutor(len(workers)) as pool:
            outs = list(pool.map(lambda proc: collect_json(proc, timeout), workers))
    return t.elapsed, outs


def wait_ready(proc: subprocess.Popen) -> None:
    """Block until the worker prints READY (it does so once it is listening)."""
    line = proc.stdout.readline().strip()
    if line != "READY":
        raise RuntimeError(f"worker did not start (said {line!r}, exit {proc.poll()})")


def collect_json(proc: subprocess.Popen, timeout: float) -> dict | list:
    """Wait for the worker to exit 0 and parse the JSON on its last stdout line."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise TimeoutError(f"worker still running after {timeout:.0f} s") from None
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker exited {proc.returncode}: {out.strip()[-300:]!r}")
    return json.loads(lines[-1])


def kill_children() -> None:
    for proc in _children:
        if proc.poll() is None:
            proc.kill()
    _children.clear()


# --- results ------------------------------------------------------------------------


class Deadline(BaseException):
    """The whole-script time budget ran out (not caught by per-phase handlers)."""


def _unit(name: str) -> str:
    if name.endswith("_per_s"):
        return "/s"
    return "ms" if name.endswith("_ms") else "s"


class Report:
    """Figures and errors of one peer run, saved as bench/results/<peer>.json."""

    def __init__(self, peer: str, version: str, quick: bool, params: dict) -> None:
        self.peer = peer
        self.data: dict = {
            "peer": peer,
            "version": version,
            "quick": quick,
            "params": params,
            "env": {
                "postgres": server_version(),
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                # Other work on the box skews every figure; keep the evidence with them
                # (the end value includes this script's own client and server load).
                "loadavg_1m_start": round(os.getloadavg()[0], 2),
            },
            "notes": [],
            "figures": {},
            "error": None,
            "errors": {},
        }
        self.t0 = time.perf_counter()
        print(f"== {peer} {version}{' (quick)' if quick else ''}: {params}", flush=True)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)

    def add(self, name: str, value: float) -> None:
        self.data["figures"][name] = round(value, 3)
        print(f"   {name:<30} {value:>10.1f} {_unit(name)}", flush=True)

    def fail(self, phase: str, message: str) -> None:
        self.data["errors"][phase] = message
        self.data["error"] = "; ".join(f"{k}: {v}" for k, v in self.data["errors"].items())
        print(f"   !! {self.peer} phase {phase} FAILED: {message}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Run one measurement; an exception is recorded and the script continues."""
        try:
            yield
        except Deadline:
            self.fail(name, "interrupted by the script deadline")
            raise
        except Exception as exc:
            self.fail(name, f"{type(exc).__name__}: {exc}".strip()[:500])

    def save(self) -> Path:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        self.data["env"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        return write_json(self.peer, self.data)

    def arm_deadline(self, seconds: int) -> None:
        """After `seconds` (or on SIGTERM): save what we have, kill workers, raise Deadline."""

        def on_deadline(signum: int, _frame: object) -> None:
            signal.alarm(0)
            what = "SIGTERM" if signum == signal.SIGTERM else f"deadline of {seconds} s"
            self.fail("deadline", f"{what} reached, script stopped")
            kill_children()
            self.save()
            raise Deadline(what)

        signal.signal(signal.SIGALRM, on_deadline)
        signal.signal(signal.SIGTERM, on_deadline)
        signal.alarm(seconds)

    def finish(self) -> int:
        """Save, print one status line, return the process exit code."""
        signal.alarm(0)
        kill_children()
        path = self.save()
        status = "OK" if not self.data["error"] else f"FAILED ({self.data['error']})"
        print(f"== {self.peer}: {status}; {self.data['elapsed_s']} s; wrote {path}", flush=True)
        return 0 if not self.data["error"] else 1


def run(report: Report, body, budget_s: int) -> None:
    """Run `body()` under a deadline, record any crash, save, and exit."""
    report.arm_deadline(budget_s)
    try:
        body()
    except Deadline:
        pass
    except BaseException as exc:  # a crash outside any phase (or Ctrl-C) is still recorded
        report.fail("script", f"{type(exc).__name__}: {exc}"[:500])
    sys.exit(report.finish())


def write_json(peer: str, data: dict) -> Path:
    """Write bench/results/<peer>.json atomically (tmp file + rename)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{peer}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
    return path


# --- CLI for run_all.sh ---------------------------------------------------------------


def _summary(names: list[str]) -> None:
    """Print every peer's figures, one row per figure, one column per peer."""
    loaded = {}
    for name in names:
        path = RESULTS / f"{name}.json"
        if path.exists():
            loaded[name] = json.loads(path.read_text())
    if not loaded:
        print("no peer results found")
        return
    rows: list[str] = []
    for data in loaded.values():
        rows += [k for k in data.get("figures", {}) if k not in rows]
    width = max(len(r) for r in rows) if rows else 10
    print(f"{'figure':<{width}}  " + "  ".join(f"{n:>16}" for n in loaded))
    print(f"{'version':<{width}}  " + "  ".join(f"{d.get('version')!s:>16}" for d in loaded.values()))
    for row in rows:
        cells = []
        for data in loaded.values():
            value = data.get("figures", {}).get(row)
            cells.append(f"{value:>16.1f}" if value is not None else f"{'-':>16}")
        print(f"{row:<{width}}  " + "  ".join(cells))
    for name, data in loaded.items():
        if data.get("error"):
            print(f"!! {name} FAILED: {data['error']}")


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "fail":
        # The script died before writing its JSON (crash at import, killed by timeout -k).
        peer, message = argv[1], " ".join(argv[2:])
        write_json(
            peer,
            {"peer": peer, "version": None, "figures": {}, "error": message, "errors": {"script": message}},
        )
        print(f"!! {peer} FAILED: {message}")
        return 0
    if argv and argv[0] == "summary":
        _summary(argv[1:] or list(PEERS))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
