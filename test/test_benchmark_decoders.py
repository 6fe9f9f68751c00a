"""benchmarks.decoders (issue #13's comparison table) on three tiny untrained PanoNets, one per instance decoder, and
the toy CamVid: its accuracy columns are the project's evaluator's numbers for each file, its latency columns add
up the Predictor's stages, and the committed table holds the same checks."""

import json
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import decoders
from panoptic_ros.checkpoint import save_weights
from panoptic_ros.config import config_from_dict
from panoptic_ros.datasets import CamVid
from panoptic_ros.evaluation import evaluate
from panoptic_ros.models import build_model
from panoptic_ros.predictor import Predictor

EXTRA = {"embedding": {}, "dcme": {}, "bridging": {"thing_classes": [8, 9, 10]}}
RESULTS = Path(__file__).parents[1] / "benchmarks" / "results" / "decoders-cpu.json"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny untrained PanoNet per decoder, biased towards cars (so that things are found)."""
    paths = []
    for decoder, extra in EXTRA.items():
        cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1],
                                          "instance_decoder": decoder, **extra},
                                "postprocess": {"min_instance_pixels": 1}})
        torch.manual_seed(0)
        model = build_model("panonet", **cfg.model.kwargs())
        with torch.no_grad():
            model.semantic_decoder.head.bias[8] = 2.0
        paths.append(save_weights(model, cfg, tmp_path_factory.mktemp("w") / f"{decoder}.safetensors"))
    return paths


def check_result(result: dict) -> None:
    """What a decoders result file holds whatever the machine: rows of all three decoders, the post-processing and
    total columns the sums of the Predictor's stage medians, accuracy as fractions of the images scored."""
    assert {row["decoder"] for row in result["results"].values()} == {"bridging", "dcme", "embedding"}
    assert result["resolutions"] == (["160x128"] if result["quick"] else ["480x360", "1024x512"])
    for row in result["results"].values():
        assert list(row["latency"]) == result["resolutions"]
        for run in row["latency"].values():
            median = run["median_ms"]
            assert set(median) == {"preprocess", "model", "clustering", "merge"} and run["frames"] >= 5
            assert run["postprocess_ms"] == pytest.approx(median["clustering"] + median["merge"])
            assert run["total_ms"] == pytest.approx(sum(median.values()))
        assert ("accuracy" in row) == bool(result["dataset"])
        if "accuracy" in row:
            assert set(row["accuracy"]) == {"images", *decoders.METRICS} and row["accuracy"]["images"] >= 1
            assert all(0 <= row["accuracy"][k] <= 1 for k in decoders.METRICS)


def test_the_table_holds_the_evaluator_numbers_of_each_decoder(weights, toy_camvid, tmp_path, monkeypatch):
    monkeypatch.setenv("PANOPTIC_ROS_BENCH_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["decoders", "--quick", "--backend", "eager", "--root", str(toy_camvid),
                                      "--weights", *map(str, weights)])
    decoders.main()
    result = json.loads((tmp_path / "decoders-cpu.json").read_text())
    check_result(result)
    assert result["dataset"] == "camvid val"
    for path in weights:
        row = result["results"][str(path)]
        assert row["decoder"] == path.stem and row["weights"] == str(path) and row["backend"] == "eager"
        found = evaluate(Predictor.from_weights(path, device="cpu", backend="eager"), CamVid(toy_camvid, "val"))
        pq = found["panoptic"]
        assert row["accuracy"] == {"images": 4, "pq": pq["all"]["pq"], "pq_things": pq["things"]["pq"],
                                   "pq_stuff": pq["stuff"]["pq"], "ap": found["instance_ap"]["ap"],
                                   "ap50": found["instance_ap"]["ap50"], "miou": found["miou"]}


def test_each_column_holds_its_metric(weights, toy_camvid, tmp_path, monkeypatch):
    """Distinct evaluator numbers (the tiny models score 0 almost everywhere) land in their own JSON keys and
    Markdown columns, as percentages."""
    found = {"images": 4, "miou": 0.61, "panoptic": {"all": {"pq": 0.52}, "things": {"pq": 0.27}, "stuff": {"pq": 0.63}},
             "instance_ap": {"ap": 0.15, "ap50": 0.35}}
    monkeypatch.setattr(decoders, "evaluate", lambda predictor, dataset, limit: found)
    monkeypatch.setenv("PANOPTIC_ROS_BENCH_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["decoders", "--quick", "--backend", "eager", "--root", str(toy_camvid),
                                      "--weights", str(weights[1])])
    decoders.main()
    row = json.loads((tmp_path / "decoders-cpu.json").read_text())["results"][str(weights[1])]
    assert row["accuracy"] == {"images": 4, "pq": 0.52, "pq_things": 0.27, "pq_stuff": 0.63, "ap": 0.15, "ap50": 0.35,
                               "miou": 0.61}
    line = next(x for x in (tmp_path / "decoders-cpu.md").read_text().splitlines() if x.startswith("| dcme |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    latency = row["latency"]["160x128"]
    assert cells == ["dcme", f"`{weights[1]}`", "52.0", "27.0", "63.0", "15.0", "35.0", "61.0",
                     f"{latency['postprocess_ms']:.1f}", f"{latency['total_ms']:.1f}"]


def test_without_a_dataset_only_latency_is_measured(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("PANOPTIC_ROS_BENCH_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["decoders", "--quick", "--backend", "eager", "--weights", *map(str, weights)])
    decoders.main()
    result = json.loads((tmp_path / "decoders-cpu.json").read_text())
    check_result(result)
    assert result["dataset"] is None and "| - | - |" in (tmp_path / "decoders-cpu.md").read_text()


def test_an_accuracy_mode_file_is_refused(tiny_fpn_weights, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["decoders", "--quick", "--backend", "eager", "--weights", str(tiny_fpn_weights)])
    with pytest.raises(SystemExit, match="accuracy-mode model, not a PanoNet with an instance decoder"):
        decoders.main()


def test_the_committed_table_holds_the_checks():
    check_result(json.loads(RESULTS.read_text()))
