"""The README's demo on the embedded sample: IMP of the frame's instances, written as images and a summary."""

import json

import cv2
import pytest

from panoptic_ros import demo
from panoptic_ros.ops import extension_available


@pytest.mark.skipif(not extension_available(), reason="IMP extension not built")
def test_demo_projects_the_sample_instances_where_the_label_has_them(tmp_path):
    summary = demo.run(demo.DEFAULT_IMAGE, demo.DEFAULT_LABEL, tmp_path)
    assert summary["instances"] == {"car": 3, "pedestrian": 6, "bicyclist": 3}
    assert summary["canvas_CHW"] == [11, 90, 120]
    # 28 x 28 masks on a stride-4 canvas lose detail at boundaries, but a wrong box scale or cell geometry
    # would put the projection off the objects and collapse these.
    assert all(iou > 0.6 for iou in summary["thing_iou_vs_label"].values()), summary["thing_iou_vs_label"]
    overlay = cv2.imread(str(tmp_path / "imp_overlay.png"))
    assert overlay.shape == (360, 480, 3)
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
