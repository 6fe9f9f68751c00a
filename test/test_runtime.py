"""Frame slots, rates, throttled error counts and the health summary of the node, without ROS."""

import threading
import time
from collections import Counter

import numpy as np

from panoptic_ros.runtime import (ERROR, MIN_REJECTED_FOR_ERROR, OK, STALE, WARN, CameraStats, ErrorThrottle, FrameSlots,
                                  RateMeter, SequenceGaps, camera_status)


def test_a_slot_keeps_only_the_newest_frame_and_counts_drops():
    slots = FrameSlots()
    assert slots.put("front", 1) is False
    assert slots.put("front", 2) is True
    assert slots.put("front", 3) is True
    assert slots.take(0) == ("front", 3)
    assert slots.take(0.01) is None


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


def steady(stats: CameraStats, frames: int, period: float = 0.1) -> None:
    for k in range(frames):
        stats.record_input(k * period)
        stats.record_output(k * period, {"model": 50.0, "total": 120.0})


def test_camera_status_warns_on_rate_and_latency_bounds():
    stats = CameraStats(window=10, started=0.0)
    stats.input_rate._start = stats.output_rate._start = 0.0
    steady(stats, 10)
    stats.dropped = 3
    ok = camera_status("cam", stats, Counter(step=2), 1.0)
    assert ok.level == OK and ok.values["dropped"] == "3" and ok.values["rejected.step"] == "2"
    assert ok.values["latency_ms.total.p90"] == "120.0"
    slow = camera_status("cam", stats, Counter(), 1.0, min_rate_hz=30, max_latency_ms=100)
    assert slow.level == WARN and "below 30 Hz" in slow.message and "above 100 ms" in slow.message
    # exactly at a bound is still OK: 10 frames in 1 s is 10 Hz, latency p90 120 ms
    assert camera_status("cam", stats, Counter(), 1.0, expected_rate_hz=10, max_latency_ms=120).level == OK
    late = camera_status("cam", stats, Counter(), 1.0, expected_rate_hz=10.5)
    assert late.level == WARN and "input rate 10.0 Hz below the expected 10.5 Hz" in late.message


def test_camera_status_warns_on_drops_above_the_ratio():
    stats = CameraStats(window=10, started=0.0)
    steady(stats, 5)
    for _ in range(3):
        stats.record_dropped()
    stats.record_lost(2)  # 5 of the last 10 frames dropped or lost
    assert camera_status("cam", stats, Counter(), 0.5, max_drop_ratio=0.5).level == OK
    warn = camera_status("cam", stats, Counter(), 0.5, max_drop_ratio=0.4)
    assert warn.level == WARN and "5 of the last 10 frames dropped or lost" in warn.message
    assert warn.values["dropped"] == "3" and warn.values["lost_in_transport"] == "2"


def test_camera_status_is_error_when_every_recent_frame_is_rejected():
    stats = CameraStats(window=4, started=0.0)
    steady(stats, 1)
    for k in range(3):
        stats.record_input(1 + k)
        stats.record_rejected()
    assert camera_status("cam", stats, Counter(encoding=3), 3.0).level == OK  # a processed frame in the window
    stats.record_input(4)
    stats.record_rejected()  # the window now holds four rejections
    error = camera_status("cam", stats, Counter(encoding=4), 4.0)
    assert error.level == ERROR and "every frame rejected" in error.message and "encoding 4" in error.message
    few = CameraStats(window=4, started=0.0)
    for _ in range(MIN_REJECTED_FOR_ERROR - 1):
        few.record_rejected()
    assert camera_status("cam", few, Counter(step=2), 0.0).level == OK


def test_camera_status_is_stale_without_input():
    stats = CameraStats(window=4, started=10.0)
    assert camera_status("cam", stats, Counter(), 12.0, stale_after=2.0).level == OK  # exactly at the bound
    never = camera_status("cam", stats, Counter(), 12.5, stale_after=2.0)
    assert never.level == STALE and never.message == "no image for 2.5 s (since activation)"
    stats.record_input(20.0)
    stats.record_output(20.0, {"total": 1.0})
    assert camera_status("cam", stats, Counter(), 21.0, stale_after=2.0).level == OK
    dead = camera_status("cam", stats, Counter(), 25.0, stale_after=2.0)
    assert dead.level == STALE and "no image for 5.0 s (since the last one)" in dead.message
    assert camera_status("cam", stats, Counter(), 25.0).level == OK  # 0 = off


def test_sequence_gaps_count_frames_lost_before_the_node():
    gaps = SequenceGaps()
    assert [gaps.update("a", n) for n in (1, 2, 5, 6)] == [0, 0, 2, 0]
    assert gaps.update("b", 1) == 0 and gaps.update("b", 3) == 1  # publishers are numbered apart
    assert gaps.update("a", 2) == 0 and gaps.update("a", 3) == 0  # a restarted publisher
    assert gaps.update("a", None) == 0
    assert gaps.update(None, 9) == 0 and gaps.update("a", 9) == 0  # an unknown publisher resets the numbering


def test_rate_meter_counts_events_exactly_at_the_horizon_and_the_time_since_start():
    """Kills ``_times[0] <= now - horizon`` (the event exactly one horizon old is dropped: 2.0 Hz instead of 2.5) and
    ``span = max(...)``/a span of ``horizon`` before ``horizon`` seconds have passed (1.5 Hz instead of 3.0)."""
    meter = RateMeter(horizon=2.0)
    meter._start = 0.0
    for t in (0.0, 0.5, 1.0):
        meter.tick(t)
    assert meter.rate(1.0) == 3.0  # 3 events in the 1 s since the start
    for t in (1.5, 2.0):
        meter.tick(t)
    assert meter.rate(2.0) == 2.5  # the event at 0.0 is exactly 2 s old: still inside
    assert meter.rate(2.25) == 2.0  # now it is not
    late = RateMeter(horizon=2.0)  # started at 10 s: kills ``now + _start``
    late._start = 10.0
    late.tick(10.0)
    assert late.rate(10.0) == 0.0  # no time has passed yet (a zero span divides by nothing)
    late.tick(10.5)
    assert late.rate(10.5) == 4.0 and late.rate(11.0) == 2.0
    default = RateMeter()  # a 5 s horizon: 6 of 11 events in the last 5 s
    default._start = 0.0
    for t in range(11):
        default.tick(float(t))
    assert default.rate(10.0) == 6 / 5


def test_error_throttle_logs_again_exactly_one_period_later():
    """Kills ``now - last < period`` -> ``<=`` (quiet at exactly one period) and a miscount of the skipped ones."""
    throttle = ErrorThrottle(period=10)
    assert throttle.record("step", 5.0) == ""
    assert throttle.record("step", 6.0) is None
    assert throttle.record("step", 15.0) == " (1 more since the last report)"
    assert throttle.record("step", 25.0) == ""
    default = ErrorThrottle()  # a 10 s period
    assert default.record("step", 0.0) == "" and default.record("step", 9.9) is None
    assert default.record("step", 10.0) == " (1 more since the last report)"


def test_a_repeated_sequence_number_is_no_gap():
    """Kills ``sequence > last`` -> ``>=`` (a repeated number would count -1 frames lost)."""
    gaps = SequenceGaps()
    assert gaps.update("a", 4) == 0 and gaps.update("a", 4) == 0 and gaps.update("a", 6) == 1


def varied(stats: CameraStats, now: float = 1.0) -> None:
    """100 processed frames in ``now`` seconds with total latencies 1, 2, ..., 100 ms (model 100 ms more)."""
    for k in range(100):
        stats.record_input(k * now / 100)
        stats.record_output(k * now / 100, {"model": k + 101.0, "total": k + 1.0})


def test_latency_percentiles_are_reported_per_stage_and_the_p90_is_bounded():
    """With varied latencies p50, p90 and p99 differ (numpy's linear percentiles of 1..100: 50.5, 90.1, 99.01), so
    swapping or renaming any of them fails; the bound is on the p90 (90.1 ms): kills ``.get("p90")`` mutants and
    ``total_p90 >= max_latency_ms``-style boundaries (a bound of exactly the p90 is OK)."""
    stats = CameraStats(window=100, started=0.0)
    stats.input_rate._start = stats.output_rate._start = 0.0
    varied(stats)
    status = camera_status("cam", stats, Counter(), 1.0)
    latency = {k: v for k, v in status.values.items() if k.startswith("latency_ms.")}
    assert latency == {"latency_ms.model.p50": "150.5", "latency_ms.model.p90": "190.1", "latency_ms.model.p99": "199.0",
                       "latency_ms.total.p50": "50.5", "latency_ms.total.p90": "90.1", "latency_ms.total.p99": "99.0"}
    assert camera_status("cam", stats, Counter(), 1.0, max_latency_ms=91).level == OK
    high = camera_status("cam", stats, Counter(), 1.0, max_latency_ms=90)
    assert high.level == WARN and high.message == "p90 latency 90 ms above 90 ms"
    p90 = float(np.percentile(np.arange(1, 101), 90))
    assert camera_status("cam", stats, Counter(), 1.0, max_latency_ms=p90).level == OK


def unequal_rates(stats: CameraStats) -> None:
    """Input at 10 Hz for 1 s, of which every other frame is processed (output 5 Hz), the others dropped."""
    stats.input_rate._start = stats.output_rate._start = 0.0
    for k in range(10):
        stats.record_input(k * 0.1)
        if k % 2:
            stats.record_output(k * 0.1, {"total": 10.0})
        else:
            stats.record_dropped()


def test_rate_warnings_tell_the_input_rate_from_the_output_rate():
    """Input 10 Hz, output 5 Hz: ``min_rate_hz`` is checked against the output rate and ``expected_rate_hz`` against
    the input rate; kills mutants that swap the two rates or their comparisons."""
    stats = CameraStats(window=10, started=0.0)
    unequal_rates(stats)
    status = camera_status("cam", stats, Counter(), 1.0)
    assert (status.values["input_rate_hz"], status.values["output_rate_hz"]) == ("10.00", "5.00")
    assert status.message == "5.0 Hz, 5 dropped"
    assert camera_status("cam", stats, Counter(), 1.0, expected_rate_hz=8, min_rate_hz=5).level == OK
    slow_out = camera_status("cam", stats, Counter(), 1.0, min_rate_hz=8)
    assert slow_out.level == WARN and slow_out.message == "output rate 5.0 Hz below 8 Hz"
    slow_in = camera_status("cam", stats, Counter(), 1.0, expected_rate_hz=12)
    assert slow_in.level == WARN and slow_in.message == "input rate 10.0 Hz below the expected 12 Hz"
    both = camera_status("cam", stats, Counter(), 1.0, expected_rate_hz=12, min_rate_hz=8)
    assert both.message == "input rate 10.0 Hz below the expected 12 Hz; output rate 5.0 Hz below 8 Hz"


def test_no_output_rate_warning_without_input_and_one_below_1_hz():
    """``min_rate_hz`` applies only while frames arrive: kills ``in_rate >= 0`` (a warning with no input at all)
    and ``in_rate > 1`` (no warning for a 0.5 Hz input that is never served)."""
    idle = CameraStats(window=10, started=0.0)
    idle.input_rate._start = idle.output_rate._start = 0.0
    assert camera_status("cam", idle, Counter(), 2.0, min_rate_hz=1).level == OK
    trickle = CameraStats(window=10, started=0.0)
    trickle.input_rate._start = trickle.output_rate._start = 0.0
    trickle.record_input(1.0)
    trickle.record_dropped()
    warn = camera_status("cam", trickle, Counter(), 2.0, min_rate_hz=0.25)
    assert warn.level == WARN and warn.message == "output rate 0.0 Hz below 0.25 Hz"


def test_status_values_name_and_messages_in_every_level():
    """The whole status, every key and counter, for OK, ERROR (exactly ``MIN_REJECTED_FOR_ERROR`` rejections) and
    STALE: kills the mutants that rename or blank a key, the status name or a message, that set a counter instead
    of adding to it, that compare ``recent["rejected"] > MIN_REJECTED_FOR_ERROR`` and that let the latency window
    grow past ``window``."""
    stats = CameraStats(window=3, started=0.0)
    stats.input_rate._start = stats.output_rate._start = 0.0
    for k, total in enumerate((1.0, 2.0, 30.0, 40.0, 50.0)):  # only the last three stay in the window
        stats.record_input(k * 0.5)
        stats.record_output(k * 0.5, {"total": total})
    stats.record_input(2.5)
    stats.record_dropped()
    stats.record_lost(1)
    stats.record_lost(2)
    stats.record_input(2.5)
    stats.record_rejected()
    ok = camera_status("front", stats, Counter(step=1), 2.5)
    assert (ok.level, ok.name, ok.message) == (OK, "front", "2.0 Hz, 1 dropped")
    assert ok.values == {"input_rate_hz": "2.80", "output_rate_hz": "2.00", "received": "7", "processed": "5",
                         "dropped": "1", "lost_in_transport": "3", "rejected": "1", "rejected.step": "1",
                         "latency_ms.total.p50": "40.0", "latency_ms.total.p90": "48.0", "latency_ms.total.p99": "49.8"}
    warn = camera_status("front", stats, Counter(), 2.5, expected_rate_hz=3, min_rate_hz=2.5)
    assert (warn.level, warn.name) == (WARN, "front")
    assert warn.message == "input rate 2.8 Hz below the expected 3 Hz; output rate 2.0 Hz below 2.5 Hz"
    waiting = camera_status("rear", CameraStats(window=3, started=0.0), Counter(), 0.0)
    assert (waiting.level, waiting.name, waiting.message) == (OK, "rear", "waiting for images")

    stats.record_rejected()
    stats.record_rejected()  # the window of 3 now holds exactly MIN_REJECTED_FOR_ERROR rejections
    assert MIN_REJECTED_FOR_ERROR == 3
    error = camera_status("front", stats, Counter(step=2, encoding=1), 2.5)
    assert (error.level, error.name) == (ERROR, "front")
    assert error.message == "every frame rejected: the last 3 (step 2, encoding 1)" and error.values["rejected"] == "3"

    stale = camera_status("front", stats, Counter(), 10.0, stale_after=5.0)
    assert (stale.level, stale.name, stale.message) == (STALE, "front", "no image for 7.5 s (since the last one)")
    assert stale.values["received"] == "7"


def test_default_bounds_are_off():
    """``camera_status`` without bounds never warns, even when frames arrive and none is served (kills a default
    ``min_rate_hz`` of 1.0)."""
    stats = CameraStats(window=10, started=0.0)
    stats.input_rate._start = stats.output_rate._start = 0.0
    for k in range(10):
        stats.record_input(k * 0.1)
        stats.record_dropped()
    assert camera_status("cam", stats, Counter(), 1.0).level == OK
