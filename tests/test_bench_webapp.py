"""benchmarks/bench_webapp.py runs end to end at a tiny N: a live `toolkit serve`, every measurement, the JSON report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, python-multipart) is not installed")
pytest.importorskip("multipart", reason="python-multipart is not installed")

REPO = Path(__file__).resolve().parents[1]
N = 2000


def test_bench_webapp_reports_every_measurement(tmp_path):
    run = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_webapp.py"), "--sizes", str(N), "--requests", "20",
         "--clients", "4", "--map-tries", "2", "--baseline-queries", "1", "--workdir", str(tmp_path), "--json"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert run.returncode == 0, run.stderr
    (result,) = json.loads(run.stdout)["sizes"]
    assert result["n"] == N and result["feature_bytes"] == N * 256 * 4
    for phase in ("single", "concurrent"):
        for kind in ("keyword", "vector", "refine"):
            measured = result["latency"][phase][kind]
            assert measured["requests"] == 20 and 0 < measured["p50_ms"] <= measured["p95_ms"]
    assert result["latency"]["concurrent"]["clients"] == 4
    # Every image has a point, in the group of its cluster (the label CSV's 10 classes), decoded from the binary map.
    assert result["map"]["points"] == N and result["map"]["groups"] == 10 and result["map"]["tries"] == 2
    assert result["startup_s"] > 0 and result["peak_rss_mb"] > 0 and result["rss_goal_mb"] == round((N * 256 * 4 + 2**30) / 2**20)
    assert result["baseline"]["original_ms"] > 0 and result["baseline"]["limit_ms"] > 0
    assert set(result["ratios"]) == {"p95_of_goal", "rss_of_goal", "map_of_goal", "original_over_server_p50",
                                     "server_p50_over_limit"}
    # The prepared files are reused by a rerun in the same --workdir.
    assert json.loads((tmp_path / f"n{N}" / "prepared.json").read_text())["data"]["n"] == N
