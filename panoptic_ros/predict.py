"""Panoptic segmentation of image files: ``python -m panoptic_ros.predict IMAGE [IMAGE ...] --out DIR``.

For each image writes ``<name>_overlay.png`` (classes and instance outlines), ``<name>_panoptic.png`` (16-bit
segment ids + 1, so void = 0) and ``<name>_segments.json``, and prints the per-stage latency.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np

from .backends import add_backend_argument
from .datasets import read_rgb
from .predictor import DEFAULT_WEIGHTS, Predictor
from .visualize import render_panoptic


def main() -> None:
    parser = argparse.ArgumentParser(description="Panoptic segmentation of image files, in the mode of the weights (fast: PanoNet; accuracy: PanopticFPN).")
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--out", type=Path, default=Path("predictions"))
    parser.add_argument("--device", default="auto")
    add_backend_argument(parser)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--scale", type=float, help="resize factor of the network input (default: the weights')")
    opts = parser.parse_args()
    predictor = Predictor.from_weights(opts.weights, device=opts.device, precision=opts.precision, scale=opts.scale,
                                       backend=opts.backend)
    opts.out.mkdir(parents=True, exist_ok=True)
    for path in opts.images:
        rgb = read_rgb(path)
        result = predictor(rgb)
        overlay = render_panoptic(rgb, result.semantic.numpy(), result.panoptic.numpy(), predictor.table)
        cv2.imwrite(str(opts.out / f"{path.stem}_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(opts.out / f"{path.stem}_panoptic.png"), (result.panoptic.numpy() + 1).astype(np.uint16))
        segments = [dataclasses.asdict(s) for s in result.segments]
        (opts.out / f"{path.stem}_segments.json").write_text(json.dumps(segments, indent=1) + "\n")
        things = sum(s["is_thing"] for s in segments)
        stages = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings.items())
        print(f"{path.name}: {len(segments)} segments ({things} instances); {stages}")


if __name__ == "__main__":
    main()
