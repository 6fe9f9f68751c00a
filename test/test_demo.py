"""The README's demo on the embedded sample: PanoNet with the shipped weights, and IMP of the frame's instances."""

import json

import cv2
import pytest
import torch

from panoptic_ros import demo
from panoptic_ros.backends import resolve_backend
from panoptic_ros.ops import extension_available


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
    if not extension_available():
        pytest.skip("IMP extension not built")
    out = tmp_path_factory.mktemp("demo")
    return demo.run(demo.DEFAULT_IMAGE, demo.DEFAULT_LABEL, out), out


def test_shipped_panonet_gives_sensible_panoptic_output(summary):
    result, out = summary
    pan = result["panoptic"]
    # The shipped model on a validation frame it never trained on: most pixels right, the cars found.
    assert pan["frame_miou"] > 0.4, pan
    assert pan["instances"]["car"] >= 1 and pan["segments"] >= 6, pan
    assert pan["frame_pq"]["stuff"] > 0.3, pan
    assert set(pan["latency_ms"]) == {"preprocess", "model", "clustering", "merge"}
    assert pan["backend"] == resolve_backend("auto", torch.device(pan["device"]), "fp32")  # the default backend
    assert cv2.imread(str(out / "panoptic_overlay.png")).shape == (360, 480, 3)
    segments = json.loads((out / "panoptic_segments.json").read_text())
    assert len(segments) == pan["segments"] and {"id", "class_name", "bbox", "area", "score"} <= set(segments[0])


def test_imp_projects_the_sample_instances_where_the_label_has_them(summary):
    result, out = summary
    imp = result["imp"]
    assert imp["instances"] == {"car": 3, "pedestrian": 6, "bicyclist": 3}
    assert imp["canvas_CHW"] == [11, 90, 120]
    # 28 x 28 masks on a stride-4 canvas lose detail at boundaries, but a wrong box scale or cell geometry
    # would put the projection off the objects and collapse these.
    assert all(iou > 0.6 for iou in imp["thing_iou_vs_label"].values()), imp["thing_iou_vs_label"]
    assert cv2.imread(str(out / "imp_overlay.png")).shape == (360, 480, 3)
    assert json.loads((out / "summary.json").read_text()) == result
