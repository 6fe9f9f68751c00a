"""Issue #13's comparison: PanoNet's three instance decoders (embedding, DCME, Bridging) on one backbone, one table.

For each weights file (the decoder is read from the file): accuracy on a dataset split through the project's own
evaluator (``panoptic_ros.evaluation.evaluate``: PQ things / stuff, AP, AP50, mIoU), and CPU latency at 480x360
and 1024x512 through the Predictor, every model's frames taken in turn (``benchmarks.panonet.measure``) so that a
load that changes during the run weighs on all of them alike. Post-processing is the Predictor's ``clustering``
(the decoder: mean shift, vote grouping, box voting) plus ``merge`` (the same panoptic merge for all three).

    python -m benchmarks.decoders [--weights W [W ...]] [--root ../shared/datasets/camvid --split val] [--quick]

``--weights`` defaults to the three shipped CamVid models. Without ``--root`` only latency is measured. Every model
runs at one input scale, ``--scale`` (default 1.0), whatever its file names, so that only the decoder differs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import torch

from panoptic_ros.backends import add_backend_argument
from panoptic_ros.datasets import DATASETS, read_rgb
from panoptic_ros.demo import DEFAULT_IMAGE
from panoptic_ros.evaluation import evaluate
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor

from .common import environment, report
from .panonet import measure

SHIPPED = [DEFAULT_WEIGHTS, DEFAULT_WEIGHTS.with_name("panonet_dcme_camvid.safetensors"),
           DEFAULT_WEIGHTS.with_name("panonet_bridging_camvid.safetensors")]
RESOLUTIONS = ((480, 360), (1024, 512))
POSTPROCESS_STAGES = ("clustering", "merge")
METRICS = ("pq", "pq_things", "pq_stuff", "ap", "ap50", "miou")  # the table's accuracy columns, in order
ROOT = Path(__file__).resolve().parent.parent


def shown(path: Path) -> str:
    """``path`` as the table names it: relative to the repository when inside it."""
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


def accuracy(predictor: Predictor, dataset, limit: int | None) -> dict:
    """The evaluator's headline numbers (fractions, as it reports them)."""
    found = evaluate(predictor, dataset, limit)
    pq = found["panoptic"]
    return {"images": found["images"], "pq": pq["all"]["pq"], "pq_things": pq["things"]["pq"],
            "pq_stuff": pq["stuff"]["pq"], "ap": found["instance_ap"]["ap"], "ap50": found["instance_ap"]["ap50"],
            "miou": found["miou"]}


def latency(runs: dict) -> dict:
    """Post-processing and total median milliseconds of one model's ``measure`` result."""
    median = runs["median_ms"]
    return {"postprocess_ms": sum(median[s] for s in POSTPROCESS_STAGES), "total_ms": sum(median.values()),
            "fps": runs["fps"], "median_ms": median, "frames": runs["frames"]}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def table_lines(results: dict, resolutions: list[str]) -> list[str]:
    head = ["decoder", "weights", "PQ", "PQ things", "PQ stuff", "AP", "AP50", "mIoU"]
    for r in resolutions:
        head += [f"post-processing ms {r}", f"total ms {r}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in results.values():
        acc = row.get("accuracy", {})
        cells = [row["decoder"], f"`{row['weights']}`", *(_percent(acc.get(k)) for k in METRICS)]
        for r in resolutions:
            cells += [f"{row['latency'][r]['postprocess_ms']:.1f}", f"{row['latency'][r]['total_ms']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, nargs="+", default=SHIPPED, help="one weights file per model")
    parser.add_argument("--dataset", default="camvid", choices=sorted(DATASETS))
    parser.add_argument("--root", help="dataset root: accuracy is measured on its --split (none without it)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=int, help="first N images only")
    add_backend_argument(parser)
    parser.add_argument("--quick", action="store_true", help="one small resolution, a short timing (smoke tests)")
    parser.add_argument("--scale", type=float, default=1.0, help="every model's input scale (default 1.0)")
    opts = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="decoders_bench_"))  # artefacts built (and checked) before timing
    predictors, results = {}, {}
    for path in opts.weights:
        predictor = Predictor.from_weights(path, scale=opts.scale, device="cpu", backend=opts.backend, cache_dir=cache)
        if not predictor.instance_decoder:
            raise SystemExit(f"{path}: a {predictor.mode}-mode model, not a PanoNet with an instance decoder")
        name = shown(path)
        if name in results:
            raise SystemExit(f"{path}: given twice")
        predictors[name] = predictor
        results[name] = {"decoder": predictor.instance_decoder, "weights": name, "backend": predictor.backend,
                         "latency": {}}
    if opts.root:
        dataset = DATASETS[opts.dataset](opts.root, opts.split)
        for name, predictor in predictors.items():
            results[name]["accuracy"] = accuracy(predictor, dataset, opts.limit)
    frame = read_rgb(DEFAULT_IMAGE)
    resolutions = [(160, 128)] if opts.quick else list(RESOLUTIONS)
    for w, h in resolutions:
        rgb = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
        for name, runs in measure(predictors, rgb, 1.0 if opts.quick else 15.0).items():
            results[name]["latency"][f"{w}x{h}"] = latency(runs)
    cpu = torch.device("cpu")
    keys = [f"{w}x{h}" for w, h in resolutions]
    data = (f"{opts.dataset} {opts.split}" + (f", first {opts.limit} images" if opts.limit else "")
            if opts.root else None)
    payload = {**environment(cpu), "dataset": data, "resolutions": keys, "quick": opts.quick, "results": results}
    lines = ["# Instance decoders side by side (CPU): PanoNet embedding, DCME, Bridging on one backbone", "",
             f"commit {payload['commit']}, {payload['date']}, {payload['cpu']}, {payload['cpu_threads']} threads, "
             f"torch {payload['torch']}; backend {opts.backend}; accuracy on "
             f"{data or 'nothing (no --root)'} (percent; the evaluator of `python -m panoptic_ros.evaluation`); "
             "latency on the embedded CamVid frame resized, median ms, the models' frames taken in turn; "
             "post-processing = the decoder (`clustering`) + the panoptic `merge`", "",
             *table_lines(results, keys), ""]
    report("decoders", cpu, payload, lines)


if __name__ == "__main__":
    main()
