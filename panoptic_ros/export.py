"""Export the network for a backend, as an explicit step before the node or a tool uses it.

    python -m panoptic_ros.export --weights W --backend onnxruntime --resolution 1024x512 [--scale S]
        [--precision fp32] [--cache-dir D] [--threads N]

``--backend``: ``compile``, ``onnxruntime``, ``tensorrt`` or ``auto`` (``backends.BACKENDS``). ``--resolution`` is
the camera's frame size, several may be given; the artefact is built for the network input such a frame is resized
to at ``--scale`` (the node's ``input_scale``; default the weights' own, as the node's default 0 takes it):
``Predictor.network_size``, so the shipped PanoNet (scale 1.05, sides multiples of 32) builds 512x384 for 480x360.
The artefact and its key go to
the cache directory (``backends.default_cache_dir()`` by default), after the check against eager on the embedded
sample frame; an artefact that is already there and current is kept. ``--threads``: torch's thread count for the
build; a CPU ``compile`` artefact is built for it (inductor writes it into the code) and is stale in a process
with another count, so give the node's (default: torch's, the number of cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .backends import BACKENDS, BackendError, artefact_paths
from .predictor import DEFAULT_WEIGHTS, Predictor


def resolution(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 1024x512") from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: width and height must be positive")
    return width, height


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--backend", required=True, choices=[b for b in BACKENDS if b != "eager"])
    parser.add_argument("--resolution", type=resolution, nargs="+", required=True, metavar="WxH",
                        help="frame sizes")
    parser.add_argument("--scale", type=float, help="the node's input_scale (default: the weights' own)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, help="default: $PANOPTIC_ROS_CACHE or ~/.cache/panoptic_ros")
    parser.add_argument("--threads", type=int, help="torch threads for the build (a CPU compile artefact keeps them)")
    opts = parser.parse_args(argv)
    if opts.threads is not None:
        if opts.threads < 1:
            parser.error(f"--threads {opts.threads}: expected a positive number")
        torch.set_num_threads(opts.threads)
    try:
        predictor = Predictor.from_weights(opts.weights, scale=opts.scale, device=opts.device,
                                           precision=opts.precision, backend=opts.backend, cache_dir=opts.cache_dir)
        if predictor.backend == "eager":  # auto with a network that runs eager only (the accuracy mode)
            raise BackendError(f"backend {opts.backend!r} resolves to eager for {opts.weights}: nothing to export")
        least = predictor.model.min_input_size
        for width, height in opts.resolution:
            if min(width, height) < least:
                raise BackendError(f"{width}x{height} is below the network's smallest input, {least} x {least}")
            net_height, net_width = predictor.network_size(height, width)
            predictor.network.prepare(net_height, net_width)
            key = predictor.network.key(net_height, net_width)
            model_path, key_path = artefact_paths(predictor.network.cache_dir, key)
            print(f"{predictor.backend} {width}x{height} (network input {net_width}x{net_height}): {model_path} "
                  f"(key {key_path.name})")
    except BackendError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
