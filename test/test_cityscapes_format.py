"""Sets exported in the Cityscapes panoptic format, evaluated by cityscapesscripts' evaluatePanoptic, score what
PanopticQuality scores; the writer is incremental and rejects bad maps with clear errors."""

import json

import numpy as np
import pytest
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic, rgb2id
from PIL import Image
from test_instance_ap import to_cityscapes_classes
from test_panoptic_quality import CAR, PEDESTRIAN, predictions, sample_ground_truth

from panoptic_ros.classes import CAMVID, CITYSCAPES
from panoptic_ros.cityscapes_format import CityscapesPanopticWriter, write_ground_truth
from panoptic_ros.metrics import PanopticQuality


def real_pairs(table):
    """(gt, prediction) pairs from the shipped CamVid label map, with the table's classes."""
    gt = sample_ground_truth()
    pairs = [(gt, pred) for pred in predictions(gt)]
    if table is CITYSCAPES:
        pairs = [(to_cityscapes_classes(g), to_cityscapes_classes(p)) for g, p in pairs]
    return pairs


@pytest.mark.parametrize("table", [CAMVID, CITYSCAPES], ids=lambda table: table.name)
def test_official_evaluation_of_exported_sets_equals_panoptic_quality(table, tmp_path):
    pairs = real_pairs(table)
    gt_json = write_ground_truth(tmp_path, ((f"img{k}", gt) for k, (gt, _) in enumerate(pairs)), table)
    ours = PanopticQuality(table)
    with CityscapesPanopticWriter(tmp_path, table) as writer:
        for k, (gt, pred) in enumerate(pairs):
            writer.add(f"img{k}", pred)
            ours.update(pred, gt)
    theirs = evaluatePanoptic(str(gt_json), str(tmp_path / "ground_truth"), str(writer.json_path), str(writer.folder),
                              str(tmp_path / "result.json"))
    result = ours.compute()
    for mine, name in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        for key in ("pq", "sq", "rq", "n"):
            assert result[mine][key] == pytest.approx(theirs[name][key], abs=1e-6), (mine, key)
    names = {c["id"]: c["name"] for c in json.loads(gt_json.read_text())["categories"]}
    for category_id, values in theirs["per_class"].items():
        for key in ("pq", "sq", "rq"):
            assert result["per_class"][names[category_id]][key] == pytest.approx(values[key], abs=1e-6)
    assert 0 < result["things"]["pq"] < 1 and len(theirs["per_class"]) == len(table)
    # category ids: Cityscapes label ids for Cityscapes (car = 26), the table's own ids otherwise
    assert {v: k for k, v in names.items()}["car"] == (26 if table is CITYSCAPES else CAR)


def test_pngs_are_written_at_once_and_the_json_on_flush(tmp_path):
    gt = sample_ground_truth()
    writer = CityscapesPanopticWriter(tmp_path, CAMVID)
    segments = {s["message_id"]: s for s in writer.add("a", gt, scores={PEDESTRIAN * 1000 + 1: 0.25})["segments_info"]}
    assert not writer.json_path.exists()
    png = rgb2id(np.array(Image.open(tmp_path / "predictions" / "a.png"), dtype=np.uint32))
    np.testing.assert_array_equal(png, gt + 1)  # void (-1) is 0, the format's void
    assert segments[PEDESTRIAN * 1000 + 1] == {"id": 9002, "category_id": PEDESTRIAN, "message_id": 9001,
                                              "area": int((gt == 9001).sum()), "iscrowd": 0, "score": 0.25}
    assert segments[CAR]["iscrowd"] == 1 and segments[0]["id"] == 1  # the car crowd region; sky (class 0)
    writer.flush()
    writer.add("b", gt)
    assert [a["image_id"] for a in json.loads(writer.json_path.read_text())["annotations"]] == ["a"]
    with pytest.raises(KeyboardInterrupt), writer:
        writer.add("c", gt)
        raise KeyboardInterrupt
    saved = json.loads(writer.json_path.read_text())
    assert [a["image_id"] for a in saved["annotations"]] == ["a", "b", "c"]
    assert [c["id"] for c in saved["categories"]] == list(range(len(CAMVID)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions", "predictions.json"]


def test_bad_maps_are_rejected_with_clear_errors(tmp_path):
    writer = CityscapesPanopticWriter(tmp_path, CAMVID)
    writer.add("a", np.zeros((4, 4), np.int64))
    with pytest.raises(ValueError, match=r"image 'b': expected an integer \[H, W\] panoptic map, got int64 \(4, 4, 3"):
        writer.add("b", np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ValueError, match=r"expected an integer \[H, W\] panoptic map, got float32"):
        writer.add("b", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"image 'b' holds segment ids \[42\] of no class in table 'camvid'"):
        writer.add("b", np.full((4, 4), 42))
    for image_id in ("a", "", "city/b"):
        with pytest.raises(ValueError, match="unique file-name stem"):
            writer.add(image_id, np.zeros((4, 4), np.int64))
    assert sorted(p.name for p in writer.folder.iterdir()) == ["a.png"]
