"""benchmarks.train_step on a tiny PanopticFPN and generated data: one timed step per precision, after a warm-up."""

import pytest

from benchmarks.train_step import measure
from panoptic_ros.config import config_from_dict


def test_measure_times_each_precision_in_turn(toy_camvid, tiny_fpn, capsys):
    cfg = config_from_dict({"model": tiny_fpn, "data": {"root": str(toy_camvid), "crop": [64, 96], "batch_size": 2},
                            "train": {"stage": "detector", "optimizer": "adamw"}})
    times = measure(cfg, steps=1)
    assert set(times) == {"fp32", "bf16"} and all(len(t) == 1 and t[0] > 0 for t in times.values())
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["step 0 (warm-up) fp32", "step 0 (warm-up) bf16",
                                                         "step 1 fp32", "step 1 bf16"]


def test_a_non_finite_loss_stops_the_measurement(toy_camvid, tiny_fpn, monkeypatch):
    """A diverged model's steps are not training steps: the results at 4eae349 timed bf16 steps after a NaN loss
    (1.04 s; 1.72 s once the loss stayed finite). Without the check this measures and returns."""
    import math

    import benchmarks.train_step as bench

    losses_of, logits_of = bench.TRAINING["panoptic_fpn"]

    def nan_in_bf16(model, batch, cfg, weights, amp):
        losses = losses_of(model, batch, cfg, weights, amp)
        return {**losses, "total": losses["total"] * math.nan} if amp is not None else losses

    monkeypatch.setitem(bench.TRAINING, "panoptic_fpn", (nan_in_bf16, logits_of))
    cfg = config_from_dict({"model": tiny_fpn, "data": {"root": str(toy_camvid), "crop": [64, 96], "batch_size": 2},
                            "train": {"stage": "detector", "optimizer": "adamw"}})
    with pytest.raises(FloatingPointError, match="step 0 bf16: loss is nan"):
        measure(cfg, steps=1)


def test_committed_results_hold_their_medians_and_ratio():
    import json
    import statistics
    from pathlib import Path

    for stage in ("detector", "full"):
        path = Path(__file__).parents[1] / "benchmarks" / "results" / f"train_step-panoptic_fpn-{stage}-cpu.json"
        result = json.loads(path.read_text())
        assert result["stage"] == stage and result["batch_size"] == 4 and result["crop"] == [360, 480]
        for precision, seconds in result["seconds_per_step"].items():
            assert len(seconds) == result["steps"] and result["median_seconds"][precision] == statistics.median(seconds)
        assert f"bf16 / fp32: {result['median_seconds']['bf16'] / result['median_seconds']['fp32']:.2f}" in (
            path.with_suffix(".md").read_text())
