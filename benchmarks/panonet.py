"""PanoNet end-to-end benchmark through the Predictor (preprocess, network, clustering, merge) on the embedded
CamVid frame resized to each resolution.

CPU: frames per second at 480x360 (CamVid; the fast mode's budget is >= 10 FPS there), 512x256 and 1024x512 and the
share of each stage, for each available backend side by side (eager, onnxruntime; ``panoptic_ros.backends``), with
the onnxruntime / eager ratio. GPU (when present): 2048x1024 in
fp16 and fp32, frames per second and peak GPU memory (target >= 250 FPS under 1 GB on an H100).

    python -m benchmarks.panonet [--weights W] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from panoptic_ros.backends import onnxruntime_available
from panoptic_ros.datasets import read_rgb
from panoptic_ros.demo import DEFAULT_IMAGE
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor

from .common import environment, report, write_results


def measure(predictors: dict[str, Predictor], rgb: np.ndarray, seconds: float) -> dict[str, dict]:
    """Each predictor's stage timings and FPS on ``rgb``, frames taken in turn (one of each, repeatedly), so that
    a load that changes during the run weighs on all of them alike."""
    for predictor in predictors.values():
        for _ in range(3):
            predictor(rgb)
    stages: dict[str, dict[str, list[float]]] = {name: {} for name in predictors}
    busy = dict.fromkeys(predictors, 0.0)
    frames, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds * len(predictors) or frames < 5:
        for name, predictor in predictors.items():
            clock = time.perf_counter()
            for stage, ms in predictor(rgb).timings.items():
                stages[name].setdefault(stage, []).append(ms)
            busy[name] += time.perf_counter() - clock
        frames += 1
    results = {}
    for name in predictors:
        median = {k: float(np.median(v)) for k, v in stages[name].items()}
        total = sum(median.values())
        results[name] = {"frames": frames, "fps": frames / busy[name], "median_ms": median,
                         "share": {k: v / total for k, v in median.items()}}
    return results


def row(name: str, r: dict) -> str:
    share = ", ".join(f"{k} {100 * v:.0f}%" for k, v in r["share"].items())
    extra = f", peak {r['peak_mib']:.0f} MiB" if "peak_mib" in r else ""
    return f"| {name} | {r['fps']:.1f} | {sum(r['median_ms'].values()):.1f} | {share}{extra} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    seconds = 2.0 if opts.quick else 15.0
    frame = read_rgb(DEFAULT_IMAGE)
    cpu = torch.device("cpu")
    backends = ["eager"] + (["onnxruntime"] if onnxruntime_available() else [])
    cache = Path(tempfile.mkdtemp(prefix="panonet_bench_"))  # artefacts built (and checked) before timing
    predictors = {b: Predictor.from_weights(opts.weights, device="cpu", backend=b, cache_dir=cache) for b in backends}
    predictor = predictors["eager"]
    results, ratios, network = {}, {}, {}
    for w, h in ((480, 360), (512, 256), (1024, 512)):
        rgb = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR)
        net_h, net_w = predictor.network_size(h, w)
        network[f"{w}x{h}"] = f"{net_w}x{net_h}"
        for backend, r in measure(predictors, rgb, seconds).items():  # side by side, frames in turn
            results[f"{w}x{h} {backend}"] = r
        if "onnxruntime" in predictors:
            ratios[f"{w}x{h}"] = results[f"{w}x{h} onnxruntime"]["fps"] / results[f"{w}x{h} eager"]["fps"]
    payload = {**environment(cpu), "weights": opts.weights, "model": predictor.model.config.__dict__,
               "input_scale": predictor.scale, "network_input": network, "results": results,
               "onnxruntime_over_eager_fps": ratios}
    lines = ["# PanoNet end-to-end benchmark (CPU)", "",
             f"commit {payload['commit']}, {payload['date']}, {payload['cpu']}, {payload['cpu_threads']} threads, "
             f"torch {payload['torch']}, weights {opts.weights}; backends measured side by side (fp32)", "",
             f"network input at the weights' input scale {predictor.scale:g}: "
             + ", ".join(f"{k} -> {v}" for k, v in network.items()), "",
             "| resolution, backend | FPS | median ms | share of time |", "|---|---|---|---|",
             *(row(k, v) for k, v in results.items()), "",
             *(f"onnxruntime / eager FPS at {k}: {v:.2f}x" for k, v in ratios.items()), ""]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        gpu_results = {}
        big = cv2.resize(frame, (2048, 1024), interpolation=cv2.INTER_LINEAR)
        for precision in ("fp16", "fp32"):
            p = Predictor.from_weights(opts.weights, device="cuda", precision=precision)
            torch.cuda.reset_peak_memory_stats()
            r = measure({precision: p}, big, seconds)[precision]
            r["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
            gpu_results[f"2048x1024 {precision}"] = r
        write_results("panonet", gpu, {**environment(gpu), "weights": opts.weights, "cuda": gpu_results,
                                       "target": ">= 250 FPS at 2048x1024 fp16, < 1 GB on an H100"},
                      "\n".join(["# PanoNet end-to-end benchmark (CUDA)", "", "| resolution | FPS | median ms | share |",
                                 "|---|---|---|---|", *(row(k, v) for k, v in gpu_results.items()), ""]))
    else:
        payload["cuda"] = "unmeasured: no CUDA device in this run"
        lines += ["GPU (2048x1024 fp16): unmeasured, no CUDA device in this run.", ""]
    report("panonet", cpu, payload, lines)


if __name__ == "__main__":
    main()
