"""The benchmark script still runs (tiny sizes; the figures themselves are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_registry_benchmark_runs_and_reports_every_phase() -> None:
    answer = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "registry_bench.py"), "--duration", "0.3", "--models", "10",
         "--versions", "60", "--artifact-mib", "4"], capture_output=True, text=True, timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]  # non-zero when any request failed
    for phase in ("create 10 models", "create 50 versions", "resolve alias (c=64)", "floor: GET /healthz",
                  "upload 4 MiB", "download 4 MiB", "start→/readyz", "x the framework floor",
                  "GET /deployments?model (c=16, 60 versions)", "newest 50 of 60 versions",
                  "UI model page, 60 versions"):
        assert phase in answer.stdout, answer.stdout


@pytest.mark.slow
def test_llm_benchmark_runs_and_reports_every_concurrency() -> None:
    answer = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "llm_bench.py"), "--hidden", "64", "--layers", "2", "--tokens", "8",
         "--rounds", "1", "--concurrency", "1,4"], capture_output=True, text=True, timeout=600,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]  # non-zero when any request failed
    rows = [line.split() for line in answer.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "4"], answer.stdout
    assert all(float(row[3]) > 0 for row in rows), answer.stdout  # a ratio for each


def test_signing_benchmark_runs_and_reports_every_stage() -> None:
    answer = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "signing_bench.py"), "--size-mib", "8",
                             "--files", "2"], capture_output=True, text=True, timeout=300)
    assert answer.returncode == 0, answer.stderr[-3000:]
    for stage in ("hash once", "push:", "upload:", "pod start:", "x hash once"):
        assert stage in answer.stdout, answer.stdout


def test_analysis_benchmark_runs_and_judges_every_canary() -> None:
    answer = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "analysis_bench.py"), "--canaries", "3", "--rounds", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert answer.returncode == 0, answer.stderr[-3000:]  # non-zero when an interval read nothing
    assert "3 canaries under analysis (6 pods' /metrics" in answer.stdout, answer.stdout
    assert "share of one core at intervalSeconds=30" in answer.stdout
