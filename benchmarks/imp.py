"""IMP benchmark: compiled CPU kernel against the pure-PyTorch reference, and the CUDA kernel when a GPU exists,
for both sampling rules (``overlap``, Algorithm 1 and the default, and ``centre``).

Workload (issue #2): N detections in {10, 100, 500} with S = 28 masks onto an 8 x 256 x 512 canvas at stride 4
(boxes drawn over a 1024 x 2048 image). On the CPU both implementations and both rules run in this one process on
the same inputs, and the results are their ratios. On a GPU the kernel's time comes from CUDA events; its effective bandwidth
counts the bytes it must move at least (masks read, canvas and winner index written).

    python -m benchmarks.imp [--quick]
"""

from __future__ import annotations

import argparse

import torch
from torch.utils import benchmark

from panoptic_ros.ops import SAMPLING, extension_available, project_instance_masks, project_instance_masks_reference

from .common import environment, report, write_results

CANVAS = (8, 256, 512)
BOX_SCALE = 0.25
MASK = 28


def detections(n: int, device: torch.device, seed: int = 0):
    """Mask R-CNN-like detections: boxes of 20-400 image pixels anywhere in a 2048 x 1024 image."""
    g = torch.Generator().manual_seed(seed)
    image_w, image_h = CANVAS[2] / BOX_SCALE, CANVAS[1] / BOX_SCALE
    wh = torch.rand(n, 2, generator=g) * 380 + 20
    xy = torch.rand(n, 2, generator=g) * torch.tensor([image_w, image_h]) - wh / 2
    masks = torch.rand(n, MASK, MASK, generator=g)
    scores = torch.rand(n, generator=g)
    classes = torch.randint(0, CANVAS[0], (n,), generator=g)
    return [t.to(device) for t in (masks, scores, classes, torch.cat([xy, xy + wh], 1))]


def time_cpu(fn, args, min_run_time: float) -> float:
    timer = benchmark.Timer("fn(*args)", globals={"fn": fn, "args": args})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def time_cuda(args, sampling: str, iters: int = 200) -> float:
    for _ in range(10):
        project_instance_masks(*args, CANVAS, BOX_SCALE, sampling)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        project_instance_masks(*args, CANVAS, BOX_SCALE, sampling)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing runs (for smoke tests)")
    opts = parser.parse_args()
    if not extension_available():
        raise SystemExit("IMP extension not built: run `make setup` first.")
    min_run = 0.2 if opts.quick else 2.0
    cpu = torch.device("cpu")
    rows = []
    for n in (10, 100, 500):
        args = detections(n, cpu)
        for sampling in SAMPLING:
            kernel = time_cpu(lambda *a: project_instance_masks(*a, CANVAS, BOX_SCALE, sampling), args, min_run)
            reference = time_cpu(lambda *a: project_instance_masks_reference(*a, CANVAS, BOX_SCALE, sampling), args,
                                 min_run)
            rows.append({"N": n, "sampling": sampling, "kernel_ms": kernel * 1e3, "reference_ms": reference * 1e3,
                         "speedup": reference / kernel})
    payload = {
        **environment(cpu),
        "workload": {"canvas_CHW": CANVAS, "mask_S": MASK, "box_scale": BOX_SCALE, "image_WH": [2048, 1024]},
        "cpu_kernel_vs_reference": rows,
        "target": "CPU kernel >= 20x faster than the reference at N=100",
    }
    lines = [
        "# IMP benchmark (CPU)",
        "",
        f"commit {payload['commit']}, {payload['date']}, torch {payload['torch']}, {payload['cpu']}, "
        f"{payload['cpu_threads']} threads",
        f"canvas {CANVAS[0]}x{CANVAS[1]}x{CANVAS[2]} (C x H x W), S={MASK}, box_scale={BOX_SCALE}",
        "",
        "| N | sampling | CPU kernel (ms) | reference (ms) | speed-up |",
        "|---|---|---|---|---|",
        *(f"| {r['N']} | {r['sampling']} | {r['kernel_ms']:.3f} | {r['reference_ms']:.1f} | {r['speedup']:.0f}x |"
          for r in rows),
        "",
    ]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        cuda_rows = []
        for n in (10, 100, 500, 1000):
            args = detections(n, gpu)
            for sampling in SAMPLING:
                seconds = time_cuda(args, sampling)
                moved = n * MASK * MASK * 4 + CANVAS[0] * CANVAS[1] * CANVAS[2] * (4 + 8)
                cuda_rows.append({"N": n, "sampling": sampling, "kernel_us": seconds * 1e6,
                                  "effective_GBps": moved / seconds / 1e9})
        gpu_payload = {**environment(gpu), "workload": payload["workload"], "cuda_kernel": cuda_rows,
                       "target": "CUDA kernel < 50 us at N=100 on an H100"}
        write_results("imp", gpu, gpu_payload, "\n".join([
            "# IMP benchmark (CUDA)", "", f"commit {gpu_payload['commit']}, {gpu_payload['gpu']}, torch {gpu_payload['torch']}",
            "", "| N | sampling | kernel (us) | effective GB/s |", "|---|---|---|---|",
            *(f"| {r['N']} | {r['sampling']} | {r['kernel_us']:.1f} | {r['effective_GBps']:.0f} |" for r in cuda_rows),
            "",
        ]))
    else:
        payload["cuda_kernel"] = "unmeasured: no CUDA device in this run"
        lines += ["CUDA kernel: unmeasured (no CUDA device in this run).", ""]
    report("imp", cpu, payload, lines)


if __name__ == "__main__":
    main()
