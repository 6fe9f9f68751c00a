"""Demo on the embedded sample (a real CamVid validation frame with its label map), two parts:

1. Fast mode: PanoNet with the shipped weights through the Predictor: panoptic overlay, segments and latency,
   scored against the label (mIoU and PQ on this one frame; CamVid instances are connected components).
2. Instance Mask Projection (IMP paper Sec. 3.1) of the frame's instances: connected components of the thing
   classes, with boxes and 28 x 28 masks as Mask R-CNN would predict them, projected onto a per-class canvas at
   stride 4, the canvas the Panoptic-FPN-IMP semantic head consumes. "Mask R-CNN-IMP" reads that canvas directly
   as a semantic map; the demo reports its IoU per thing class: what projecting 28 x 28 masks at stride 4 keeps.

    python -m panoptic_ros.demo [--image PNG --label PNG] [--weights W] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from .classes import CAMVID
from .datasets import camvid_targets
from .instances import detections_from_instances, instances_from_semantic
from .metrics import PanopticQuality, SemanticIoU, panoptic_from_labels
from .ops import project_instance_masks
from .predictor import DEFAULT_WEIGHTS, Predictor
from .transforms import IGNORE_LABEL
from .visualize import blend_class_map, draw_boxes, render_panoptic

SAMPLES = Path(__file__).resolve().parent / "data" / "samples"
DEFAULT_IMAGE = SAMPLES / "camvid_0016E5_08001.png"
DEFAULT_LABEL = SAMPLES / "camvid_0016E5_08001_label.png"


def read_image(path: Path, flags: int) -> np.ndarray:
    image = cv2.imread(str(path), flags)
    if image is None:
        raise SystemExit(f"cannot read image {path}")
    return image


def run(image_path: Path, label_path: Path, out_dir: Path, weights: Path = DEFAULT_WEIGHTS) -> dict:
    image = cv2.cvtColor(read_image(image_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    label = read_image(label_path, cv2.IMREAD_UNCHANGED)
    if label.shape != image.shape[:2]:
        raise SystemExit(f"label {label.shape} and image {image.shape[:2]} differ in size")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {"image": str(image_path), "panoptic": run_panoptic(image, label, out_dir, weights),
               "imp": run_imp(image, label, out_dir)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_panoptic(image: np.ndarray, label: np.ndarray, out_dir: Path, weights: Path) -> dict:
    predictor = Predictor.from_weights(weights)
    predictor(image)  # warm-up, so the reported latency is a steady-state one
    result = predictor(image)
    semantic_gt, instances_gt = camvid_targets(label)
    gt = panoptic_from_labels(semantic_gt, instances_gt, CAMVID, ignore_id=IGNORE_LABEL)
    iou, pq = SemanticIoU(len(CAMVID), IGNORE_LABEL), PanopticQuality(CAMVID)
    iou.update(result.semantic, torch.from_numpy(semantic_gt.astype(np.int64)))
    pq.update(result.panoptic.numpy(), gt)
    overlay = render_panoptic(image, result.semantic.numpy(), result.panoptic.numpy(), CAMVID)
    cv2.imwrite(str(out_dir / "panoptic_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    segments = [s.__dict__ for s in result.segments]
    (out_dir / "panoptic_segments.json").write_text(json.dumps(segments, indent=1) + "\n")
    quality = pq.compute()
    return {
        "weights": str(weights),
        "device": str(predictor.device),
        "backend": predictor.backend,
        "segments": len(segments),
        "instances": {CAMVID[c].name: sum(s["class_id"] == c for s in segments) for c in CAMVID.thing_ids},
        "latency_ms": {k: round(v, 2) for k, v in result.timings.items()},
        "frame_miou": round(iou.compute()["miou"], 4),
        "frame_pq": {k: round(quality[k]["pq"], 4) for k in ("all", "things", "stuff")},
        "outputs": [str(out_dir / "panoptic_overlay.png"), str(out_dir / "panoptic_segments.json")],
    }


def run_imp(image: np.ndarray, label: np.ndarray, out_dir: Path, stride: int = 4, threshold: float = 0.5) -> dict:
    height, width = label.shape
    instance_map, classes = instances_from_semantic(label, CAMVID.thing_ids, min_area=20)
    det = detections_from_instances(instance_map, classes)

    canvas_size = (len(CAMVID), -(-height // stride), -(-width // stride))
    start = time.perf_counter()
    canvas = project_instance_masks(det.masks, det.scores, det.classes, det.boxes, canvas_size, box_scale=1 / stride)
    imp_ms = (time.perf_counter() - start) * 1e3

    # Mask R-CNN-IMP: the strongest canvas plane above the threshold names the class of each pixel.
    peak, best = canvas.max(dim=0)
    coarse = torch.where(peak >= threshold, best, torch.full_like(best, -1)).numpy().astype(np.int32)
    class_map = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_NEAREST)
    iou = {}
    for class_id in CAMVID.thing_ids:
        truth, pred = label == class_id, class_map == class_id
        union = np.logical_or(truth, pred).sum()
        iou[CAMVID[class_id].name] = float(np.logical_and(truth, pred).sum() / union) if union else None

    overlay = draw_boxes(blend_class_map(image, class_map, CAMVID), det.boxes.numpy(), det.classes.numpy(), CAMVID)
    heat = cv2.resize((peak.numpy() * 255).round().astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(out_dir / "imp_overlay.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(out_dir / "imp_canvas.png"), cv2.applyColorMap(heat, cv2.COLORMAP_INFERNO))
    return {
        "instances": {CAMVID[c].name: classes.count(c) for c in CAMVID.thing_ids},
        "canvas_CHW": list(canvas_size),
        "imp_ms": round(imp_ms, 3),
        "thing_iou_vs_label": iou,
        "outputs": [str(out_dir / "imp_overlay.png"), str(out_dir / "imp_canvas.png")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="RGB image (default: embedded sample)")
    parser.add_argument("--label", type=Path, default=DEFAULT_LABEL, help="CamVid label map of the image")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="weights of either mode (default: the shipped PanoNet)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    opts = parser.parse_args()
    summary = run(opts.image, opts.label, opts.out, opts.weights)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
