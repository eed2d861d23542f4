"""bench/report.py --runs: the median of every figure over several runs' results."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPORT = Path(__file__).resolve().parents[2] / "bench" / "report.py"


def _report_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_median_of_takes_each_figure_apart_and_keeps_the_rest() -> None:
    median_of = _report_module().median_of
    runs = [
        {"sizes": {"noop": 10}, "pg": {"steps_per_s": 100.0, "note": "a"}, "flag": True},
        {"sizes": {"noop": 10}, "pg": {"steps_per_s": 300.0, "note": "b"}, "flag": False},
        {"sizes": {"noop": 10}, "pg": {"steps_per_s": 200.0}},
    ]
    assert median_of(runs) == {"sizes": {"noop": 10}, "pg": {"steps_per_s": 200.0, "note": "a"}, "flag": True}
    assert median_of(runs[:2])["pg"]["steps_per_s"] == 200.0
    assert isinstance(median_of(runs)["sizes"]["noop"], int)


def _write_run(folder: Path, rate: float, peer_rate: float) -> Path:
    folder.mkdir()
    (folder / "fuseline.json").write_text(json.dumps({"pg_drain_noop_c4": {"steps_per_s": rate}}))
    (folder / "pgqueuer.json").write_text(json.dumps({"figures": {"drain_c4_per_s": peer_rate}}))
    return folder


def test_runs_print_the_ratio_of_the_medians(tmp_path: Path) -> None:
    runs = [
        _write_run(tmp_path / f"run{n}", rate, peer)
        for n, (rate, peer) in enumerate([(900, 300), (3000, 100), (1200, 400)])
    ]
    out = subprocess.run(
        [sys.executable, str(REPORT), "--runs", *map(str, runs)], capture_output=True, text=True, check=True
    ).stdout
    assert "Median of 3 runs." in out
    row = next(line for line in out.splitlines() if line.startswith("| no-op drain, 4 workers"))
    assert "1,200 /s" in row and "300 /s" in row and "4.00x" in row


def test_a_run_without_results_is_refused(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPORT), "--runs", str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode == 1
    assert "no fuseline.json" in done.stderr
