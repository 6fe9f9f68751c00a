"""Accuracy-mode benchmark: Panoptic-FPN-IMP through the Predictor, latency per stage, with and without IMP.

The model is ``config/panoptic_fpn_camvid.yaml``'s (ResNet-18 FPN, the reduced CPU configuration) with random
weights (``--weights`` takes a trained file instead): the stage times depend on the architecture and on how many
detections reach the mask head, which the table reports. Stages, timed inside the Predictor's own call by wrapping
the model's parts (the same code path the node runs):

- ``preprocess`` (Predictor), ``backbone`` (ResNet + FPN), ``rpn``, ``heads`` (box head, NMS, mask head),
  ``imp`` (``project_instance_masks``), ``semantic head`` (Fig. 4 head and predictor), then ``semantic`` and
  ``merge`` (Predictor: logits upsampled, masks pasted, Panoptic FPN merge).

The same network without IMP (``imp: false``, the rest of the weights shared) runs side by side: frames are taken
in turn, so a load that changes during the run weighs on both. CPU at 480x360 and 1024x512; on a GPU 2048x1024 in
fp16 and fp32 (the paper's R50 anchor is 195 ms with IMP adding 1-2 ms; the goal on an H100-class GPU is < 25 ms).

    python -m benchmarks.accuracy [--weights W] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from panoptic_ros.checkpoint import load_model
from panoptic_ros.classes import TABLES
from panoptic_ros.config import load_config
from panoptic_ros.datasets import read_rgb
from panoptic_ros.demo import DEFAULT_IMAGE
from panoptic_ros.models import build_model
from panoptic_ros.predictor import Predictor

from .common import environment, report, write_results

CONFIG = Path(__file__).resolve().parent.parent / "config" / "panoptic_fpn_camvid.yaml"
MODEL_STAGES = {"backbone": "backbone", "rpn": "rpn", "detect": "heads", "project": "imp",
                "semantic_logits": "semantic head"}
STAGES = ("preprocess", "backbone", "rpn", "heads", "imp", "semantic head", "semantic", "merge")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def instrument(model: torch.nn.Module, sink: dict) -> None:
    """Time the model's parts (``MODEL_STAGES``): each call adds its milliseconds to ``sink``. Submodules get forward
    hooks; methods are wrapped on the instance (``forward`` looks them up there first)."""
    for attribute, stage in MODEL_STAGES.items():
        part = getattr(model, attribute)
        if isinstance(part, torch.nn.Module):
            starts: list[float] = []

            def start(*_, _starts=starts):
                _sync()
                _starts.append(time.perf_counter())

            def stop(*_, _starts=starts, _stage=stage):
                _sync()
                sink[_stage] = sink.get(_stage, 0.0) + (time.perf_counter() - _starts.pop()) * 1e3

            part.register_forward_pre_hook(start)
            part.register_forward_hook(stop)
            continue

        @functools.wraps(part)
        def timed(*args, _part=part, _stage=stage, **kwargs):
            _sync()
            begin = time.perf_counter()
            out = _part(*args, **kwargs)
            _sync()
            sink[_stage] = sink.get(_stage, 0.0) + (time.perf_counter() - begin) * 1e3
            return out

        setattr(model, attribute, timed)


def predictors(weights: Path | None, device: str, precision: str) -> tuple[dict[str, Predictor], dict[str, dict]]:
    """The model with IMP and the same weights without it, each instrumented into its own timing dict."""
    cfg = load_config(CONFIG)
    if weights is None:
        torch.manual_seed(0)
        with_imp = build_model(cfg.model.architecture, **cfg.model.kwargs())
        postprocess = cfg.postprocess
    else:
        with_imp, model_cfg, postprocess, _ = load_model(weights)
        cfg.model = model_cfg
    without = build_model(cfg.model.architecture, **{**cfg.model.kwargs(), "imp": False})
    # Every parameter but the predictor's first convolution, whose input lacks the canvas planes without IMP.
    state = {k: v for k, v in with_imp.state_dict().items() if without.state_dict()[k].shape == v.shape}
    without.load_state_dict(state, strict=False)
    table = TABLES[cfg.data.dataset]
    models = {"with IMP": with_imp, "without IMP": without}
    sinks: dict[str, dict] = {name: {} for name in models}
    built = {}
    for name, model in models.items():
        instrument(model, sinks[name])
        built[name] = Predictor(model, table, postprocess, device=device, precision=precision, name=name)
    return built, sinks


def measure(built: dict[str, Predictor], sinks: dict[str, dict], rgb: np.ndarray, frames: int) -> dict[str, dict]:
    """Median stage times, end-to-end FPS and detections per frame of each predictor, frames taken in turn."""
    for predictor in built.values():
        predictor(rgb)  # warm-up
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in built}
    totals: dict[str, list[float]] = {name: [] for name in built}
    detections: dict[str, list[int]] = {name: [] for name in built}
    for _ in range(frames):
        for name, predictor in built.items():
            sinks[name].clear()
            start = time.perf_counter()
            raw = predictor.run_network(rgb)
            prediction = predictor.postprocess_output(raw)
            totals[name].append((time.perf_counter() - start) * 1e3)
            detections[name].append(len(raw.outputs["detections"]["scores"]))
            for stage, ms in {**prediction.timings, **sinks[name]}.items():
                samples[name].setdefault(stage, []).append(ms)
    return {name: {"median_ms": {s: float(np.median(samples[name][s])) for s in STAGES if s in samples[name]},
                   "end_to_end_ms": float(np.median(totals[name])),
                   "fps": 1e3 / float(np.median(totals[name])),
                   "detections": float(np.mean(detections[name]))} for name in built}


def table_lines(resolution: str, results: dict[str, dict]) -> list[str]:
    lines = []
    for name, r in results.items():
        stages = ", ".join(f"{s} {ms:.0f}" for s, ms in r["median_ms"].items())
        lines.append(f"| {resolution} | {name} | {r['detections']:.0f} | {r['end_to_end_ms']:.0f} | {r['fps']:.2f} | "
                     f"{stages} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, help="a trained panoptic_fpn weights file (default: random weights)")
    parser.add_argument("--quick", action="store_true", help="one small resolution, two frames (smoke tests)")
    opts = parser.parse_args()
    rgb = read_rgb(DEFAULT_IMAGE)
    resolutions = [(160, 128)] if opts.quick else [(480, 360), (1024, 512)]
    frames = 2 if opts.quick else 5
    cpu = torch.device("cpu")
    built, sinks = predictors(opts.weights, "cpu", "fp32")
    rows = {}
    for width, height in resolutions:
        frame = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA)
        rows[f"{width}x{height}"] = measure(built, sinks, frame, frames)
    imp_share = {res: r["with IMP"]["median_ms"]["imp"] / r["with IMP"]["end_to_end_ms"] for res, r in rows.items()}
    payload = {**environment(cpu), "config": str(CONFIG.name), "weights": str(opts.weights or "random (seed 0)"),
               "frames": frames, "results": rows, "imp_share_of_frame": imp_share,
               "gpu": "unmeasured: no CUDA device in this run" if not torch.cuda.is_available() else "see accuracy-cuda"}
    header = ["| resolution | model | detections | end to end (ms) | FPS | median ms per stage |", "|---|---|---|---|---|---|"]
    lines = [
        "# Accuracy-mode benchmark (CPU): Panoptic-FPN-IMP, with and without IMP side by side",
        "",
        f"commit {payload['commit']}, {payload['date']}, torch {payload['torch']}, {payload['cpu']}, "
        f"{payload['cpu_threads']} threads; {CONFIG.name}, weights {payload['weights']}, fp32, "
        f"{frames} frames each, taken in turn",
        "",
        *header,
        *(line for res, r in rows.items() for line in table_lines(res, r)),
        "",
        *(f"IMP share of a frame at {res}: {share:.2%}" for res, share in imp_share.items()),
        "",
    ]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        frame = cv2.resize(rgb, (2048, 1024), interpolation=cv2.INTER_LINEAR)
        gpu_rows = {}
        for precision in ("fp16", "fp32"):
            built, sinks = predictors(opts.weights, "cuda", precision)
            gpu_rows[precision] = measure(built, sinks, frame, 20)
        gpu_payload = {**environment(gpu), "config": CONFIG.name, "weights": payload["weights"], "results": gpu_rows,
                       "target": "accuracy mode <= 25 ms at 1024x2048 on an H100-class GPU"}
        write_results("accuracy", gpu, gpu_payload, "\n".join([
            "# Accuracy-mode benchmark (CUDA), 2048x1024", "", f"commit {gpu_payload['commit']}, {gpu_payload['gpu']}",
            "", *header, *(line for p, r in gpu_rows.items() for line in table_lines(f"2048x1024 {p}", r)), ""]))
    else:
        lines += ["GPU (2048x1024): unmeasured, no CUDA device in this run.", ""]
    report("accuracy", cpu, payload, lines)


if __name__ == "__main__":
    main()
