"""Dataset evaluation through the Predictor: semantic mIoU, panoptic quality and latency; and the per-class
bandwidth search of PanoNet Sec. III-D.

    python -m panoptic_ros.evaluation evaluate --dataset camvid --root DIR --split val [--weights W] [--out DIR]
    python -m panoptic_ros.evaluation bandwidths --dataset camvid --root DIR --split train [--write W2]

CamVid has no instance labels: its ground-truth instances are connected components of each thing class, so PQ on
CamVid measures that proxy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import read_weights, save_state
from .datasets import DATASETS, read_rgb
from .metrics import PanopticQuality, SemanticIoU, panoptic_from_labels
from .predictor import DEFAULT_WEIGHTS, Predictor
from .transforms import IGNORE_LABEL

DEFAULT_CANDIDATES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4)  # from delta_v upwards (Sec. III-D)


def samples(dataset, limit: int | None = None):
    """(rgb uint8 [H, W, 3], semantic [H, W], gt panoptic [H, W]) for each image, in dataset order."""
    for files in dataset.pairs[:limit]:
        semantic, instances = dataset.load_targets(files[1:])
        yield read_rgb(files[0]), semantic, panoptic_from_labels(semantic, instances, dataset.table, IGNORE_LABEL)


def percentiles(values: list[float]) -> dict:
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())} if len(arr) else {}


def evaluate(predictor: Predictor, dataset, limit: int | None = None) -> dict:
    semantic_metric = SemanticIoU(len(dataset.table), IGNORE_LABEL)
    panoptic_metric = PanopticQuality(dataset.table)
    latency: dict[str, list[float]] = {}
    count = 0
    for rgb, semantic, gt in tqdm(samples(dataset, limit), total=min(len(dataset), limit or len(dataset)), desc="evaluate"):
        result = predictor(rgb)
        semantic_metric.update(result.semantic, torch.from_numpy(semantic.astype(np.int64)))
        panoptic_metric.update(result.panoptic.numpy(), gt)
        for stage, ms in {**result.timings, "total": sum(result.timings.values())}.items():
            latency.setdefault(stage, []).append(ms)
        count += 1
    sem = semantic_metric.compute()
    return {
        "images": count,
        "miou": sem["miou"],
        "iou": {c.name: v for c, v in zip(dataset.table.classes, sem["iou"])},
        "panoptic": panoptic_metric.compute(),
        "latency_ms": {stage: percentiles(v) for stage, v in latency.items()},
        "device": str(predictor.device),
    }


def search_bandwidths(predictor: Predictor, dataset, candidates=DEFAULT_CANDIDATES, limit: int | None = None) -> dict:
    """PQ of each thing class for each candidate bandwidth; the network runs once per image and its outputs are
    re-clustered per candidate. Class-wise clustering makes a class's PQ depend on its own bandwidth only."""
    cached = [(predictor.run_network(rgb), gt) for rgb, _, gt in
              tqdm(samples(dataset, limit), total=min(len(dataset), limit or len(dataset)), desc="network")]
    things = dataset.table.thing_ids
    table: dict[int, dict[float, float]] = {c: {} for c in things}
    for bandwidth in tqdm(candidates, desc="bandwidths"):
        metric = PanopticQuality(dataset.table)
        for raw, gt in cached:
            metric.update(predictor.postprocess_output(raw, {c: bandwidth for c in things}).panoptic.numpy(), gt)
        per_class = metric.compute()["per_class"]
        for c in things:
            table[c][bandwidth] = per_class[dataset.table[c].name]["pq"]
    best = {c: max(scores, key=lambda b: (scores[b], -abs(b - candidates[0]))) for c, scores in table.items()}
    return {"pq": {dataset.table[c].name: s for c, s in table.items()}, "best": best}


def markdown(report: dict) -> str:
    pan = report["panoptic"]
    lines = [f"# Evaluation: {report['weights']} on {report['dataset']} {report['split']} ({report['images']} images)", "",
             "| metric | all | things | stuff |", "|---|---|---|---|"]
    for key in ("pq", "sq", "rq"):
        lines.append(f"| {key.upper()} | {pan['all'][key]:.3f} | {pan['things'][key]:.3f} | {pan['stuff'][key]:.3f} |")
    lines += ["", f"mIoU {report['miou']:.3f}", "", "| class | IoU | PQ |", "|---|---|---|"]
    for name, iou in report["iou"].items():
        lines.append(f"| {name} | {iou:.3f} | {pan['per_class'][name]['pq']:.3f} |")
    lines += ["", f"latency on {report['device']} (ms)", "", "| stage | p50 | p90 | p99 |", "|---|---|---|---|"]
    for stage, p in report["latency_ms"].items():
        lines.append(f"| {stage} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["evaluate", "bandwidths"])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--dataset", default="camvid", choices=sorted(DATASETS))
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, help="first N images only")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder (evaluate)")
    parser.add_argument("--candidates", type=float, nargs="+", default=list(DEFAULT_CANDIDATES))
    parser.add_argument("--write", type=Path, help="bandwidths: write the weights with the best bandwidths here")
    opts = parser.parse_args()
    predictor = Predictor.from_weights(opts.weights, device=opts.device)
    dataset = DATASETS[opts.dataset](opts.root, opts.split)
    if opts.command == "evaluate":
        report = {"weights": str(opts.weights), "dataset": opts.dataset, "split": opts.split,
                  **evaluate(predictor, dataset, opts.limit)}
        opts.out.mkdir(parents=True, exist_ok=True)
        (opts.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (opts.out / "report.md").write_text(markdown(report))
        print(markdown(report))
        return
    found = search_bandwidths(predictor, dataset, tuple(opts.candidates), opts.limit)
    print(json.dumps(found, indent=2))
    if opts.write:
        state, model_cfg, post_cfg, info = read_weights(opts.weights)
        post_cfg = dataclasses.replace(post_cfg, bandwidths={int(c): float(b) for c, b in found["best"].items()})
        save_state(state, model_cfg, post_cfg, info, opts.write)
        print(f"wrote {opts.write} with bandwidths {post_cfg.bandwidths}")


if __name__ == "__main__":
    main()
