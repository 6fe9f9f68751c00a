"""Backends side by side (issue #11 item 5): every available backend x precision x resolution (512x256, 1024x512,
2048x1024) in one run, on the network alone (the part a backend runs; ``benchmarks.panonet`` has end to end).

Per combination: latency p50 / p99 over ``--frames`` frames (fewer, at least 3, where they would take over 20 s:
eager fp16 / bf16 on a CPU without native half precision take ~2 s a frame at 512x256) and FPS (1000 / p50); the
peak memory of one frame above what was in use before it (CPU: resident set, ``VmHWM`` reset through
``/proc/self/clear_refs`` after ``malloc_trim``; CUDA: ``torch.cuda.max_memory_allocated``); the memory its artefact
took to load; its agreement with eager fp32 on the embedded sample frame (largest absolute logit difference, share
of pixels with the same argmax class). At each resolution the combinations'
frames are taken in turn (one of each, repeatedly), so a load that changes during the run weighs on all alike.
A combination that cannot run here is listed with the reason (``backends.resolve_backend``'s message).

Artefacts are built (and checked against eager) before timing, into ``--cache-dir`` (default the backends' cache):
a later run reuses them. ``--quick``: 512x256 only, 5 frames, a fresh temporary cache, and no ``compile`` (its
build takes 1-2 min per resolution on 2 cores; ``test/test_backends.py`` builds one).

    python -m benchmarks.backends [--weights W] [--frames N] [--quick] [--cache-dir D]
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from panoptic_ros.backends import (BACKENDS, BackendError, agreement, backend_version, default_cache_dir,
                                   resolve_backend, sample_images)
from panoptic_ros.predictor import DEFAULT_WEIGHTS, PRECISIONS, Predictor

from .common import environment, report

RESOLUTIONS = ((512, 256), (1024, 512), (2048, 1024))


def _status(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def memory_mark(device: torch.device) -> float:
    """Start a peak-memory window; returns the memory in use now (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what an earlier combination freed leaves the resident set first
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
    return _status("VmRSS")


def memory_peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) / 2**20
    return _status("VmHWM")


def in_use(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _status("VmRSS")


def combinations() -> list[tuple[str, str]]:
    return [(b, p) for b in BACKENDS if b != "auto" for p in PRECISIONS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--frames", type=int, default=30, help="timed frames per combination and resolution")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    opts = parser.parse_args()
    device = torch.device(opts.device)
    frames = 5 if opts.quick else opts.frames
    budget = 2.0 if opts.quick else 20.0  # seconds of timed frames per row at most (eager fp16 on the CPU: ~2 s each)
    resolutions = RESOLUTIONS[:1] if opts.quick else RESOLUTIONS
    cache = opts.cache_dir or (Path(tempfile.mkdtemp(prefix="backends_bench_")) if opts.quick else default_cache_dir())
    skipped: dict[str, str] = {}
    predictors: dict[str, Predictor] = {}
    for backend, precision in combinations():
        name = f"{backend} {precision}"
        if opts.quick and backend == "compile":
            skipped[name] = "--quick: its build takes 1-2 min per resolution on 2 cores"
            continue
        try:
            resolve_backend(backend, device, precision)
            predictors[name] = Predictor.from_weights(opts.weights, device=str(device), precision=precision,
                                                      backend=backend, cache_dir=cache)
        except (BackendError, ValueError) as error:
            skipped[name] = str(error)
    results: dict[str, dict] = {}
    with torch.inference_mode():
        for width, height in resolutions:
            images = sample_images(height, width).to(device)
            reference = predictors["eager fp32"].network(images)
            runs, loaded = {}, {}
            for name, predictor in predictors.items():
                before, clock = in_use(device), time.perf_counter()
                network = predictor.network.prepare(height, width)  # built (and checked) here when not cached
                loaded[name] = {"prepare_s": time.perf_counter() - clock, "load_mib": in_use(device) - before}
                runs[name] = (network, images.to(predictor.dtype))
            measured = {name: agreement(reference, network(x)) for name, (network, x) in runs.items()}
            peaks, target = {}, {}
            for name, (network, x) in runs.items():  # one combination at a time: its own peak
                base, clock = memory_mark(device), time.perf_counter()
                network(x)
                peaks[name] = memory_peak(device) - base
                target[name] = max(3, min(frames, int(budget / (time.perf_counter() - clock))))
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(frames):
                for name, (network, x) in runs.items():
                    if len(times[name]) == target[name]:
                        continue
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    clock = time.perf_counter()
                    network(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    times[name].append(1e3 * (time.perf_counter() - clock))
            for name in runs:
                p50, p99 = (float(np.percentile(times[name], q)) for q in (50, 99))
                results[f"{width}x{height} {name}"] = {
                    "resolution": f"{width}x{height}", "backend": name.split()[0], "precision": name.split()[1],
                    "frames": target[name], "p50_ms": p50, "p99_ms": p99, "fps": 1e3 / p50,
                    "peak_mib": peaks[name], **loaded[name], **measured[name]}
            eager = results[f"{width}x{height} eager fp32"]["p50_ms"]
            for name in runs:
                row = results[f"{width}x{height} {name}"]
                row["speedup_over_eager_fp32"] = eager / row["p50_ms"]
    versions = {b: backend_version(b, device) for b in {k.split()[0] for k in predictors}}
    payload = {**environment(device), "weights": opts.weights, "quick": opts.quick, "frames": frames,
               "resolutions": [f"{w}x{h}" for w, h in resolutions], "versions": versions, "results": results,
               "skipped": skipped}
    memory = "peak GPU memory allocated" if device.type == "cuda" else "peak RSS above the RSS before a frame"
    lines = [f"# Backends side by side ({device.type.upper()}, network alone)", "",
             f"commit {payload['commit']}, {payload['date']}, {payload['cpu']}, {payload['cpu_threads']} threads, "
             f"torch {payload['torch']}, weights {opts.weights}; {frames} frames per row (fewer, at least 3, where "
             f"they would take over {budget:.0f} s: the frames column), frames of a resolution taken in turn; "
             f"versions: {'; '.join(f'{k}: {v}' for k, v in sorted(versions.items()))}", "",
             f"| resolution | backend | precision | frames | p50 ms | p99 ms | FPS | x eager fp32 | {memory} MiB | "
             "load MiB | argmax agreement | max logit diff |", "|---|---|---|---|---|---|---|---|---|---|---|---|",
             *(f"| {r['resolution']} | {r['backend']} | {r['precision']} | {r['frames']} | {r['p50_ms']:.1f} | "
               f"{r['p99_ms']:.1f} | {r['fps']:.1f} | {r['speedup_over_eager_fp32']:.2f} | {r['peak_mib']:.0f} | "
               f"{r['load_mib']:.0f} | {100 * r['argmax_agreement']:.2f}% | {r['max_abs_logit_difference']:.1e} |"
               for r in results.values()),
             "", "Not measured here:", "", *(f"- {name}: {reason}" for name, reason in skipped.items()), ""]
    report("backends", device, payload, lines)


if __name__ == "__main__":
    main()
