"""PanopticQuality equals cityscapesscripts' pq_compute_single_core on real CamVid label maps and corner cases."""

import json

import cv2
import numpy as np
import pytest
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import pq_compute_single_core
from PIL import Image

from panoptic_ros import demo
from panoptic_ros.classes import CAMVID
from panoptic_ros.instances import instances_from_semantic
from panoptic_ros.metrics import PanopticQuality, panoptic_from_labels

SKY, BUILDING, ROAD, TREE, FENCE, CAR, PEDESTRIAN, BICYCLIST = 0, 1, 3, 5, 7, 8, 9, 10


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


def assert_equals_cityscapesscripts(pairs, tmp_path):
    """Our PanopticQuality over (gt, prediction) pairs against pq_compute_single_core on the same pairs in the
    Cityscapes format: per-class TP / FP / FN / IoU sums, per-class and averaged PQ, SQ, RQ. Where a group has no
    class with TP + FP + FN > 0 the official average divides by zero; ours is 0. Returns our metric."""
    (tmp_path / "gt").mkdir(parents=True)
    (tmp_path / "pred").mkdir()
    ours = PanopticQuality(CAMVID)
    annotations = []
    for k, (target, prediction) in enumerate(pairs):
        ours.update(prediction, target)
        annotations.append((to_cityscapes(target, tmp_path / "gt", f"img{k}", True),
                            to_cityscapes(prediction, tmp_path / "pred", f"img{k}", False)))
    categories = {c.id: {"id": c.id, "name": c.name, "isthing": int(c.is_thing)} for c in CAMVID.classes}
    stat = pq_compute_single_core(0, annotations, str(tmp_path / "gt"), str(tmp_path / "pred"), categories)
    for c in CAMVID.classes:
        assert (ours.tp[c.id], ours.fp[c.id], ours.fn[c.id]) == (stat[c.id].tp, stat[c.id].fp, stat[c.id].fn), c.name
        assert ours.iou[c.id] == pytest.approx(stat[c.id].iou, abs=1e-6), c.name
    result = ours.compute()
    for mine, isthing in (("all", None), ("things", True), ("stuff", False)):
        if result[mine]["n"] == 0:
            with pytest.raises(ZeroDivisionError):
                stat.pq_average(categories, isthing)
            assert result[mine] == {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
            continue
        theirs, per_class = stat.pq_average(categories, isthing)
        for key in ("pq", "sq", "rq", "n"):
            assert result[mine][key] == pytest.approx(theirs[key], abs=1e-6), (mine, key)
        for class_id, values in per_class.items():
            for key in ("pq", "sq", "rq"):
                assert result["per_class"][CAMVID[class_id].name][key] == pytest.approx(values[key], abs=1e-6)
    return ours


def test_equals_cityscapesscripts_on_real_label_maps(tmp_path):
    gt = sample_ground_truth()
    empty_gt = np.full((60, 80), -1)
    pairs = [(gt, pred) for pred in predictions(gt)] + [(empty_gt, np.full((60, 80), SKY)), (empty_gt, empty_gt)]
    ours = assert_equals_cityscapesscripts(pairs, tmp_path)
    result = ours.compute()
    # the cases are not trivial: some classes are imperfect, and the spurious car counts as a false positive
    assert 0 < result["things"]["pq"] < 1 and ours.fp[CAR] >= 1 and ours.fn[PEDESTRIAN] >= 1


def crowd_pairs():
    """Predictions on the car crowd region (rows 5-24, columns 5-59) of the real map."""
    gt = sample_ground_truth()
    on_crowd, other_class, half, whole = gt.copy(), gt.copy(), gt.copy(), gt.copy()
    on_crowd[8:22, 10:50] = CAR * 1000 + 70  # all on the crowd region of its class: ignored
    other_class[8:22, 10:50] = PEDESTRIAN * 1000 + 70  # on another class's crowd region: a false positive
    half[5:25, 50:70] = CAR * 1000 + 71  # exactly half on the crowd region: a false positive (needs > 1/2)
    whole[5:25, 5:60] = CAR * 1000 + 72  # the crowd region itself: never a match, ignored
    return [(gt, pred) for pred in (on_crowd, other_class, half, whole)], [(0, 0), (1, 0), (1, 0), (0, 0)]


def void_pairs():
    """Predictions on void: the real map's own void pixels, exactly half void, and void left out of the union."""
    gt = sample_ground_truth()
    mostly_void = gt.copy()
    mostly_void[gt == -1] = BICYCLIST * 1000 + 70
    small = np.full((20, 40), ROAD)
    small[:, 30:] = -1
    small[5:15, 20:30] = CAR * 1000
    wider = np.full_like(small, ROAD)
    wider[5:15, 20:40] = CAR * 1000 + 1  # 100 pixels on the car, 100 on void: IoU 1 once void is left out
    half = np.full_like(small, ROAD)
    half[0:4, 25:35] = CAR * 1000 + 2  # 20 of 40 pixels on void: a false positive
    return [(gt, mostly_void), (small, wider), (small, half)], [(0, 0), (0, 0), (1, 1)]


def unmatched_pairs():
    """Segments without a partner on either side: missed and spurious things and stuff, and IoU exactly 1/2."""
    gt = sample_ground_truth()
    pred = gt.copy()
    pred[gt == PEDESTRIAN * 1000 + 1] = ROAD  # a missed pedestrian
    pred[gt == TREE] = BUILDING  # missed stuff class, and the building grows
    pred[280:340, 150:300] = FENCE  # spurious stuff: too large to match the real fence
    pred[300:310, 400:420] = CAR * 1000 + 70  # a spurious car
    gt_half, pred_half = gt.copy(), gt.copy()
    gt_half[320:330, 400:410] = CAR * 1000 + 50
    pred_half[320:330, 400:420] = CAR * 1000 + 51  # IoU exactly 1/2: no match, so one FN and one FP
    return [(gt, pred), (gt_half, pred_half)], [(2, 3), (1, 1)]


def empty_pairs():
    """All-void images, with and without predicted segments, and a real map predicted as all void (37 segments)."""
    blank = np.full((30, 40), -1)
    gt = sample_ground_truth()
    return [(blank, blank), (blank, np.full_like(blank, SKY)), (gt, np.full_like(gt, -1))], [(0, 0), (0, 0), (0, 37)]


@pytest.mark.parametrize("cases", [crowd_pairs, void_pairs, unmatched_pairs, empty_pairs])
def test_corner_cases_equal_cityscapesscripts(cases, tmp_path):
    pairs, errors = cases()
    for k, (pair, fp_fn) in enumerate(zip(pairs, errors)):  # each pair alone, so the expected errors are per pair
        ours = assert_equals_cityscapesscripts([pair], tmp_path / str(k))
        assert (ours.fp.sum(), ours.fn.sum()) == fp_fn, k


def test_perfect_prediction_scores_one_and_errors_are_clear():
    gt = sample_ground_truth()
    metric = PanopticQuality(CAMVID)
    metric.update(gt, gt)
    assert metric.compute()["all"]["pq"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no class in table"):
        metric.update(np.full((2, 2), 42), np.full((2, 2), 1))
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(np.zeros((2, 2)), np.zeros((3, 2)))
