"""Raw PostgreSQL ceiling for a queue step, measured with pgbench on this machine.

The queue table (pgbench/queue_setup.sql) models one workflow step per row, with a
partial index on queued rows; it is rebuilt before every run. Scripts (pgbench/*.sql):

  claim_then_complete  two autocommit transactions per step: lease one queued row
                       (UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)),
                       then mark it done -- what a worker must do at minimum
  claim_complete_1tx   one transaction: SELECT ... FOR UPDATE SKIP LOCKED, UPDATE done, COMMIT
  batch10              lease 10 rows in one transaction, complete them in a second

The table also holds as many finished rows as queued ones, as a live queue does: with
few or none the planner may rank the primary key equal to the partial index for the
claim (it picked the pkey at 120k all-queued rows, and with 10 % done), and each claim
then walks past every row already done -- tps falls 3x within 8 s, which is a plan
artefact, not the ceiling. setup_queue() checks the plan and fails loudly otherwise.

Figures are steps/s (pgbench tps; x10 for batch10), c=4 uses -j 2 (2 cores).
Writes bench/results/pgbench.json.

    python bench/peers/peer_pgbench.py [--quick]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
from pathlib import Path

import peerutil as pu

DB = "peer_pgbench"
SQL_DIR = Path(__file__).resolve().parent / "pgbench"

# figure name -> (script file, clients, steps per pgbench transaction)
RUNS = {
    "claim_then_complete_c1_per_s": ("queue_claim_then_complete.sql", 1, 1),
    "claim_then_complete_c4_per_s": ("queue_claim_then_complete.sql", 4, 1),
    "claim_complete_1tx_c4_per_s": ("queue_claim_complete_1tx.sql", 4, 1),
    "batch10_c4_per_s": ("queue_batch10_claim_then_complete.sql", 4, 10),
}


# The claim's inner query; its plan must scan the partial index of queued rows.
CLAIM_PLAN = (
    "EXPLAIN SELECT id FROM q_steps WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
)


def find_pgbench() -> str:
    """pgbench on PATH, else the newest server bin dir (Debian keeps it there)."""
    found = shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )
    if not found:
        raise FileNotFoundError("pgbench not found on PATH nor in /usr/lib/postgresql/*/bin")
    return found


def setup_queue(rows: int) -> None:
    """(Re)build the queue table: `rows` finished steps, then `rows` queued; CHECKPOINT."""
    text = (SQL_DIR / "queue_setup.sql").read_text()
    text = text.replace(":rows", str(int(rows))).replace(":history", str(int(rows)))
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    # One statement at a time: VACUUM cannot run inside the implicit multi-statement tx.
    for statement in filter(None, (s.strip() for s in body.split(";"))):
        pu.sql(DB, statement)
    pu.checkpoint(DB)
    plan = "\n".join(r[0] for r in pu.sql(DB, CLAIM_PLAN))
    if "q_steps_queued" not in plan:
        raise RuntimeError("claim query does not use the partial index: " + " ".join(plan.split()))


def run_script(pgbench: str, script: str, clients: int, seconds: int) -> float:
    """Run one pgbench script; return its tps (transactions per second)."""
    env = {**os.environ, "PGHOST": pu.PGHOST, "PGPORT": pu.PGPORT, "PGUSER": pu.PGUSER}
    cmd = [pgbench, "-n", "-f", str(SQL_DIR / script), "-c", str(clients), "-j", str(min(clients, 2))]
    cmd += ["-T", str(seconds), DB]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 60)
    tps = re.search(r"^tps = ([0-9.]+)", proc.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", proc.stdout, re.M)
    if proc.returncode != 0 or not tps:
        raise RuntimeError(f"pgbench exited {proc.returncode}: {(proc.stderr or proc.stdout)[-300:]!r}")
    if failed and int(failed.group(1)):
        raise RuntimeError(f"pgbench reported {failed.group(1)} failed transactions")
    return float(tps.group(1))


def check_queue(total: int) -> None:
    """Every leased row must be done, and the queue must not have run dry mid-run."""
    done, running, queued = pu.sql(
        DB,
        "SELECT count(*) FILTER (WHERE status = 'done'), count(*) FILTER (WHERE status = 'running'),"
        " count(*) FILTER (WHERE status = 'queued') FROM q_steps",
    )[0]
    if running or queued == 0:
        raise RuntimeError(f"queue state after run: done={done} running={running} queued={queued}/{total}")


def main(args: argparse.Namespace, report: pu.Report) -> None:
    pgbench = find_pgbench()
    pu.recreate_db(DB)
    for figure, (script, clients, steps) in RUNS.items():
        with report.phase(figure):
            # Enough rows that the queue never runs dry within -T (3x the README's rates).
            rows = (45_000 if steps > 1 else 15_000) * args.seconds
            setup_queue(rows)
            tps = run_script(pgbench, script, clients, args.seconds)
            check_queue(rows)
            report.add(figure, tps * steps)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", "-T", type=int, default=8, help="pgbench -T per script")
    ap.add_argument("--quick", action="store_true", help="smoke test: -T 2")
    ap.add_argument("--budget", type=int, default=150, help="hard limit for the whole script, s")
    a = ap.parse_args()
    if a.quick:
        a.seconds, a.budget = 2, 60
    pg_version = f"PostgreSQL {pu.server_version().split()[0]}"
    report = pu.Report("pgbench", pg_version, a.quick, {"seconds": a.seconds, "clients": [1, 4]})
    report.note("steps/s from pgbench tps (x10 for batch10); -j 2 at c=4; table rebuilt before each run")
    pu.run(report, lambda: main(a, report), a.budget)
