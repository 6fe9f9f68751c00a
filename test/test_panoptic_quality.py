"""PanopticQuality equals cityscapesscripts' evaluator (pq_compute_single_core) on real CamVid label maps."""

import json

import cv2
import numpy as np
import pytest
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import average_pq, pq_compute_single_core
from PIL import Image

from panoptic_ros import demo
from panoptic_ros.classes import CAMVID
from panoptic_ros.instances import instances_from_semantic
from panoptic_ros.metrics import PanopticQuality, panoptic_from_labels

CAR, PEDESTRIAN, ROAD, SKY = 8, 9, 3, 0


def sample_ground_truth():
    label = cv2.imread(str(demo.DEFAULT_LABEL), cv2.IMREAD_UNCHANGED).astype(np.int64)
    instance_map, _ = instances_from_semantic(label, CAMVID.thing_ids)
    per_class = np.full(label.shape, -1, np.int64)  # instance index within its class
    for cls in CAMVID.thing_ids:
        ids = np.unique(instance_map[(label == cls) & (instance_map > 0)])
        for k, value in enumerate(ids):
            per_class[instance_map == value] = k
    gt = panoptic_from_labels(label, per_class, CAMVID, ignore_id=CAMVID.ignore_id)
    gt[5:25, 5:60] = CAR  # a crowd region of cars (thing class, no instance)
    return gt


def predictions(gt):
    shifted = np.roll(gt, (3, -4), axis=(0, 1))  # every segment a few pixels off
    edited = gt.copy()
    peds = [i for i in np.unique(gt) if i // 1000 == PEDESTRIAN]
    edited[np.isin(edited, peds[:2])] = peds[0]  # two pedestrians merged into one
    edited[edited == peds[-1]] = ROAD  # one pedestrian missed
    edited[300:340, 200:280] = CAR * 1000 + 77  # a spurious car on the road
    edited[8:22, 10:50] = CAR * 1000 + 78  # a car on the crowd region: ignored, not FP
    edited[edited == -1] = SKY  # void pixels predicted as sky
    edited[100:200, 0:120] = SKY  # stuff boundaries moved
    blank = np.full_like(gt, -1)
    return [gt.copy(), shifted, edited, blank]


def to_cityscapes(panoptic, folder, name, gt):
    """Cityscapes panoptic format: RGB-encoded ids (ours + 1, so void = 0) and segments_info."""
    ids = panoptic + 1
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=2).astype(np.uint8)
    Image.fromarray(rgb).save(folder / f"{name}.png")
    segments = []
    for i, area in zip(*np.unique(panoptic[panoptic >= 0], return_counts=True)):
        cls = int(i // 1000 if i >= 1000 else i)
        crowd = int(gt and CAMVID[cls].is_thing and i < 1000)
        segments.append({"id": int(i + 1), "category_id": cls, "iscrowd": crowd, "area": int(area)})
    return {"image_id": name, "file_name": f"{name}.png", "segments_info": segments}


def test_equals_cityscapesscripts_on_real_label_maps(tmp_path):
    gt = sample_ground_truth()
    empty_gt = np.full((60, 80), -1)
    pairs = [(gt, pred) for pred in predictions(gt)] + [(empty_gt, np.full((60, 80), SKY)), (empty_gt, empty_gt)]
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    ours = PanopticQuality(CAMVID)
    annotations = []
    for k, (target, prediction) in enumerate(pairs):
        ours.update(prediction, target)
        annotations.append((to_cityscapes(target, tmp_path / "gt", f"img{k}", True),
                            to_cityscapes(prediction, tmp_path / "pred", f"img{k}", False)))
    categories = {c.id: {"id": c.id, "name": c.name, "isthing": int(c.is_thing)} for c in CAMVID.classes}
    stat = pq_compute_single_core(0, annotations, str(tmp_path / "gt"), str(tmp_path / "pred"), categories)
    theirs = average_pq(stat, categories)
    result = ours.compute()
    for mine, name in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        for key in ("pq", "sq", "rq", "n"):
            assert result[mine][key] == pytest.approx(theirs[name][key], abs=1e-6), (mine, key)
    for c in CAMVID.classes:
        for key in ("pq", "sq", "rq"):
            assert result["per_class"][c.name][key] == pytest.approx(theirs["per_class"][c.id][key], abs=1e-6)
    # the cases are not trivial: some classes are imperfect, and the spurious car counts as a false positive
    assert 0 < result["things"]["pq"] < 1 and ours.fp[CAR] >= 1 and ours.fn[PEDESTRIAN] >= 1


def test_perfect_prediction_scores_one_and_errors_are_clear():
    gt = sample_ground_truth()
    metric = PanopticQuality(CAMVID)
    metric.update(gt, gt)
    assert metric.compute()["all"]["pq"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no class in table"):
        metric.update(np.full((2, 2), 42), np.full((2, 2), 1))
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(np.zeros((2, 2)), np.zeros((3, 2)))
