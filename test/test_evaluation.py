"""Dataset evaluation and the bandwidth search run the Predictor over a dataset and report consistent numbers."""

import pytest
import torch

from panoptic_ros.checkpoint import load_model, save_weights
from panoptic_ros.config import config_from_dict
from panoptic_ros.datasets import CamVid
from panoptic_ros.evaluation import evaluate, markdown, search_bandwidths
from panoptic_ros.models import build_model
from panoptic_ros.predictor import Predictor


@pytest.fixture
def predictor(tmp_path):
    cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1]},
                            "postprocess": {"min_instance_pixels": 1}})
    torch.manual_seed(0)
    model = build_model("panonet", **cfg.model.kwargs())
    with torch.no_grad():
        model.semantic_decoder.head.bias[8] = 2.0  # some cars, so that clustering and thing PQ are exercised
    path = save_weights(model, cfg, tmp_path / "w.safetensors")
    return Predictor.from_weights(path, device="cpu"), path


def test_evaluate_reports_metrics_and_latency(toy_camvid, predictor):
    report = evaluate(predictor[0], CamVid(toy_camvid, "val"))
    assert report["images"] == 4
    assert 0 <= report["miou"] <= 1 and set(report["iou"]) == {c.name for c in CamVid.table.classes}
    assert {"all", "things", "stuff", "per_class"} <= set(report["panoptic"])
    assert {"preprocess", "model", "clustering", "merge", "total"} == set(report["latency_ms"])
    report.update(weights="w", dataset="camvid", split="val")
    assert "| PQ |" in markdown(report)


def test_bandwidth_search_scores_each_thing_class(toy_camvid, predictor, tmp_path):
    found = search_bandwidths(predictor[0], CamVid(toy_camvid, "val"), candidates=(0.3, 0.8))
    assert set(found["pq"]) == {"car", "pedestrian", "bicyclist"}
    assert all(set(scores) == {0.3, 0.8} for scores in found["pq"].values())
    assert set(found["best"]) == {8, 9, 10} and set(found["best"].values()) <= {0.3, 0.8}
