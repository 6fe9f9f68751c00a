"""Dataset evaluation through the Predictor: semantic mIoU, panoptic quality, instance AP and latency; the report
(JSON, Markdown, plots) that the dataset and bag evaluators share; the per-class bandwidth search of PanoNet
Sec. III-D; and the comparison of input scales, whose chosen one a weights file can carry (``input_scale``).

    python -m panoptic_ros.evaluation evaluate --dataset camvid --root DIR --split val [--weights W] [--out DIR]
    python -m panoptic_ros.evaluation bandwidths --dataset camvid --root DIR --split train [--write W2]
    python -m panoptic_ros.evaluation scales --dataset camvid --root DIR --split train --candidates 1 1.1 [--write W2]

CamVid has no instance labels: its ground-truth instances are connected components of each thing class, so PQ and
AP on CamVid measure that proxy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from .backends import add_backend_argument
from .checkpoint import read_weights, save_state
from .classes import ClassTable
from .datasets import DATASETS, read_rgb
from .metrics import InstanceAP, PanopticQuality, SemanticIoU, panoptic_from_labels
from .predictor import DEFAULT_WEIGHTS, Prediction, Predictor
from .transforms import IGNORE_LABEL

DEFAULT_CANDIDATES = (0.25, 0.35, 0.5, 0.7, 1.0, 1.4)  # from delta_v upwards (Sec. III-D)
DEFAULT_SCALES = (1.0, 1.1, 1.25, 1.5)


def dataset_items(dataset, limit: int | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, rgb uint8 [H, W, 3], semantic [H, W] uint8 (``IGNORE_LABEL`` void), instances [H, W] int32 (-1 none))
    for each image, in dataset order."""
    for files in dataset.pairs[:limit]:
        semantic, instances = dataset.load_targets(files[1:])
        yield files[0].stem, read_rgb(files[0]), semantic, instances


def samples(dataset, limit: int | None = None):
    """(rgb uint8 [H, W, 3], semantic [H, W], gt panoptic [H, W]) for each image, in dataset order."""
    for _, rgb, semantic, instances in dataset_items(dataset, limit):
        yield rgb, semantic, panoptic_from_labels(semantic, instances, dataset.table, IGNORE_LABEL)


def percentiles(values: list[float]) -> dict:
    arr = np.asarray(values)
    return {"p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90)),
            "p99": float(np.percentile(arr, 99)), "mean": float(arr.mean())} if len(arr) else {}


def instance_scores(prediction: Prediction) -> dict[int, float]:
    """Segment id -> confidence of each predicted segment (what ``InstanceAP`` ranks)."""
    return {s.id: s.score for s in prediction.segments}


class EvaluationAccumulator:
    """Semantic IoU, panoptic quality, instance AP and per-stage latency over frames: what the dataset evaluator
    and the bag evaluator measure, accumulated the same way.

    ``add_timings`` takes a frame's stage timings (ms) and records their sum as ``total``; ``add`` scores a
    prediction against ground truth; ``metrics`` and ``latency`` give the report sections.
    """

    def __init__(self, table: ClassTable):
        self.table = table
        self.semantic = SemanticIoU(len(table), IGNORE_LABEL)
        self.panoptic = PanopticQuality(table)
        self.instance_ap = InstanceAP(table)
        self.latency_ms: dict[str, list[float]] = {}
        self.scored = 0

    def add_timings(self, timings: dict[str, float]) -> None:
        for stage, ms in {**timings, "total": sum(timings.values())}.items():
            self.latency_ms.setdefault(stage, []).append(ms)

    def add(self, prediction: Prediction, semantic: np.ndarray, panoptic: np.ndarray) -> None:
        """semantic: [H, W] ground-truth class ids (``IGNORE_LABEL`` void); panoptic: [H, W] ground-truth segment
        ids in the message convention (-1 void); both at the prediction's size."""
        predicted = prediction.panoptic.numpy()
        self.semantic.update(prediction.semantic, torch.from_numpy(semantic.astype(np.int64)))
        self.panoptic.update(predicted, panoptic)
        self.instance_ap.update(predicted, instance_scores(prediction), panoptic)
        self.scored += 1

    def metrics(self) -> dict:
        """``images`` scored, ``miou``, ``iou`` by class name, ``panoptic`` (PanopticQuality.compute) and
        ``instance_ap`` (InstanceAP.compute); only ``images`` when no frame had ground truth."""
        if not self.scored:
            return {"images": 0}
        sem = self.semantic.compute()
        return {
            "images": self.scored,
            "miou": sem["miou"],
            "iou": {c.name: v for c, v in zip(self.table.classes, sem["iou"])},
            "panoptic": self.panoptic.compute(),
            "instance_ap": self.instance_ap.compute(),
        }

    def latency(self) -> dict:
        return {stage: percentiles(v) for stage, v in self.latency_ms.items()}


def evaluate(predictor: Predictor, dataset, limit: int | None = None, accumulator: EvaluationAccumulator | None = None) -> dict:
    """Metrics and latency of ``predictor`` on the first ``limit`` images of ``dataset``; pass ``accumulator`` to
    keep the raw latencies (plots)."""
    accumulator = accumulator or EvaluationAccumulator(dataset.table)
    for rgb, semantic, gt in tqdm(samples(dataset, limit), total=min(len(dataset), limit or len(dataset)), desc="evaluate"):
        result = predictor(rgb)
        accumulator.add_timings(result.timings)
        accumulator.add(result, semantic, gt)
    return {**accumulator.metrics(), "latency_ms": accumulator.latency(), "device": str(predictor.device)}


def decoder_of(predictor: Predictor) -> dict:
    """``{"instance_decoder": ...}`` for a report's run record, where the model has one (PanoNet), else ``{}``."""
    return {"instance_decoder": predictor.instance_decoder} if predictor.instance_decoder else {}


def search_bandwidths(predictor: Predictor, dataset, candidates=DEFAULT_CANDIDATES, limit: int | None = None) -> dict:
    """PQ of each thing class for each candidate bandwidth; the network runs once per image and its outputs are
    re-clustered per candidate. Class-wise clustering makes a class's PQ depend on its own bandwidth only. The
    embedding decoder only: the accuracy mode and the DCME and Bridging decoders have no mean shift
    (``ValueError``)."""
    if not predictor.bandwidths:
        kind = f"{predictor.instance_decoder} decoder" if predictor.instance_decoder else f"{predictor.mode}-mode model"
        raise ValueError(f"{predictor.name} is a {kind}: it has no mean-shift bandwidths to search (only the "
                         f"embedding decoder clusters by mean shift)")
    cached = [(predictor.run_network(rgb), gt) for rgb, _, gt in
              tqdm(samples(dataset, limit), total=min(len(dataset), limit or len(dataset)), desc="network")]
    things = dataset.table.thing_ids
    table: dict[int, dict[float, float]] = {c: {} for c in things}
    for bandwidth in tqdm(candidates, desc="bandwidths"):
        metric = PanopticQuality(dataset.table)
        for raw, gt in cached:
            candidate = dataclasses.replace(predictor.postprocess, bandwidths={c: bandwidth for c in things})
            metric.update(predictor.postprocess_output(raw, candidate).panoptic.numpy(), gt)
        per_class = metric.compute()["per_class"]
        for c in things:
            table[c][bandwidth] = per_class[dataset.table[c].name]["pq"]
    best = {c: max(scores, key=lambda b: (scores[b], -abs(b - candidates[0]))) for c, scores in table.items()}
    return {"pq": {dataset.table[c].name: s for c, s in table.items()}, "best": best}


def search_scales(predictor: Predictor, dataset, candidates=DEFAULT_SCALES, limit: int | None = None) -> dict:
    """PQ, things PQ, mIoU and the median ms per frame of ``predictor`` on the first ``limit`` images at each
    candidate input scale (``Predictor.scale``; the predictor's own is restored); ``best``: the candidate of the
    highest PQ (the smaller of equals). Speed is the caller's to weigh: give only the scales that fit the budget."""
    if not candidates:
        raise ValueError("no candidate scales")
    table, configured = {}, predictor.scale
    try:
        for scale in candidates:
            predictor.scale = scale
            report = evaluate(predictor, dataset, limit)
            table[scale] = {"pq": report["panoptic"]["all"]["pq"], "pq_things": report["panoptic"]["things"]["pq"],
                            "miou": report["miou"], "ms": report["latency_ms"]["total"]["p50"]}
    finally:
        predictor.scale = configured
    return {"scales": table, "best": max(candidates, key=lambda s: (table[s]["pq"], -s))}


def describe_commit() -> str:
    """``git describe --always --dirty`` of this checkout, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _number(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _quality_lines(report: dict) -> list[str]:
    pan, ap = report["panoptic"], report["instance_ap"]
    lines = ["| metric | all | things | stuff |", "|---|---|---|---|"]
    for key in ("pq", "sq", "rq"):
        lines.append(f"| {key.upper()} | {_number(pan['all'][key])} | {_number(pan['things'][key])} | "
                     f"{_number(pan['stuff'][key])} |")
    return lines + ["", f"mIoU {_number(report['miou'])}, AP {_number(ap['ap'])}, AP50 {_number(ap['ap50'])}"]


def _class_lines(report: dict) -> list[str]:
    pan, ap = report["panoptic"]["per_class"], report["instance_ap"]["per_class"]
    lines = ["| class | IoU | PQ | SQ | RQ | AP | AP50 |", "|---|---|---|---|---|---|---|"]
    for name, iou in report["iou"].items():
        things = ap.get(name, {})
        lines.append(f"| {name} | {_number(iou)} | {_number(pan[name]['pq'])} | {_number(pan[name]['sq'])} | "
                     f"{_number(pan[name]['rq'])} | {_number(things.get('ap')) if things else '-'} | "
                     f"{_number(things.get('ap50')) if things else '-'} |")
    return lines


def _latency_lines(latency: dict, device: str, title: str = "latency") -> list[str]:
    lines = [f"{title} on {device} (ms)", "", "| stage | p50 | p90 | p99 | mean |", "|---|---|---|---|---|"]
    for stage, p in latency.items():
        if p:
            lines.append(f"| {stage} | {p['p50']:.1f} | {p['p90']:.1f} | {p['p99']:.1f} | {p['mean']:.1f} |")
    return lines


def _frame_lines(frames: dict) -> list[str]:
    lines = ["| frames | count |", "|---|---|"]
    for key, value in frames.items():
        if isinstance(value, dict):
            lines += [f"| {key}: {reason} | {count} |" for reason, count in value.items()]
        else:
            lines.append(f"| {key} | {value} |")
    return lines


def markdown(report: dict, title: str) -> str:
    """The report as Markdown: a partial-run warning, panoptic quality, mIoU and AP, per-class table, latency,
    frame counts (``frames``) and run details (``run``), each where the report has it."""
    lines = [f"# {title}", ""]
    if report.get("partial"):
        lines += [f"**Partial report**: stopped after {report['frames']['predicted']} frames ({report['stopped']}).", ""]
    if report.get("images"):
        lines += [f"Scored on {report['images']} images.", "", *_quality_lines(report), "", *_class_lines(report), ""]
    else:
        lines += ["No frame had ground truth: latency only.", ""]
    lines += [*_latency_lines(report["latency_ms"], report["device"]), ""]
    if report.get("overhead_ms"):
        lines += [*_latency_lines(report["overhead_ms"], "cpu", "outside the predictor"), ""]
    if "frames" in report:
        lines += [*_frame_lines(report["frames"]), ""]
    lines += [f"- {key}: {value}" for key, value in report.get("run", {}).items()]
    return "\n".join(lines).rstrip() + "\n"


def json_ready(value):
    """``value`` with NaN and infinities as None, so that report.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def plot_class_iou(report: dict, path: Path) -> None:
    """Horizontal bars of each class's IoU (and PQ), with the mIoU marked."""
    names = list(report["iou"])
    iou = np.nan_to_num(np.array([report["iou"][n] for n in names], float))
    pq = np.array([report["panoptic"]["per_class"][n]["pq"] for n in names], float)
    figure = Figure(figsize=(7, 0.35 * len(names) + 1.2), layout="constrained")
    axes = figure.subplots()
    rows = np.arange(len(names))
    axes.barh(rows - 0.2, iou, height=0.4, label="IoU")
    axes.barh(rows + 0.2, pq, height=0.4, label="PQ")
    axes.axvline(report["miou"], color="black", linestyle="--", linewidth=1, label=f"mIoU {report['miou']:.3f}")
    axes.set(yticks=rows, yticklabels=names, xlim=(0, 1), xlabel="score")
    axes.invert_yaxis()
    axes.legend(loc="lower right")
    figure.savefig(path, dpi=100)


def plot_latency(latency_ms: dict[str, list[float]], path: Path) -> None:
    """Histogram of each stage's per-frame latency (ms), all on the same bins."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    bins = np.linspace(0, max(max(v) for v in latency_ms.values() if v) * 1.02, 41)
    for stage, values in latency_ms.items():
        axes.hist(values, bins=bins, histtype="step", linewidth=1.5, label=stage)
    axes.set(xlabel="ms per frame", ylabel="frames")
    axes.legend()
    figure.savefig(path, dpi=100)


def write_report(report: dict, title: str, out_dir: Path, latency_ms: dict[str, list[float]] | None = None) -> list[Path]:
    """report.json, report.md and, where there is data for them, class_iou.png and latency.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md"]
    paths[0].write_text(json.dumps(json_ready(report), indent=2) + "\n")
    paths[1].write_text(markdown(report, title))
    if report.get("images"):
        paths.append(out_dir / "class_iou.png")
        plot_class_iou(report, paths[-1])
    if latency_ms and any(latency_ms.values()):
        paths.append(out_dir / "latency.png")
        plot_latency(latency_ms, paths[-1])
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["evaluate", "bandwidths", "scales"])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--dataset", default="camvid", choices=sorted(DATASETS))
    parser.add_argument("--root", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default="auto")
    add_backend_argument(parser)
    parser.add_argument("--limit", type=int, help="first N images only")
    parser.add_argument("--out", type=Path, default=Path("evaluation"), help="report folder (evaluate)")
    parser.add_argument("--candidates", type=float, nargs="+",
                        help=f"bandwidths (default {DEFAULT_CANDIDATES}) or input scales (default {DEFAULT_SCALES})")
    parser.add_argument("--write", type=Path, help="write the weights with the best bandwidths or input scale here")
    opts = parser.parse_args()
    predictor = Predictor.from_weights(opts.weights, device=opts.device, backend=opts.backend)
    dataset = DATASETS[opts.dataset](opts.root, opts.split)
    if opts.command == "evaluate":
        accumulator = EvaluationAccumulator(dataset.table)
        report = {"weights": str(opts.weights), "dataset": opts.dataset, "split": opts.split,
                  **evaluate(predictor, dataset, opts.limit, accumulator),
                  "run": {"model": predictor.name, "mode": predictor.mode, **decoder_of(predictor),
                          "weights": str(opts.weights),
                          "device": str(predictor.device),
                          "backend": predictor.backend,
                          "commit": describe_commit(), "dataset": f"{opts.dataset} {opts.split} ({opts.root})"}}
        title = f"Evaluation: {predictor.name} on {opts.dataset} {opts.split}"
        write_report(report, title, opts.out, accumulator.latency_ms)
        print(markdown(report, title))
        return
    if opts.command == "scales":
        found = search_scales(predictor, dataset, tuple(opts.candidates or DEFAULT_SCALES), opts.limit)
        print(json.dumps(found, indent=2))
        if opts.write:
            state, model_cfg, post_cfg, info = read_weights(opts.weights)
            save_state(state, model_cfg, post_cfg, {**info, "input_scale": found["best"]}, opts.write)
            print(f"wrote {opts.write} with input_scale {found['best']}")
        return
    try:
        found = search_bandwidths(predictor, dataset, tuple(opts.candidates or DEFAULT_CANDIDATES), opts.limit)
    except ValueError as error:
        raise SystemExit(f"bandwidths: {error}") from None
    print(json.dumps(found, indent=2))
    if opts.write:
        state, model_cfg, post_cfg, info = read_weights(opts.weights)
        post_cfg = dataclasses.replace(post_cfg, bandwidths={int(c): float(b) for c, b in found["best"].items()})
        save_state(state, model_cfg, post_cfg, info, opts.write)
        print(f"wrote {opts.write} with bandwidths {post_cfg.bandwidths}")


if __name__ == "__main__":
    main()
