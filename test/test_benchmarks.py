"""The benchmarks run and write their result files (numbers are not asserted: timings belong in the files)."""

import json
import sys

import pytest

from panoptic_ros.ops import extension_available
from panoptic_ros.predictor import DEFAULT_WEIGHTS


@pytest.mark.slow
@pytest.mark.parametrize("name", ["imp", "panonet", "clustering", "replay", "node", "mirror"])
def test_benchmark_writes_its_results(name, tmp_path, monkeypatch):
    if name == "imp" and not extension_available():
        pytest.skip("IMP extension not built")
    if name in ("panonet", "replay", "mirror") and not DEFAULT_WEIGHTS.exists():
        pytest.skip("no shipped weights")
    module = __import__(f"benchmarks.{name}", fromlist=["main"])
    monkeypatch.setenv("PANOPTIC_ROS_BENCH_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", [name, "--quick"])
    module.main()
    result = json.loads((tmp_path / f"{name}-cpu.json").read_text())
    assert result["commit"] and result["cpu"] and (tmp_path / f"{name}-cpu.md").read_text().startswith("#")
