"""Offline bag replay benchmark: ``evaluate_bag`` on the embedded sample bag (5 CamVid val frames, 480x360 rgb8 with
semantic and instance labels), the code path users run.

Reports frames per second of the whole loop and the share of its time spent outside the Predictor on bag reading
and image decoding ("bag decode") and on ground truth + mIoU / PQ / AP accumulation ("metrics"); target: under 10%
together, so that a replay measures the model rather than the harness.

    python -m benchmarks.replay [--weights W] [--device cpu|cuda] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from panoptic_ros.backends import add_backend_argument
from panoptic_ros.evaluate_bag import DEFAULT_BAG, evaluate_bag
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor

from .common import environment, report

TARGET_SHARE = 0.10


def total_ms(stats: dict, frames: int) -> float:
    return stats["mean"] * frames if stats else 0.0


def measure(predictor: Predictor, passes: int) -> dict:
    """Totals over ``passes`` replays of the sample bag (after one warm-up pass), per frame in ms."""
    frames = wall = decode = metrics = predict = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(passes + 1):
            result = evaluate_bag(DEFAULT_BAG, predictor, Path(tmp) / str(k))
            if k == 0:
                continue
            n = result["frames"]["predicted"]
            frames += n
            wall += result["wall_s"] * 1e3
            decode += total_ms(result["overhead_ms"]["bag decode"], n)
            metrics += total_ms(result["overhead_ms"]["metrics"], n)
            predict += total_ms(result["latency_ms"]["total"], n)
    return {
        "frames": int(frames),
        "fps": frames / wall * 1e3,
        "per_frame_ms": {"loop": wall / frames, "predictor": predict / frames, "bag decode": decode / frames,
                         "metrics": metrics / frames},
        "share": {"bag decode": decode / wall, "metrics": metrics / wall, "decode + metrics": (decode + metrics) / wall},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--device", default="cpu")
    add_backend_argument(parser)
    parser.add_argument("--quick", action="store_true", help="one measured pass instead of five")
    opts = parser.parse_args()
    predictor = Predictor.from_weights(opts.weights, device=opts.device, backend=opts.backend)
    result = measure(predictor, 1 if opts.quick else 5)
    share = result["share"]["decode + metrics"]
    payload = {**environment(predictor.device), "weights": opts.weights, "bag": str(DEFAULT_BAG),
               "resolution": "480x360", "result": result, "target": f"decode + metrics < {TARGET_SHARE:.0%} of the loop",
               "meets_target": share < TARGET_SHARE}
    ms = result["per_frame_ms"]
    lines = [f"# Offline replay benchmark ({predictor.device.type.upper()})", "",
             f"commit {payload['commit']}, {payload['date']}, {payload['cpu']}, {payload['cpu_threads']} threads, "
             f"torch {payload['torch']}, device {payload['device']}, weights {opts.weights}", "",
             f"evaluate_bag on {DEFAULT_BAG.name} (480x360 rgb8, labels), {result['frames']} frames", "",
             "| FPS | loop ms/frame | predictor | bag decode | metrics | decode + metrics share | target |",
             "|---|---|---|---|---|---|---|",
             f"| {result['fps']:.1f} | {ms['loop']:.1f} | {ms['predictor']:.1f} | {ms['bag decode']:.1f} | "
             f"{ms['metrics']:.1f} | {100 * share:.1f}% | < {TARGET_SHARE:.0%} ({'met' if share < TARGET_SHARE else 'missed'}) |",
             ""]
    report("replay", predictor.device, payload, lines)


if __name__ == "__main__":
    main()
