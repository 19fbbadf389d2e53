"""`strata bench` at a tiny scale: it starts real clusters, measures, and writes its report and plot."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.process, pytest.mark.model, pytest.mark.timeout(600)]


def test_bench_writes_report_and_plot(embedded_home: Path, tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    command = [
        sys.executable, "-m", "services.app.cli", "bench", "--home", str(embedded_home), "--shards", "2",
        "--concurrency", "2", "--max-tokens", "6", "--no-scale-out", "--output", str(report),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = report.read_text()
    for heading in ("## One stream", "## Load, 2 shard server(s)", "## Memory", "mlx-lm `batch_generate`"):
        assert heading in text
    assert "| strata, 2 shard server(s) |" in text
    assert "mean of 2 runs, before and after the clusters" in text
    assert "The floor under a hop" in text
    assert "A ring hop with no model in it takes" in text
    assert "strata's per-hop p50 against it: 2 shards" in text
    assert "mlx-lm in the same minutes" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 1000
