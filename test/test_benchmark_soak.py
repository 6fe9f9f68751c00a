"""The node soak (issue #12, item 9): its frame plan, bad frames and diagnostics parsing, and a short run through a
node process that must count every frame and survive."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.serialization import serialize_message

from benchmarks.soak import BAD_FRAMES, RESOLUTIONS, FrameFactory, camera_counters, cdr_stamp_ns, plan_frames
from panoptic_ros.images import ImageError, image_to_rgb
from panoptic_ros.predictor import DEFAULT_WEIGHTS

ROOT = Path(__file__).resolve().parent.parent


def test_plan_mixes_sizes_and_encodings_with_bad_frames_away_from_the_ends():
    plan = plan_frames(2000)
    assert plan == plan_frames(2000)  # seeded: every run sends the same sequence
    bad = [k for k, p in enumerate(plan) if p.bad]
    assert 0.03 < len(bad) / len(plan) < 0.07 and set(plan[k].bad for k in bad) == set(BAD_FRAMES)
    assert min(bad) >= 10 and max(bad) < len(plan) - 10
    good = [p for p in plan if not p.bad]
    assert {(p.width, p.height) for p in good} == {(w, h) for w, h, _ in RESOLUTIONS}
    assert len({p.encoding for p in good}) >= 8 and any(p.padding for p in good)


def test_good_frames_decode_and_bad_frames_fail_with_the_kind_the_node_counts():
    factory = FrameFactory()
    kinds = Counter()
    for k, plan in enumerate(plan_frames(600)):
        msg = factory.message(plan, k)
        if plan.bad:
            with pytest.raises(ImageError) as error:
                image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data))
            assert error.value.kind == BAD_FRAMES[plan.bad]
            kinds[error.value.kind] += 1
        else:
            rgb = image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data))
            assert rgb.shape == (plan.height, plan.width, 3) and rgb.std() > 10  # the sample frame, not a blank one
    assert set(kinds) == set(BAD_FRAMES.values())


def test_counters_are_read_from_the_node_status_whatever_else_it_holds():
    def status(name, level, **values):
        return DiagnosticStatus(level=bytes([level]), name=name, message="m", hardware_id=name.split(":")[0],
                                values=[KeyValue(key=k, value=v) for k, v in values.items()])

    msg = DiagnosticArray(status=[
        status("other_node: image", 0, received="99"),
        status("soak_panoptic_node: model", 0, model="panonet"),
        status("soak_panoptic_node: image", 1, **{"received": "10", "processed": "4", "dropped": "3",
                                                  "lost_in_transport": "1", "rejected": "2", "rejected.data": "2",
                                                  "input_rate_hz": "29.90", "some.new_key": "x"})])
    found = camera_counters(msg, "soak_panoptic_node")
    assert found["level"] == 1 and found["counters"] == {"received": 10, "processed": 4, "dropped": 3,
                                                         "lost_in_transport": 1, "rejected": 2, "rejected.data": 2}
    assert camera_counters(DiagnosticArray(), "soak_panoptic_node") is None


def test_stamp_is_read_from_the_serialised_header():
    msg = FrameFactory().message(plan_frames(30)[0], 0)
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1_700_000_123, 456_789
    assert cdr_stamp_ns(serialize_message(msg)) == 1_700_000_123_000_456_789


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.exists(), reason="no shipped weights")
def test_quick_soak_counts_every_frame_and_the_node_survives(tmp_path):
    """300 frames at 30 Hz into a node process (about 40 s on 2 cores): the soak's own checks must all pass."""
    env = {**os.environ, "PANOPTIC_ROS_BENCH_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "benchmarks.soak", "--quick", "--log-dir", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=240)
    result = json.loads((tmp_path / "soak-cpu.json").read_text()) if (tmp_path / "soak-cpu.json").exists() else {}
    assert run.returncode == 0 and result.get("passed"), (run.stdout[-3000:], run.stderr[-3000:],
                                                          (tmp_path / "node.log").read_text()[-3000:])
    node, frames = result["node"], result["frames"]
    assert frames["sent"] == 300
    assert node["processed"] + node["dropped"] + node["lost_in_transport"] + node["rejected"] == 300
    assert node["received"] + node["lost_in_transport"] == 300
    assert 0 < node["rejected"] <= sum(frames["bad"].values())
    assert result["node_alive_at_end"] and result["node_exit_code"] == 0
    assert [c["accepted"] for c in result["parameter_changes"]] == [[True], [True, True], [False], [True],
                                                                    [True] * 4]
    # the outputs switched off midway stopped (a frame or two in flight aside) and came back
    by_phase = result["outputs_received_by_phase"]
    phases = list(by_phase["panoptic"])  # start, then one per change
    assert len(phases) == 6
    assert sum(by_phase["overlay"].get(phase, 0) for phase in phases[2:5]) <= 3
    assert by_phase["overlay"].get(phases[5], 0) > 0 and by_phase["semantic"].get(phases[5], 0) > 0
    series = result["time_series"]
    assert len(series) >= 5 and all(s["rss_mb"] > 0 and s["threads"] > 0 for s in series)
    assert (tmp_path / "soak-cpu.md").read_text().startswith("# Node soak")
