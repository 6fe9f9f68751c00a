"""One training step of a training config (forward, backward, optimiser step), fp32 and bf16 autocast side by side.

    python -m benchmarks.train_step [--config config/panoptic_fpn_camvid.yaml] [--steps 3] [--stage full]

Batches come from the config's dataset with its augmentation and collation (``panoptic_ros.train``), at its batch
size and crop; the precisions take turns step by step after one warm-up step each, so load on the machine hits
both alike. Reports the median seconds per step per precision and their ratio; a non-finite loss stops it
(``FloatingPointError``), as it stops a training. bf16 autocast is timed even where
the CPU has no native bf16 (``train.precision: auto`` would pick fp32 there): the table says which.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from panoptic_ros.config import ExperimentConfig, load_config
from panoptic_ros.datasets import DATASETS
from panoptic_ros.models import build_model
from panoptic_ros.train import TRAINING, collate_detection_targets, make_optimizer
from panoptic_ros.transforms import TrainAugment

from .common import environment, write_results

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def measure(cfg: ExperimentConfig, steps: int) -> dict[str, list[float]]:
    """Seconds of each of ``steps`` training steps per precision (after one warm-up step each), in turn."""
    torch.manual_seed(cfg.train.seed)
    augment = TrainAugment(cfg.data.crop, cfg.data.scale, jitter=cfg.data.jitter, seed=cfg.train.seed)
    dataset = DATASETS[cfg.data.dataset](cfg.data.root, cfg.data.train_split, augment=augment)
    collate = (partial(collate_detection_targets, thing_classes=cfg.model.thing_classes)
               if cfg.model.architecture == "panoptic_fpn" else None)
    batches = iter(DataLoader(dataset, cfg.data.batch_size, shuffle=True, drop_last=True, collate_fn=collate))
    losses_of = TRAINING[cfg.model.architecture][0]
    models = {}
    for name in PRECISIONS:
        torch.manual_seed(cfg.train.seed)
        model = build_model(cfg.model.architecture, **cfg.model.kwargs()).train()
        if cfg.train.channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[name] = (model, make_optimizer(model.parameters(), cfg))
    times: dict[str, list[float]] = {name: [] for name in PRECISIONS}
    for step in range(steps + 1):
        batch = next(batches)
        for name, amp in PRECISIONS.items():
            model, optimizer = models[name]
            start = time.perf_counter()
            losses = losses_of(model, batch, cfg, None, amp)
            if not torch.isfinite(losses["total"]):  # a diverged step's time is not a training step's time
                raise FloatingPointError(f"step {step} {name}: loss is {losses['total'].item()}")
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            optimizer.step()
            seconds = time.perf_counter() - start
            print(f"step {step}{' (warm-up)' if not step else ''} {name}: {seconds:.2f} s", flush=True)
            if step:  # the first is warm-up
                times[name].append(seconds)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=Path("config/panoptic_fpn_camvid.yaml"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--stage", choices=["detector", "full"], help="override train.stage")
    parser.add_argument("--data-root", help="override data.root")
    opts = parser.parse_args()
    cfg = load_config(opts.config)
    cfg.train.stage = opts.stage or cfg.train.stage
    cfg.data.root = opts.data_root or cfg.data.root
    times = measure(cfg.validate(), opts.steps)
    median = {name: statistics.median(t) for name, t in times.items()}
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    payload = {**environment(torch.device("cpu")), "config": str(opts.config), "stage": cfg.train.stage,
               "batch_size": cfg.data.batch_size, "crop": list(cfg.data.crop), "steps": opts.steps,
               "seconds_per_step": times, "median_seconds": median, "cpu_native_bf16": native}
    rows = "\n".join(f"| {name} | {median[name]:.2f} | {', '.join(f'{t:.2f}' for t in times[name])} |" for name in times)
    markdown = (f"# Training step: {opts.config} (stage {cfg.train.stage})\n\nbatch {cfg.data.batch_size}, crop "
                f"{cfg.data.crop[1]}x{cfg.data.crop[0]}, {payload['cpu']} ({payload['cpu_threads']} threads), CPU native "
                f"bf16: {native}, commit {payload['commit']}\n\n| precision | median s/step | steps |\n| --- | --- | --- |\n"
                f"{rows}\n\nbf16 / fp32: {median['bf16'] / median['fp32']:.2f}\n")
    write_results(f"train_step-{cfg.model.architecture}-{cfg.train.stage}", torch.device("cpu"), payload, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
