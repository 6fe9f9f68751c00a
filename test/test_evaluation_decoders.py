"""The evaluation tools take a weights file of any PanoNet instance decoder (issue #13 item 4) through the one
Predictor, unchanged: the bag evaluator and the dataset evaluator score it and record the decoder in the report's
run; the bandwidth search, which only the embedding decoder has, refuses the others naming the decoder."""

import json
import sys

import pytest
import torch

from panoptic_ros.checkpoint import save_weights
from panoptic_ros.config import config_from_dict
from panoptic_ros.datasets import CamVid
from panoptic_ros.evaluate_bag import main as evaluate_bag
from panoptic_ros.evaluation import main as evaluation_main
from panoptic_ros.evaluation import search_bandwidths
from panoptic_ros.make_bag import main as make_bag
from panoptic_ros.models import build_model
from panoptic_ros.predictor import Predictor

EXTRA = {"dcme": {}, "bridging": {"thing_classes": [8, 9, 10]}}


@pytest.fixture(scope="module", params=list(EXTRA))
def weights(request, tmp_path_factory):
    """A tiny untrained PanoNet of the decoder, biased towards cars."""
    cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1],
                                      "instance_decoder": request.param, **EXTRA[request.param]},
                            "postprocess": {"min_instance_pixels": 1}})
    torch.manual_seed(0)
    model = build_model("panonet", **cfg.model.kwargs())
    with torch.no_grad():
        model.semantic_decoder.head.bias[8] = 2.0
    return request.param, save_weights(model, cfg, tmp_path_factory.mktemp("w") / f"{request.param}.safetensors")


def test_bag_and_dataset_evaluators_score_a_decoder_weights_file(weights, toy_camvid, tmp_path, monkeypatch):
    decoder, path = weights
    make_bag(["--dataset", "camvid", "--root", str(toy_camvid), "--split", "val", "--out", str(tmp_path / "toy.mcap")])
    assert evaluate_bag([str(tmp_path / "toy.mcap"), "--weights", str(path), "--out", str(tmp_path / "bag"),
                         "--device", "cpu", "--backend", "eager"]) == 0
    report = json.loads((tmp_path / "bag" / "report.json").read_text())
    assert report["images"] == 4 and report["run"]["mode"] == "fast" and report["run"]["instance_decoder"] == decoder
    assert set(report["latency_ms"]) == {"preprocess", "model", "clustering", "merge", "total"}
    assert set(report["instance_ap"]["per_class"]) == {"car", "pedestrian", "bicyclist"}

    monkeypatch.setattr(sys, "argv", ["evaluation", "evaluate", "--root", str(toy_camvid), "--split", "val",
                                      "--weights", str(path), "--device", "cpu", "--backend", "eager",
                                      "--out", str(tmp_path / "data")])
    evaluation_main()
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    assert report["images"] == 4 and report["run"]["instance_decoder"] == decoder
    assert f"- instance_decoder: {decoder}" in (tmp_path / "data" / "report.md").read_text()


def test_the_bandwidth_search_refuses_a_decoder_without_mean_shift(weights, toy_camvid):
    decoder, path = weights
    with pytest.raises(ValueError, match=f"is a {decoder} decoder: it has no mean-shift bandwidths to search"):
        search_bandwidths(Predictor.from_weights(path, device="cpu", backend="eager"), CamVid(toy_camvid, "val"),
                          candidates=(0.5,))
