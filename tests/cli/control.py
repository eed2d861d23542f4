"""Helpers of the issue 11 CLI tests: the ``control_flows`` module in the working folder, and times
read from an instance's history."""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.cli.helpers import Cli

CONTROL_FLOWS = Path(__file__).with_name("control_flows.py")


def with_control_flows(cli: Cli) -> Cli:
    """``cli`` with ``control_flows.py`` next to ``flows.py``, importable as ``control_flows``."""
    shutil.copy(CONTROL_FLOWS, cli.cwd / "control_flows.py")
    return cli


def event_times(shown: dict[str, Any], kind: str, step: str | None = None) -> list[datetime]:
    """When each event of ``kind`` (of ``step``, if given) happened, oldest first."""
    return [
        datetime.fromisoformat(e["at"])
        for e in shown["events"]
        if e["kind"] == kind and (step is None or e["step"] == step)
    ]


def reasons(explained: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """``instances explain --json`` as (step, state, reason) triples."""
    return [(e["step"], e["state"], e["reason"]) for e in explained]
