"""Serving machinery of the node, without ROS: the one-slot drop-oldest frame buffers, rolling statistics, the
per-kind throttle for error logs, and the health summary that becomes ``/diagnostics``.

camera_calibration's pattern: callbacks only put the newest frame in a slot (replacing an unprocessed one, which
is counted as dropped); one worker takes the waiting frames oldest-first, so a slow model never works on stale
frames and several cameras are served in turn.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from .evaluation import percentiles


class FrameSlots:
    """One slot per key (camera); ``put`` replaces what the slot holds (and says so: the caller counts the drop),
    ``take`` returns the earliest-filled slot."""

    def __init__(self):
        self._cond = threading.Condition()
        self._items: dict[str, object] = {}  # insertion order = arrival order of the frames waiting
        self._closed = False

    def put(self, key: str, item: object) -> bool:
        """Store ``item`` for ``key``; True if it replaced a frame that was never processed (a drop)."""
        with self._cond:
            replaced = self._items.pop(key, None) is not None
            self._items[key] = item
            self._cond.notify()
        return replaced

    def take(self, timeout: float | None = None) -> tuple[str, object] | None:
        """Wait up to ``timeout`` s for a frame; None on timeout or after :meth:`close`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, timeout) or self._closed:
                return None
            key = next(iter(self._items))
            return key, self._items.pop(key)

    def close(self) -> None:
        """Wake and stop every ``take``; frames still waiting are discarded."""
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()


class SequenceGaps:
    """Frames lost before the node could see them (in transport, or overwritten in the reader's keep-last-1
    history): gaps in each publisher's sequence numbers."""

    def __init__(self):
        self._last: dict[object, int] = {}

    def update(self, publisher: object, sequence: int | None) -> int:
        """Record ``sequence`` from ``publisher``; the number of frames missing just before it. ``publisher`` None:
        the publisher cannot be told apart (several publishers, no ``publisher_gid`` in rclpy's MessageInfo before
        Kilted), so nothing is counted and the numbering starts over."""
        if publisher is None:
            self._last.clear()
            return 0
        if not sequence:  # the middleware does not number messages
            return 0
        last = self._last.get(publisher)
        gap = sequence - last - 1 if last is not None and sequence > last else 0
        self._last[publisher] = sequence
        return gap


class RateMeter:
    """Events per second over the last ``horizon`` seconds."""

    def __init__(self, horizon: float = 5.0):
        self.horizon = horizon
        self._times: deque[float] = deque()
        self._start = time.monotonic()

    def tick(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float) -> float:
        while self._times and self._times[0] < now - self.horizon:
            self._times.popleft()
        span = min(self.horizon, now - self._start)
        return len(self._times) / span if span > 0 else 0.0


class ErrorThrottle:
    """Counts rejected frames by kind; :meth:`record` says whether to log now: the first of a kind, then at most
    once per ``period`` seconds (with how many were not logged)."""

    def __init__(self, period: float = 10.0):
        self.period = period
        self.counts: Counter[str] = Counter()
        self._logged: dict[str, tuple[float, int]] = {}  # kind -> (time, count) at the last log

    def record(self, kind: str, now: float) -> str | None:
        """Count one ``kind``; a suffix for the log line (``""`` or ``" (N more since ...)"``) or None to stay quiet."""
        self.counts[kind] += 1
        last = self._logged.get(kind)
        if last is not None and now - last[0] < self.period:
            return None
        self._logged[kind] = (now, self.counts[kind])
        skipped = self.counts[kind] - 1 - (last[1] if last else 0)
        return f" ({skipped} more since the last report)" if skipped else ""


@dataclass
class CameraStats:
    """Statistics of one camera stream since activation. Counters: ``received`` frames, and what became of them:
    ``processed``, ``dropped`` (replaced in the node's slot before processing), ``rejected`` (malformed or failed),
    ``lost`` (never reached the node: sequence gaps). ``recent`` holds the outcome of the last ``window`` frames,
    ``latency`` the ms per stage of the last ``window`` processed ones."""

    window: int = 100
    started: float = field(default_factory=time.monotonic)
    received: int = 0
    processed: int = 0
    dropped: int = 0
    rejected: int = 0
    lost: int = 0
    last_input: float | None = None
    input_rate: RateMeter = field(default_factory=RateMeter)
    output_rate: RateMeter = field(default_factory=RateMeter)
    latency: dict[str, deque] = field(default_factory=dict)
    recent: deque = field(default_factory=deque)

    def __post_init__(self):
        self.recent = deque(maxlen=self.window)

    def record_input(self, now: float) -> None:
        self.received += 1
        self.last_input = now
        self.input_rate.tick(now)

    def record_output(self, now: float, timings_ms: dict[str, float]) -> None:
        self.processed += 1
        self.recent.append("processed")
        self.output_rate.tick(now)
        for stage, ms in timings_ms.items():
            self.latency.setdefault(stage, deque(maxlen=self.window)).append(ms)

    def record_dropped(self) -> None:
        self.dropped += 1
        self.recent.append("dropped")

    def record_rejected(self) -> None:
        self.rejected += 1
        self.recent.append("rejected")

    def record_lost(self, count: int) -> None:
        self.lost += count
        self.recent.extend(["lost"] * min(count, self.window))


@dataclass
class Status:
    """One health entry: level 0 OK, 1 WARN, 2 ERROR, 3 STALE (diagnostic_msgs/DiagnosticStatus), message, key
    values."""

    level: int
    name: str
    message: str
    values: dict[str, str]


OK, WARN, ERROR, STALE = 0, 1, 2, 3
#: ERROR needs at least this many rejected frames in the window and none processed: one bad frame is only counted.
MIN_REJECTED_FOR_ERROR = 3


def camera_status(name: str, stats: CameraStats, errors: Counter, now: float, *, expected_rate_hz: float = 0.0,
                  max_drop_ratio: float = 0.0, stale_after: float = 0.0, min_rate_hz: float = 0.0,
                  max_latency_ms: float = 0.0) -> Status:
    """Health of one camera; a bound of 0 is off. The first that holds of:

    - STALE: no frame for ``stale_after`` seconds (since activation, if none came yet);
    - ERROR: of the last ``window`` frames, at least ``MIN_REJECTED_FOR_ERROR`` were rejected and none processed;
    - WARN: the input rate is under ``expected_rate_hz``, the share of the last ``window`` frames dropped or lost
      is over ``max_drop_ratio``, the output rate is under ``min_rate_hz`` while frames arrive, or the p90 of the
      total latency is over ``max_latency_ms``;
    - OK.
    """
    in_rate, out_rate = stats.input_rate.rate(now), stats.output_rate.rate(now)
    latency = {stage: percentiles(v) for stage, v in stats.latency.items()}
    recent = Counter(stats.recent)
    values = {"input_rate_hz": f"{in_rate:.2f}", "output_rate_hz": f"{out_rate:.2f}", "received": str(stats.received),
              "processed": str(stats.processed), "dropped": str(stats.dropped), "lost_in_transport": str(stats.lost),
              "rejected": str(stats.rejected), **{f"rejected.{kind}": str(n) for kind, n in sorted(errors.items())},
              **{f"latency_ms.{stage}.{p}": f"{v:.1f}" for stage, ps in latency.items() for p, v in ps.items()
                 if p in ("p50", "p90", "p99")}}
    idle = now - (stats.started if stats.last_input is None else stats.last_input)
    if stale_after and idle > stale_after:
        since = "since activation" if stats.last_input is None else "since the last one"
        return Status(STALE, name, f"no image for {idle:.1f} s ({since})", values)
    if recent["rejected"] >= MIN_REJECTED_FOR_ERROR and not recent["processed"]:
        kinds = ", ".join(f"{kind} {n}" for kind, n in errors.most_common())
        return Status(ERROR, name, f"every frame rejected: the last {recent['rejected']} ({kinds})", values)
    problems = []
    if expected_rate_hz and in_rate < expected_rate_hz:
        problems.append(f"input rate {in_rate:.1f} Hz below the expected {expected_rate_hz:g} Hz")
    lost = recent["dropped"] + recent["lost"]
    if max_drop_ratio and stats.recent and lost / len(stats.recent) > max_drop_ratio:
        problems.append(f"{lost} of the last {len(stats.recent)} frames dropped or lost (above {max_drop_ratio:.0%})")
    if min_rate_hz and in_rate > 0 and out_rate < min_rate_hz:
        problems.append(f"output rate {out_rate:.1f} Hz below {min_rate_hz:g} Hz")
    total_p90 = latency.get("total", {}).get("p90")
    if max_latency_ms and total_p90 is not None and total_p90 > max_latency_ms:
        problems.append(f"p90 latency {total_p90:.0f} ms above {max_latency_ms:g} ms")
    if problems:
        return Status(WARN, name, "; ".join(problems), values)
    message = "waiting for images" if not stats.received else f"{out_rate:.1f} Hz, {stats.dropped} dropped"
    return Status(OK, name, message, values)
