"""Frame slots, rates, throttled error counts and the health summary of the node, without ROS."""

import threading
import time
from collections import Counter

from panoptic_ros.runtime import OK, WARN, CameraStats, ErrorThrottle, FrameSlots, RateMeter, SequenceGaps, camera_status


def test_a_slot_keeps_only_the_newest_frame_and_counts_drops():
    slots = FrameSlots()
    assert slots.put("front", 1) is False
    assert slots.put("front", 2) is True
    assert slots.put("front", 3) is True
    assert slots.take(0) == ("front", 3)
    assert slots.take(0.01) is None
    assert slots.dropped["front"] == 2


def test_cameras_are_served_oldest_frame_first():
    slots = FrameSlots()
    slots.put("a", "a1")
    slots.put("b", "b1")
    slots.put("a", "a2")  # replaces a1: "a" now arrived after "b"
    assert [slots.take(0), slots.take(0)] == [("b", "b1"), ("a", "a2")]


def test_close_wakes_a_waiting_worker():
    slots = FrameSlots()
    result = []
    worker = threading.Thread(target=lambda: result.append(slots.take()))
    worker.start()
    time.sleep(0.05)
    slots.close()
    worker.join(2)
    assert not worker.is_alive() and result == [None]
    assert slots.put("a", 1) is False and slots.take(0) is None  # closed stays closed


def test_error_throttle_logs_first_then_once_per_period():
    throttle = ErrorThrottle(period=10)
    assert throttle.record("step", 0.0) == ""
    assert throttle.record("step", 1.0) is None
    assert throttle.record("data", 1.5) == ""
    assert throttle.record("step", 2.0) is None
    assert throttle.record("step", 11.0) == " (2 more since the last report)"
    assert throttle.counts == Counter(step=4, data=1)


def test_rate_meter():
    meter = RateMeter(horizon=2.0)
    meter._start = 0.0
    for k in range(20):
        meter.tick(k * 0.1)
    assert abs(meter.rate(2.0) - 10.0) < 0.6
    assert meter.rate(10.0) == 0.0


def test_camera_status_warns_on_rate_and_latency_bounds():
    stats = CameraStats(window=10)
    stats.input_rate._start = stats.output_rate._start = 0.0
    for k in range(10):
        stats.record_input(k * 0.1)
        stats.record_output(k * 0.1, {"model": 50.0, "total": 120.0})
    ok = camera_status("cam", stats, 3, Counter(step=2), 1.0)
    assert ok.level == OK and ok.values["dropped"] == "3" and ok.values["rejected.step"] == "2"
    assert ok.values["latency_ms.total.p90"] == "120.0"
    slow = camera_status("cam", stats, 0, Counter(), 1.0, min_rate_hz=30, max_latency_ms=100)
    assert slow.level == WARN and "below 30 Hz" in slow.message and "above 100 ms" in slow.message


def test_sequence_gaps_count_frames_lost_before_the_node():
    gaps = SequenceGaps()
    assert [gaps.update("a", n) for n in (1, 2, 5, 6)] == [0, 0, 2, 0]
    assert gaps.update("b", 1) == 0 and gaps.update("b", 3) == 1  # publishers are numbered apart
    assert gaps.update("a", 2) == 0 and gaps.update("a", 3) == 0  # a restarted publisher
    assert gaps.update("a", None) == 0 and gaps.lost == 3
