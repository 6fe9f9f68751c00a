"""benchmarks.train_step on a tiny PanopticFPN and generated data: one timed step per precision, after a warm-up."""

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
