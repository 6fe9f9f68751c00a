"""PanoNet Fig. 5: do mirrored twins come out as separate instances, with and without coordinates?

PanoNet Sec. IV-c: "The image was created by mirroring the left half of the original image to the right half. If
we use pure feature embedding to cluster instances, the two mirrored cars cannot be distinguished from each other
... when position information is provided, all the four instances can be correctly predicted." This benchmark
builds such images (left half mirrored onto the right) and runs two models of the same training run: the shipped
one (stage 2b, with coordinates) and the same run at the end of its stage without coordinates (stage 2a).

For each predicted thing instance that stays clear of the mirror line (farther than 2% of the width) the twin is
the instance holding most of its mirrored pixels. A twin pair is *separate* when that is another instance of the
same class covering the mirrored pixels with IoU >= 0.5, *merged* when it is the same instance (one instance
holds both halves), and *unmatched* otherwise (the twin was not segmented alike, e.g. clipped by the image edge).

    python -m benchmarks.mirror [--root ../shared/datasets/camvid --split val] [--quick]

Without ``--root`` it uses the embedded CamVid frame (what the test suite runs). Both models run at the input scale
the model with coordinates names (the shipped file's ``input_scale``), so that only the coordinates differ.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from panoptic_ros.datasets import DATASETS, read_rgb
from panoptic_ros.demo import DEFAULT_IMAGE
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor

from .common import environment, report

WITHOUT_COORDINATES = DEFAULT_WEIGHTS.with_name("panonet_camvid_without_coordinates.safetensors")
LINE_MARGIN = 0.02  # instances closer than this share of the width to the mirror line are one region by design


def mirror_left_half(rgb: np.ndarray) -> np.ndarray:
    """The image with its right half replaced by its left half, mirrored (the Fig. 5 construction)."""
    out = rgb.copy()
    half = rgb.shape[1] // 2
    out[:, rgb.shape[1] - half:] = rgb[:, :half][:, ::-1]
    return out


def twin_pairs(instances: np.ndarray, classes: dict[int, int]) -> dict[str, int]:
    """Count separate / merged / unmatched twins over the instances of one mirrored image (per instance: a pair
    of separate twins counts twice, a merged pair once).

    Args:
        instances: [H, W] instance index per pixel (-1 none); classes: instance index -> class id.
    """
    h, w = instances.shape
    margin = max(1, round(LINE_MARGIN * w))
    counts = {"instances": 0, "separate": 0, "merged": 0, "unmatched": 0}
    mirrored = instances[:, ::-1]  # mirrored[y, x] = instances[y, w - 1 - x]
    for k, class_id in classes.items():
        mask = instances == k
        if not mask.any() or mask[:, w // 2 - margin:w - w // 2 + margin].any():
            continue  # empty, or touching the mirror line
        counts["instances"] += 1
        twin_ids = mirrored[mask]  # the instance at each pixel's mirror position
        twin_ids = twin_ids[twin_ids >= 0]
        if len(twin_ids) == 0:
            counts["unmatched"] += 1
            continue
        twin = int(np.bincount(twin_ids).argmax())
        if twin == k:
            counts["merged"] += 1
            continue
        twin_mask = mirrored == twin
        iou = (mask & twin_mask).sum() / (mask | twin_mask).sum()
        counts["separate" if classes.get(twin) == class_id and iou >= 0.5 else "unmatched"] += 1
    return counts


def evaluate(predictor: Predictor, images: list[np.ndarray]) -> dict[str, int]:
    total = {"images": len(images), "instances": 0, "separate": 0, "merged": 0, "unmatched": 0}
    for rgb in images:
        prediction = predictor(mirror_left_half(rgb))
        ids = prediction.instances.numpy()
        present = np.unique(ids[ids >= 0])
        classes = {int(k): int(prediction.semantic.numpy()[ids == k][0]) for k in present}
        for key, value in twin_pairs(ids, classes).items():
            total[key] += value
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--with-coordinates", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--without-coordinates", default=str(WITHOUT_COORDINATES))
    parser.add_argument("--dataset", default="camvid")
    parser.add_argument("--root", help="dataset folder; default: the embedded frame only")
    parser.add_argument("--split", default="val")
    parser.add_argument("--quick", action="store_true", help="the embedded frame only (smoke test)")
    opts = parser.parse_args()
    cpu = torch.device("cpu")
    if opts.root and not opts.quick:
        dataset = DATASETS[opts.dataset](opts.root, opts.split)
        images = [read_rgb(files[0]) for files in dataset.pairs]
        source = f"{opts.dataset} {opts.split} ({len(images)} frames)"
    else:
        images, source = [read_rgb(DEFAULT_IMAGE)], f"embedded frame {DEFAULT_IMAGE.name}"
    rows, scale = {}, None
    for name, weights in (("with coordinates", opts.with_coordinates), ("without coordinates", opts.without_coordinates)):
        predictor = Predictor.from_weights(weights, scale=scale, device="cpu")
        scale = predictor.scale  # both at the input scale the model with coordinates names
        rows[name] = {"weights": weights, "uses_coordinates": bool(predictor.model.use_coordinates),
                      **evaluate(predictor, images)}
        print(name, rows[name], flush=True)
    payload = {**environment(cpu), "images": source, "line_margin": LINE_MARGIN, "results": rows}
    lines = ["# PanoNet Fig. 5: mirrored twins, with and without coordinates (CPU)", "",
             f"commit {payload['commit']}, {payload['date']}; images: {source}, each with its left half mirrored "
             f"onto the right", "",
             "| model | instances off the mirror line | twins separate | twins merged into one | twin unmatched |",
             "|---|---|---|---|---|",
             *(f"| {name} | {r['instances']} | {r['separate']} | {r['merged']} | {r['unmatched']} |"
               for name, r in rows.items()), ""]
    report("mirror", cpu, payload, lines)


if __name__ == "__main__":
    main()
