"""A plain ``pip install`` of the wheel gives a working ``fuseline``, migrations included.

The wheel is built from this checkout, installed (with its dependencies, not
editable) into a new virtual environment outside the repository, and the
installed console script migrates the default SQLite database and runs a
workflow from an empty folder. If the alembic scripts were not inside the
wheel, ``db upgrade`` could not find them there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fuseline.broker.sql.migrate import HEAD_REVISION
from tests.cli.helpers import FLOWS, base_env, is_uuid

REPO = Path(__file__).resolve().parents[2]


def run(argv: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, cwd=cwd, env=base_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (argv, proc.stdout, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.slow
def test_installed_wheel_migrates_and_runs_a_workflow(tmp_path: Path) -> None:
    assert REPO not in tmp_path.parents
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)], tmp_path, 180)
    (wheel,) = dist.glob("fuseline-*.whl")

    venv = tmp_path / "venv"
    # No pip of its own (ensurepip takes seconds): this environment's pip installs into it.
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, 120)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    run([*pip, "install", "--quiet", str(wheel)], tmp_path, 300)

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(FLOWS, project / "flows.py")
    where = run([str(python), "-c", "import fuseline; print(fuseline.__file__)"], project, 60)
    package = Path(where.stdout.strip()).parent
    assert package.is_relative_to(venv), where.stdout
    assert (package / "_migrations" / "env.py").is_file(), "the migrations are not in the wheel"
    fuseline = str(venv / "bin" / "fuseline")

    upgraded = run([fuseline, "db", "upgrade"], project, 60)
    assert HEAD_REVISION in upgraded.stdout
    assert (project / "fuseline.db").is_file()
    assert "up to date" in run([fuseline, "db", "current"], project, 60).stdout

    submitted = run([fuseline, "submit", "flows:diamond", "--input", "x=2", "--input", "y=3"], project, 60)
    instance_id = submitted.stdout.strip()
    assert is_uuid(instance_id)
    burst = [fuseline, "worker", "run", "flows:diamond", "--burst", "--poll-interval", "0.05"]
    worker = run(burst, project, 60)
    assert f"instance={instance_id} step=d attempt=1 state=SUCCEEDED" in worker.stderr

    shown = json.loads(run([fuseline, "instances", "show", instance_id, "--json"], project, 60).stdout)
    assert shown["status"] == "SUCCEEDED"
    assert shown["result"] == (2 + 3) * 2 + (2 + 3 + 1)
