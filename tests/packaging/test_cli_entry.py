"""The installed ``fuseline`` console script starts and reports its version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fuseline

SCRIPT = Path(sys.executable).parent / ("fuseline.exe" if sys.platform == "win32" else "fuseline")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.is_file(), f"the console script is not installed next to {sys.executable}"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=60, check=False)


def test_fuseline_help_exits_zero_and_describes_the_tool() -> None:
    proc = run_cli("--help")

    assert proc.returncode == 0, proc.stderr
    assert "Usage: fuseline" in proc.stdout
    assert "Durable workflow orchestration" in proc.stdout
    assert "--version" in proc.stdout


def test_fuseline_version_prints_the_package_version() -> None:
    proc = run_cli("--version")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"fuseline {fuseline.__version__}\n"
