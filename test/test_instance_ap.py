"""InstanceAP equals cityscapesscripts' instance-level evaluator (evalInstanceLevelSemanticLabeling) on files built
from the shipped CamVid label map, with Cityscapes classes."""

import copy
import math
import os

import cv2
import numpy as np
import pytest
from cityscapesscripts.evaluation import evalInstanceLevelSemanticLabeling as official
from cityscapesscripts.helpers.labels import trainId2label
from test_panoptic_quality import sample_ground_truth

from panoptic_ros.classes import CAMVID, CITYSCAPES
from panoptic_ros.metrics import InstanceAP, average_precision

TRAIN_ID = {c.name: c.id for c in CITYSCAPES.classes}
CAMVID_TO_CITYSCAPES = np.array([TRAIN_ID[name] for name in (
    "sky", "building", "pole", "road", "sidewalk", "vegetation", "traffic sign", "fence", "car", "person", "rider")])
ROAD, CAR, PERSON, TRUCK, BUS = (TRAIN_ID[n] for n in ("road", "car", "person", "truck", "bus"))
KERNEL = np.ones((3, 3), np.uint8)


def to_cityscapes_classes(panoptic):
    """CamVid panoptic ids -> Cityscapes train-id panoptic ids (car, pedestrian, bicyclist -> car, person, rider)."""
    cls = CAMVID_TO_CITYSCAPES[np.maximum(np.where(panoptic >= 1000, panoptic // 1000, panoptic), 0)]
    return np.where(panoptic == -1, -1, np.where(panoptic >= 1000, cls * 1000 + panoptic % 1000, cls))


def cityscapes_ground_truth():
    """The shipped CamVid label map with Cityscapes classes: connected components as instances (several under 100
    pixels), void pixels, a crowd region of cars."""
    assert len(CAMVID_TO_CITYSCAPES) == len(CAMVID)
    return to_cityscapes_classes(sample_ground_truth())


def perturbed(gt, seed):
    """A prediction for gt and its scores: each instance copied, shifted, eroded, dilated or missed (under new ids),
    a false positive car on the road, a car on the crowd region; scores of one decimal, so with ties."""
    rng = np.random.default_rng(seed)
    pred = np.where((gt == -1) | (gt >= 1000), ROAD, gt)  # thing classes of ids < 1000 (crowd) stay: not instances
    scores = {}
    for j, seg in enumerate(i for i in np.unique(gt) if i >= 1000):
        mask = (gt == seg).astype(np.uint8)
        action = rng.integers(5)
        if action == 1:
            mask = np.roll(mask, tuple(rng.integers(-4, 5, 2)), axis=(0, 1))
        elif action == 2:
            mask = cv2.erode(mask, KERNEL, iterations=int(rng.integers(1, 3)))
        elif action == 3:
            mask = cv2.dilate(mask, KERNEL)
        elif action == 4:
            continue
        new = seg // 1000 * 1000 + 100 + j
        pred[mask > 0] = new
        scores[new] = round(float(rng.uniform(0.1, 1.0)), 1)
    pred[300:340, 200:280] = CAR * 1000 + 900
    pred[8:22, 10:50] = CAR * 1000 + 901
    scores.update({CAR * 1000 + 900: 0.5, CAR * 1000 + 901: 0.9})
    return pred, scores


def scenario():
    """(gt, prediction, scores) per image: perturbed real maps, a prediction 2/3 on void, one of IoU 0.5, a small
    crowd region, an image without ground-truth instances, one without predictions, an all-void one, a class with
    false positives only (truck: AP NaN) and one with ground truth only (bus: AP 0)."""
    gt = cityscapes_ground_truth()
    gt[200:220, 300:340] = -1
    pred, scores = perturbed(gt, 0)
    pred[200:230, 300:340] = PERSON * 1000 + 500  # 800 of 1200 pixels on void: a false positive only for t >= 0.7
    gt[320:330, 400:410] = PERSON * 1000 + 50
    pred[320:330, 400:420] = PERSON * 1000 + 502  # IoU exactly 0.5: no match, as IoU must exceed the threshold
    images = [(gt, pred, {**scores, PERSON * 1000 + 500: 0.7, PERSON * 1000 + 502: 0.6})]

    flipped = np.fliplr(gt).copy()
    flipped[50:55, 400:408] = PERSON  # a 40-pixel crowd region: the official script counts its pixels twice
    pred, scores = perturbed(flipped, 1)
    pred[50:60, 400:408] = PERSON * 1000 + 501
    images.append((flipped, pred, {**scores, PERSON * 1000 + 501: 0.3}))

    no_things = np.where((gt >= 1000) | (gt == CAR), ROAD, gt)
    pred, scores = perturbed(gt, 2)
    pred[100:160, 100:200] = TRUCK * 1000 + 1
    images.append((no_things, pred, {**scores, TRUCK * 1000 + 1: 0.8}))

    with_bus = gt.copy()
    with_bus[250:300, 50:150] = BUS * 1000 + 3
    images.append((with_bus, np.where((gt == -1) | (gt >= 1000), ROAD, gt), {}))

    images.append((np.full_like(gt, -1), *perturbed(gt, 3)))
    return images


def to_instance_ids(panoptic):
    """Cityscapes gtFine instanceIds: label id * 1000 + k for instances, label id elsewhere, 0 (unlabeled) for void."""
    label_id = np.array([trainId2label[c.id].id for c in CITYSCAPES.classes])
    cls = label_id[np.maximum(np.where(panoptic >= 1000, panoptic // 1000, panoptic), 0)]
    ids = np.where(panoptic == -1, 0, np.where(panoptic >= 1000, cls * 1000 + panoptic % 1000, cls))
    return ids.astype(np.uint16)


def official_result(tmp_path, monkeypatch, images):
    """Write gtFine instanceIds PNGs, prediction txt files and binary masks, and run the official
    ``evaluateImgLists`` on them; returns its result dict."""
    # Two numpy 2 incompatibilities of the official script: assignGt2Preds calls np.in1d (gone in numpy 2.4), and its
    # JSON caches (gtInstances.json, matches.json in the working directory) fail on numpy integers; skip the caches.
    monkeypatch.setattr(np, "in1d", np.isin, raising=False)
    monkeypatch.setattr(official, "writeDict2JSON", lambda data, path: None)
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    gt_files, pred_files = [], []
    for k, (gt, pred, scores) in enumerate(images):
        gt_files.append(str(tmp_path / "gt" / f"img{k}_gtFine_instanceIds.png"))
        cv2.imwrite(gt_files[-1], to_instance_ids(gt))
        lines = []
        for seg in np.unique(pred[pred >= 1000]):
            mask = f"img{k}_{seg}.png"
            cv2.imwrite(str(tmp_path / "pred" / mask), (pred == seg).astype(np.uint8) * 255)
            lines.append(f"{mask} {trainId2label[seg // 1000].id} {scores[seg]!r}\n")
        pred_files.append(str(tmp_path / "pred" / f"img{k}.txt"))
        (tmp_path / "pred" / f"img{k}.txt").write_text("".join(lines))
    args = copy.deepcopy(official.args)
    args.gtInstancesFile = str(tmp_path / "gtInstances.json")
    args.predictionPath = os.path.abspath(tmp_path / "pred")
    args.quiet, args.JSONOutput, args.colorized = True, False, False
    return official.evaluateImgLists(pred_files, gt_files, args)["averages"]


def ours(images):
    metric = InstanceAP(CITYSCAPES)
    for gt, pred, scores in images:
        metric.update(pred, scores, gt)
    return metric.compute()


def test_equals_cityscapesscripts_on_real_label_maps(tmp_path, monkeypatch):
    images = scenario()
    theirs = official_result(tmp_path, monkeypatch, images)
    result = ours(images)
    assert result["ap"] == pytest.approx(theirs["allAp"], abs=1e-6)
    assert result["ap50"] == pytest.approx(theirs["allAp50%"], abs=1e-6)
    assert set(result["per_class"]) == set(theirs["classes"])
    for name, values in result["per_class"].items():
        assert values["ap"] == pytest.approx(theirs["classes"][name]["ap"], abs=1e-6, nan_ok=True), name
        assert values["ap50"] == pytest.approx(theirs["classes"][name]["ap50%"], abs=1e-6, nan_ok=True), name
    # the case is not trivial: imperfect classes, a class with only false positives, one never predicted
    assert 0 < result["ap"] < result["ap50"] < 1
    assert math.isnan(result["per_class"]["truck"]["ap"]) and result["per_class"]["bus"]["ap"] == 0


def test_score_order_changes_ap():
    images = scenario()
    reference = ours(images)["per_class"]["person"]["ap"]
    reversed_scores = [(gt, pred, {k: 1 - s for k, s in scores.items()}) for gt, pred, scores in images]
    assert ours(reversed_scores)["per_class"]["person"]["ap"] != pytest.approx(reference, abs=1e-3)


def test_average_precision_hand_counted():
    # two ground-truth instances, one found (score 0.9), one false positive (0.8): points (r, p) = (.5, .5), (.5, 1),
    # (0, 1); widths 0, .25, .25
    assert average_precision(np.array([0.9, 0.8]), np.array([True, False]), 2) == pytest.approx(0.5)
    # the false positive ranked first: (.5, .5), (0, 0), (0, 1); widths .25, .25, 0
    assert average_precision(np.array([0.8, 0.9]), np.array([True, False]), 2) == pytest.approx(0.125)
    # ties form one threshold, whatever their order: (.5, 2/3), (0, 1); widths .25, .25
    assert average_precision(np.array([0.5, 0.5, 0.5]), np.array([True, False, True]), 4) == pytest.approx(5 / 12)
    assert average_precision(np.array([0.5, 0.5, 0.5]), np.array([False, True, True]), 4) == pytest.approx(5 / 12)


def test_only_ignored_predictions_give_zero_where_the_official_script_fails(tmp_path, monkeypatch):
    gt = np.full((40, 40), ROAD)
    gt[:20] = -1
    gt[25:35, 25:35] = CAR * 1000
    pred = np.full_like(gt, ROAD)
    pred[:15, :15] = CAR * 1000 + 7  # all on void: ignored, and the car is missed
    images = [(gt, pred, {CAR * 1000 + 7: 0.5})]
    with pytest.raises(IndexError):
        official_result(tmp_path, monkeypatch, images)
    assert ours(images)["per_class"]["car"]["ap"] == 0


def test_perfect_prediction_reset_and_errors():
    gt = cityscapes_ground_truth()
    metric = InstanceAP(CITYSCAPES)
    metric.update(gt, {int(i): 0.5 for i in np.unique(gt) if i >= 1000}, gt)
    assert metric.compute()["ap"] == pytest.approx(1.0)
    metric.reset()
    assert math.isnan(metric.compute()["ap"])
    with pytest.raises(ValueError, match=r"predicted instances \[13000\] have no score"):
        metric.update(np.full((2, 2), CAR * 1000), {}, gt[:2, :2])
    with pytest.raises(ValueError, match="no class in table"):
        metric.update(np.full((2, 2), 42), {}, gt[:2, :2])
    with pytest.raises(ValueError, match=r"segment id -5 is below VOID_ID \(-1\)"):
        metric.update(np.full((2, 2), -5), {}, gt[:2, :2])
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(gt[:2, :2], {}, gt[:3, :2])
