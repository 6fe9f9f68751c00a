"""Dataset evaluation and the bandwidth search run the Predictor over a dataset and report consistent numbers."""

import json
import math

import pytest

from panoptic_ros.datasets import CamVid
from panoptic_ros.evaluation import (EvaluationAccumulator, evaluate, main, markdown, search_bandwidths, search_scales,
                                     write_report)
from panoptic_ros.predictor import Predictor


@pytest.fixture
def predictor(tiny_weights):
    return Predictor.from_weights(tiny_weights, device="cpu", backend="eager"), tiny_weights


def test_evaluate_reports_metrics_and_latency(toy_camvid, predictor):
    report = evaluate(predictor[0], CamVid(toy_camvid, "val"))
    assert report["images"] == 4
    assert 0 <= report["miou"] <= 1 and set(report["iou"]) == {c.name for c in CamVid.table.classes}
    assert {"all", "things", "stuff", "per_class"} <= set(report["panoptic"])
    assert {"preprocess", "model", "clustering", "merge", "total"} == set(report["latency_ms"])
    assert set(report["instance_ap"]["per_class"]) == {"car", "pedestrian", "bicyclist"}
    text = markdown(report, "Evaluation: w on camvid val")
    assert text.startswith("# Evaluation: w on camvid val") and "| PQ |" in text and "| car |" in text


def test_report_files_are_strict_json_with_plots(toy_camvid, predictor, tmp_path):
    accumulator = EvaluationAccumulator(CamVid.table)
    report = evaluate(predictor[0], CamVid(toy_camvid, "val"), limit=2, accumulator=accumulator)
    assert report["images"] == 2 and len(accumulator.latency_ms["total"]) == 2
    paths = write_report(report, "t", tmp_path / "out", accumulator.latency_ms)
    assert [p.name for p in paths] == ["report.json", "report.md", "class_iou.png", "latency.png"]
    loaded = json.loads(paths[0].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert loaded["miou"] == pytest.approx(report["miou"])
    # classes absent from ground truth and prediction have IoU NaN: null in JSON, n/a in Markdown
    nan_classes = [n for n, v in report["iou"].items() if math.isnan(v)]
    assert nan_classes and all(loaded["iou"][n] is None for n in nan_classes)
    assert f"| {nan_classes[0]} | n/a |" in paths[1].read_text()
    assert all(p.stat().st_size > 1000 for p in paths[2:])


def test_accumulator_without_ground_truth_reports_latency_only():
    accumulator = EvaluationAccumulator(CamVid.table)
    accumulator.add_timings({"model": 2.0, "merge": 1.0})
    assert accumulator.metrics() == {"images": 0}
    assert accumulator.latency()["total"]["p50"] == 3.0
    text = markdown({**accumulator.metrics(), "latency_ms": accumulator.latency(), "device": "cpu"}, "t")
    assert "No frame had ground truth" in text and "| total | 3.0 |" in text


def test_bandwidth_search_scores_each_thing_class(toy_camvid, predictor, tmp_path):
    found = search_bandwidths(predictor[0], CamVid(toy_camvid, "val"), candidates=(0.3, 0.8))
    assert set(found["pq"]) == {"car", "pedestrian", "bicyclist"}
    assert all(set(scores) == {0.3, 0.8} for scores in found["pq"].values())
    assert set(found["best"]) == {8, 9, 10} and set(found["best"].values()) <= {0.3, 0.8}


def test_scale_search_scores_each_scale_and_writes_the_best(toy_camvid, predictor, tmp_path, monkeypatch, capsys):
    """Each candidate's figures are those of ``evaluate`` at that scale; the predictor keeps its own scale; the
    command line writes the weights with the best one, and ``Predictor.from_weights`` then runs at it unless told
    otherwise."""
    import sys

    dataset = CamVid(toy_camvid, "val")
    found = search_scales(predictor[0], dataset, candidates=(0.5, 1.0))
    assert predictor[0].scale == 1.0 and set(found["scales"]) == {0.5, 1.0}
    predictor[0].scale = 0.5
    direct = evaluate(predictor[0], dataset)
    predictor[0].scale = 1.0
    assert found["scales"][0.5]["pq"] == direct["panoptic"]["all"]["pq"]
    assert found["scales"][0.5]["miou"] == direct["miou"]
    assert found["best"] == max((0.5, 1.0), key=lambda s: (found["scales"][s]["pq"], -s))
    out = tmp_path / "scaled.safetensors"
    monkeypatch.setattr(sys, "argv", ["evaluation", "scales", "--root", str(toy_camvid), "--weights", str(predictor[1]),
                                      "--candidates", "0.5", "--write", str(out), "--backend", "eager"])
    main()
    assert "wrote" in capsys.readouterr().out
    assert Predictor.from_weights(out, device="cpu", backend="eager").scale == 0.5
    assert Predictor.from_weights(out, scale=2.0, device="cpu", backend="eager").scale == 2.0
    assert Predictor.from_weights(predictor[1], device="cpu", backend="eager").scale == 1.0  # names none
