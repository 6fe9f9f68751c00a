"""What every benchmark records next to its numbers: commit, device, library versions, and where it writes."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def commit() -> str:
    """Current commit, with '+dirty' when the working tree has uncommitted changes (result files of benchmarks
    aside: ``make bench`` rewrites them one benchmark after another, which must not mark the next one dirty)."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks/results"], cwd=root, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def environment(device: torch.device) -> dict:
    info = {
        "commit": commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_results(name: str, device: torch.device, payload: dict, markdown: str) -> Path:
    """Writes ``<name>-<cpu|cuda>.json`` and ``.md`` under benchmarks/results (or $PANOPTIC_ROS_BENCH_DIR)."""
    out_dir = Path(os.environ.get("PANOPTIC_ROS_BENCH_DIR", RESULTS_DIR))
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{name}-{device.type}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown)
    return stem.with_suffix(".json")


def report(name: str, device: torch.device, payload: dict, lines: list[str]) -> None:
    """Write the results (``write_results``) and print the Markdown table."""
    path = write_results(name, device, payload, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {path}")
