"""Soak test of the node process: thousands of mixed frames, parameter changes midway, memory and threads watched.

Starts ``panoptic_node`` as its own process (``python -m panoptic_ros.ros.panoptic_node --ros-args -p device:=cpu
-p backend:=eager ...``, loopback only, a DDS domain of its own, the shared-memory Fast DDS profile) and publishes ``--frames`` frames
(default 10,000) at a paced ``--rate`` (default 30 Hz) from this process:

* mixed resolutions (160x120 to 1024x512) and encodings (rgb8, bgr8, mono8, mono16, both yuv422 orders, two Bayer
  patterns, rgba8, bgra8, rgb8 with padded rows), all made from the embedded sample frame with
  ``images.rgb_to_image``;
* about 5% bad frames (truncated data, unknown encoding, step too small, zero size), which the node must reject and
  count; a bad frame replaced in the node's one-frame slot before the worker saw it counts as dropped instead;
* runtime parameter changes through the node's ``set_parameters`` service midway (score threshold, input scale,
  overlay and semantic outputs off and back on, and one invalid value that must be refused).

The node serves the newest frame, so at 30 Hz a CPU node drops most frames: drops are expected and counted, not
avoided. This process subscribes to ``~/panoptic``, ``~/semantic`` and ``~/overlay`` and to ``/diagnostics``, and
samples the node's RSS, thread count and open file descriptors from ``/proc/<pid>/status`` every few seconds.

Checks (the exit status is 1 when one fails): every frame sent is counted exactly once by the node
(processed + dropped + lost_in_transport + rejected == sent, from the last diagnostics message after the last frame
was handled), the node still runs at the end and exits with 0 on SIGINT, each parameter change is accepted (the
invalid one refused), bad frames show up as rejections. Target (reported): RSS growth from the end of the warm-up
(the first 10% of frames, at most 1000) to the end under 5%.

    python -m benchmarks.soak [--frames 10000] [--rate 30] [--quick] [--sample-period 2]
"""

from __future__ import annotations

import argparse
import array
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

import panoptic_ros
from panoptic_ros.datasets import read_rgb
from panoptic_ros.evaluation import percentiles
from panoptic_ros.images import rgb_to_image

from .common import environment, report

NODE = "soak_panoptic_node"
IMAGE_TOPIC = "/soak/image"
FASTDDS_PROFILE = Path(panoptic_ros.__file__).resolve().parent / "ros" / "fastdds_shm.xml"
SAMPLES = sorted(p for p in (Path(panoptic_ros.__file__).resolve().parent / "data" / "samples").glob("*.png")
                 if not p.stem.endswith("_label"))
# (width, height, share of the good frames)
RESOLUTIONS = ((160, 120, 0.35), (320, 240, 0.35), (640, 480, 0.20), (1024, 512, 0.10))
# (encoding, bytes of padding at the end of each row)
ENCODINGS = (("rgb8", 0), ("bgr8", 0), ("mono8", 0), ("mono16", 0), ("yuv422", 0), ("yuv422_yuy2", 0),
             ("bayer_rggb8", 0), ("bayer_grbg8", 0), ("rgba8", 0), ("bgra8", 0), ("rgb8", 32))
# bad frame -> the ImageError kind the node counts it under (rejected.<kind>)
BAD_FRAMES = {"truncated data": "data", "unknown encoding": "encoding", "step too small": "step",
              "zero size": "size"}
COUNTERS = ("received", "processed", "dropped", "lost_in_transport", "rejected")
# (fraction of the run, parameters, whether the node must accept them)
PARAMETER_CHANGES = (
    (0.25, {"filter.score_threshold": 0.5}, True),
    (0.40, {"input_scale": 0.5, "output.overlay": False}, True),
    (0.50, {"input_scale": 99.0}, False),  # outside [0.05, 4]: must be refused, the run goes on at 0.5
    (0.55, {"output.semantic": False}, True),
    (0.70, {"filter.score_threshold": 0.0, "input_scale": 1.0, "output.overlay": True, "output.semantic": True},
     True),
)
OUTPUTS = ("panoptic", "semantic", "overlay")
RSS_GROWTH_TARGET_PCT = 5.0


def set_ros_environment(domain_id: int) -> None:
    """Loopback-only discovery, this tool's own DDS domain, and the shared-memory profile for large frames; the node
    process inherits them."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ["ROS_DOMAIN_ID"] = str(domain_id)
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
    os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))


# ---------------------------------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class FramePlan:
    """What frame k is: a good frame (resolution, encoding, padding) or a bad one (``bad`` names the defect)."""

    width: int = 0
    height: int = 0
    encoding: str = ""
    padding: int = 0
    bad: str = ""

    @property
    def label(self) -> str:
        return f"bad: {self.bad}" if self.bad else f"{self.width}x{self.height} {self.encoding}" + (
            f" +{self.padding} B/row" if self.padding else "")


def plan_frames(frames: int, bad_fraction: float = 0.05, seed: int = 0) -> list[FramePlan]:
    """The frame sequence: random resolutions and encodings, bad frames at ``bad_fraction``, never among the first
    and last 10 frames (the last frames must give an output, so the final counters can be read after it)."""
    rng = np.random.default_rng(seed)
    shares = np.array([r[2] for r in RESOLUTIONS])
    kinds = list(BAD_FRAMES)
    plan = []
    for k in range(frames):
        if 10 <= k < frames - 10 and rng.random() < bad_fraction:
            plan.append(FramePlan(bad=kinds[int(rng.integers(len(kinds)))]))
            continue
        width, height, _ = RESOLUTIONS[int(rng.choice(len(RESOLUTIONS), p=shares / shares.sum()))]
        encoding, padding = ENCODINGS[int(rng.integers(len(ENCODINGS)))]
        plan.append(FramePlan(width, height, encoding, padding))
    return plan


class FrameFactory:
    """Image messages of the sample frames, built once per kind and reused with a new stamp."""

    def __init__(self):
        from sensor_msgs.msg import Image

        self._image = Image
        self._rgb = [read_rgb(path) for path in SAMPLES]
        if not self._rgb:
            raise FileNotFoundError("no sample frame under panoptic_ros/data/samples")
        self._cache: dict[tuple, object] = {}

    def message(self, plan: FramePlan, k: int):
        key = (plan, k % len(self._rgb))
        if key not in self._cache:
            self._cache[key] = self._build(plan, self._rgb[key[1]])
        return self._cache[key]

    def _build(self, plan: FramePlan, rgb: np.ndarray):
        if plan.bad:
            return self._bad(plan.bad, rgb)
        small = cv2.resize(rgb, (plan.width, plan.height), interpolation=cv2.INTER_AREA)
        height, width, step, data = rgb_to_image(small, plan.encoding)
        if plan.padding:
            rows = np.frombuffer(data, np.uint8).reshape(height, step)
            data = np.pad(rows, ((0, 0), (0, plan.padding)), constant_values=0xAB).tobytes()
            step += plan.padding
        return self._msg(plan.encoding, height, width, step, data)

    def _bad(self, defect: str, rgb: np.ndarray):
        small = cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_AREA)
        height, width, step, data = rgb_to_image(small, "rgb8")
        if defect == "truncated data":
            return self._msg("rgb8", height, width, step, data[: len(data) // 2])
        if defect == "unknown encoding":
            return self._msg("rgb9", height, width, step, data)
        if defect == "step too small":
            return self._msg("rgb8", height, width, width * 3 - 3, data)
        if defect == "zero size":
            return self._msg("rgb8", 0, 0, 0, b"")
        raise ValueError(f"unknown defect {defect!r}")

    def _msg(self, encoding: str, height: int, width: int, step: int, data: bytes):
        msg = self._image(height=height, width=width, encoding=encoding, is_bigendian=False, step=step)
        msg.header.frame_id = "soak_camera"
        msg.data = array.array("B", data)  # array.array skips rosidl's per-element check
        return msg


# ---------------------------------------------------------------------------------------------------- the node


def start_node(log_path: Path, diagnostics_period: float, extra: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "panoptic_ros.ros.panoptic_node", "--ros-args", "-r", f"__node:={NODE}",
               "-r", f"image:={IMAGE_TOPIC}", "-p", "device:=cpu", "-p", f"diagnostics.period:={diagnostics_period}",
               # eager: the soak is about the node's input handling, and with frames of many sizes the default
               # backend (auto) would first export an artefact for each size
               "-p", "backend:=eager"]
    for name, value in extra.items():
        command += ["-p", f"{name}:={value}"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(command, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def stop_node(process: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGINT, as Ctrl-C or ros2 launch would; the exit code, or None if it had to be killed."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def proc_sample(pid: int) -> dict | None:
    """RSS, peak RSS (MB), threads and open file descriptors of ``pid`` from /proc; None once it has gone."""
    try:
        fields = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                fields[key] = int(value.split()[0])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    if "VmRSS" not in fields:  # a zombie has no memory lines
        return None
    return {"rss_mb": fields["VmRSS"] / 1024, "hwm_mb": fields.get("VmHWM", 0) / 1024,
            "threads": fields.get("Threads", 0), "fds": fds}


def camera_counters(msg, node: str) -> dict | None:
    """The node's per-camera counters from one DiagnosticArray: integer values of ``received``, ``processed``,
    ``dropped``, ``lost_in_transport``, ``rejected`` and ``rejected.<kind>`` of the status of ``node`` that has
    them (other keys and statuses are ignored), with the status level and message."""
    for status in msg.status:
        values = {kv.key: kv.value for kv in status.values}
        if not (status.name.startswith(f"{node}:") or status.hardware_id == node) or "received" not in values:
            continue
        counters = {}
        for key, value in values.items():
            if key in COUNTERS or key.startswith("rejected."):
                try:
                    counters[key] = int(value)
                except ValueError:
                    pass
        level = status.level
        level = int.from_bytes(level, "little") if isinstance(level, (bytes, bytearray)) else int(level)
        return {"level": level, "message": status.message, "counters": counters}
    return None


def cdr_stamp_ns(data: bytes) -> int:
    """Header stamp of a serialised message that starts with a std_msgs/Header (after the 4-byte CDR header)."""
    sec, nanosec = struct.unpack_from("<iI", data, 4)
    return sec * 1_000_000_000 + nanosec


class Observer:
    """This process's ROS side: the frame publisher, subscriptions to the node's outputs and /diagnostics, and the
    node's set_parameters client, spun by an executor thread."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rcl_interfaces.srv import SetParameters
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        from panoptic_ros.msg import PanopticSegmentation

        self.node = rclpy.create_node("soak_driver")
        camera_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT,
                                durability=DurabilityPolicy.VOLATILE)
        output_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.VOLATILE)
        self.publisher = self.node.create_publisher(Image, IMAGE_TOPIC, camera_qos)
        self.phase = 0  # parameter changes made so far: outputs are counted per phase
        self.outputs: dict[str, Counter] = {name: Counter() for name in OUTPUTS}
        self.panoptic_at: dict[int, float] = {}  # header stamp -> receipt time
        types = {"panoptic": PanopticSegmentation, "semantic": Image, "overlay": Image}
        # raw: only the stamp is read, so this process does not compete with the node for CPU deserialising ids
        self.subscriptions = {name: self.node.create_subscription(types[name], f"/{NODE}/{name}",
                                                                  lambda data, n=name: self._output(n, data),
                                                                  output_qos, raw=True) for name in OUTPUTS}
        self.diagnostics: deque = deque(maxlen=20)  # (receipt time, counters dict)
        self.diagnostics_count = 0
        self.levels: Counter = Counter()
        self.warnings: list[str] = []
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 10)
        self.parameters = self.node.create_client(SetParameters, f"/{NODE}/set_parameters")
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _output(self, name: str, data: bytes) -> None:
        self.outputs[name][self.phase] += 1
        if name == "panoptic":
            self.panoptic_at[cdr_stamp_ns(data)] = time.monotonic()

    def _diagnostics(self, msg) -> None:
        found = camera_counters(msg, NODE)
        if found is None:
            return
        self.diagnostics.append((time.monotonic(), found["counters"]))
        self.diagnostics_count += 1
        self.levels[found["level"]] += 1
        if found["level"] and len(self.warnings) < 20 and found["message"] not in self.warnings:
            self.warnings.append(found["message"])

    def connected(self) -> bool:
        return (self.publisher.get_subscription_count() > 0 and self.subscriptions["panoptic"].get_publisher_count() > 0
                and self.parameters.service_is_ready() and self.diagnostics_count > 0)

    def set_parameters(self, values: dict):
        from rclpy.parameter import Parameter
        from rcl_interfaces.srv import SetParameters

        request = SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()
                                                    for name, value in values.items()])
        return self.parameters.call_async(request)

    def latest(self) -> tuple[float, dict] | None:
        return self.diagnostics[-1] if self.diagnostics else None

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def wait_until(predicate, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll)
    return predicate()


def final_counters(observer: Observer, last_stamp: int, period: float, timeout: float) -> tuple[dict, bool]:
    """The node's counters once the last frame has been handled: wait for its panoptic output, then for two
    consecutive diagnostics messages, both received after it, with the same counters. Returns them and whether the
    last frame's output arrived (if it did not, the counters are the first stable pair after ``timeout``)."""
    got_last = wait_until(lambda: last_stamp in observer.panoptic_at, timeout)
    after = observer.panoptic_at.get(last_stamp, time.monotonic())

    def stable():
        recent = [c for t, c in list(observer.diagnostics) if t > after]
        return len(recent) >= 2 and recent[-1] == recent[-2]

    if not wait_until(stable, max(10 * period, 10.0)):
        raise RuntimeError(f"the node's counters did not settle within {max(10 * period, 10.0):.0f} s after the last "
                           f"frame: {list(observer.diagnostics)[-3:]}")
    return dict(observer.diagnostics[-1][1]), got_last


# ---------------------------------------------------------------------------------------------------- the run


@dataclass
class Run:
    frames: int
    rate: float
    warmup: int
    sample_period: float
    diagnostics_period: float
    plan: list[FramePlan] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)


def sample(run: Run, pid: int, observer: Observer, start: float, sent: int, note: str = "") -> dict | None:
    """Append one time-series entry: /proc numbers of the node, its latest counters, outputs received so far."""
    found = proc_sample(pid)
    if found is None:
        return None
    latest = observer.latest()
    entry = {"t_s": round(time.monotonic() - start, 2), "frames_sent": sent,
             **{key: round(value, 2) if isinstance(value, float) else value for key, value in found.items()},
             "node": dict(latest[1]) if latest else {},
             "outputs": {name: sum(counts.values()) for name, counts in observer.outputs.items()}}
    if note:
        entry["note"] = note
    run.samples.append(entry)
    return entry


def stream(run: Run, process: subprocess.Popen, observer: Observer, factory: FrameFactory, start: float) -> dict:
    """Publish the planned frames at ``run.rate``; parameter changes at their fractions; /proc samples on the way."""
    changes = [(int(frac * run.frames), values, expected) for frac, values, expected in PARAMETER_CHANGES]
    pending = []  # (frame, values, expected, future)
    sent_at: dict[int, float] = {}
    base_stamp = 1_700_000_000 * 1_000_000_000
    next_sample = time.monotonic()
    begin = time.monotonic()
    late = 0
    for k, plan in enumerate(run.plan):
        if process.poll() is not None:
            raise RuntimeError(f"the node exited with code {process.returncode} after {k} frames")
        while changes and changes[0][0] == k:
            frame, values, expected = changes.pop(0)
            observer.phase += 1
            pending.append((frame, values, expected, observer.set_parameters(values)))
        due = begin + k / run.rate
        now = time.monotonic()
        if now < due:
            time.sleep(due - now)
        elif now - due > 1.0 / run.rate:
            late += 1
        msg = factory.message(plan, k)
        stamp = base_stamp + k * 1000
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        observer.publisher.publish(msg)
        if not plan.bad:
            sent_at[stamp] = time.monotonic()
        if k + 1 == run.warmup:
            sample(run, process.pid, observer, start, k + 1, "warm-up end")
        if time.monotonic() >= next_sample:
            sample(run, process.pid, observer, start, k + 1)
            next_sample += run.sample_period
    duration = time.monotonic() - begin
    results = []
    for frame, values, expected, future in pending:
        wait_until(future.done, 30)
        response = future.result() if future.done() else None
        outcomes = [r.successful for r in response.results] if response else []
        reasons = [r.reason for r in response.results if r.reason] if response else ["no response within 30 s"]
        results.append({"frame": frame, "parameters": values, "expected_accepted": expected,
                        "accepted": outcomes, "reasons": reasons,
                        "ok": bool(outcomes) and len(outcomes) == len(values) and all(o == expected for o in outcomes)})
    return {"stream_s": duration, "late_frames": late, "sent_at": sent_at, "parameter_changes": results,
            "last_stamp": base_stamp + (run.frames - 1) * 1000}


def trend(samples: list[dict], key: str) -> float:
    """Least-squares slope of ``key`` per 1000 frames sent over ``samples`` (0 with fewer than 3)."""
    if len(samples) < 3:
        return 0.0
    x = np.array([s["frames_sent"] for s in samples], float)
    y = np.array([s[key] for s in samples], float)
    return float(np.polyfit(x, y, 1)[0] * 1000) if np.ptp(x) > 0 else 0.0


def soak(frames: int, rate: float, sample_period: float, diagnostics_period: float, domain_id: int,
         log_dir: Path, bad_fraction: float = 0.05, startup_timeout: float = 180.0) -> dict:
    set_ros_environment(domain_id)
    import rclpy

    warmup = max(1, min(1000, frames // 10))
    run = Run(frames, rate, warmup, sample_period, diagnostics_period, plan_frames(frames, bad_fraction))
    factory = FrameFactory()
    for k, plan in enumerate(run.plan[:200]):  # build the common messages before the clock starts
        factory.message(plan, k)
    log = log_dir / "node.log"
    start = time.monotonic()
    process = start_node(log, diagnostics_period, {})
    rclpy.init()
    observer = None
    try:
        observer = Observer()
        if not wait_until(lambda: observer.connected() or process.poll() is not None, startup_timeout, 0.1) \
                or process.poll() is not None:
            raise RuntimeError(f"the node did not come up within {startup_timeout:.0f} s (exit code {process.poll()}); "
                               f"see {log}")
        startup_s = time.monotonic() - start
        wait_until(lambda: all(s.get_publisher_count() for s in observer.subscriptions.values()), 10)
        sample(run, process.pid, observer, start, 0, "start")
        streamed = stream(run, process, observer, factory, start)
        counters, last_output = final_counters(observer, streamed["last_stamp"], diagnostics_period, 60.0)
        end = sample(run, process.pid, observer, start, frames, "end")
        alive = process.poll() is None and end is not None
        if end is None:
            raise RuntimeError(f"the node exited (code {process.poll()}) before the final sample; see {log}")
    finally:
        exit_code = stop_node(process) if process.poll() is None else process.returncode
        if observer is not None:
            observer.close()
        rclpy.try_shutdown()
    wall_s = time.monotonic() - start
    return summarize(run, streamed, counters, last_output, observer, alive, exit_code, startup_s, wall_s, log)


def summarize(run: Run, streamed: dict, counters: dict, last_output: bool, observer: Observer, alive: bool,
              exit_code: int | None, startup_s: float, wall_s: float, log: Path) -> dict:
    sent = len(run.plan)
    bad_sent = Counter(BAD_FRAMES[p.bad] for p in run.plan if p.bad)
    get = lambda key: counters.get(key, 0)  # noqa: E731
    counted = get("processed") + get("dropped") + get("lost_in_transport") + get("rejected")
    rejected_by_kind = {key.split(".", 1)[1]: value for key, value in counters.items() if key.startswith("rejected.")}
    accounting = {
        "sent": sent, "processed + dropped + lost_in_transport + rejected": counted, "difference": counted - sent,
        "every_frame_counted": counted == sent,
        "received + lost_in_transport == sent": get("received") + get("lost_in_transport") == sent,
        "processed + dropped + rejected == received": get("processed") + get("dropped") + get("rejected") == get("received"),
        "rejected == sum of rejected.<kind>": get("rejected") == sum(rejected_by_kind.values()),
    }
    warm = next(s for s in run.samples if s.get("note") == "warm-up end")
    end = next(s for s in run.samples if s.get("note") == "end")
    after_warmup = [s for s in run.samples if s["frames_sent"] >= run.warmup]
    growth = 100 * (end["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"]
    memory = {"rss_start_mb": run.samples[0]["rss_mb"], "rss_warmup_end_mb": warm["rss_mb"], "rss_end_mb": end["rss_mb"],
              "growth_pct": growth, "target_growth_pct": RSS_GROWTH_TARGET_PCT,
              "meets_target": growth < RSS_GROWTH_TARGET_PCT,
              "rss_max_after_warmup_mb": max(s["rss_mb"] for s in after_warmup), "peak_rss_mb": end["hwm_mb"],
              "slope_mb_per_1000_frames_after_warmup": trend(after_warmup, "rss_mb")}
    threads = {"start": run.samples[0]["threads"], "warmup_end": warm["threads"], "end": end["threads"],
               "max": max(s["threads"] for s in run.samples), "min_after_warmup": min(s["threads"] for s in after_warmup),
               "slope_per_1000_frames_after_warmup": trend(after_warmup, "threads")}
    fds = {"warmup_end": warm["fds"], "end": end["fds"], "max": max(s["fds"] for s in run.samples)}
    sent_at = streamed["sent_at"]
    latency = [(observer.panoptic_at[s] - t) * 1e3 for s, t in sent_at.items() if s in observer.panoptic_at]
    phases = ["start"] + [", ".join(f"{k}={v}" for k, v in c["parameters"].items()) for c in streamed["parameter_changes"]]
    outputs = {name: {phase: c.get(p, 0) for p, phase in enumerate(phases)} for name, c in observer.outputs.items()}
    changes_ok = all(c["ok"] for c in streamed["parameter_changes"])
    checks = {
        "every frame counted (processed + dropped + lost + rejected == sent)": accounting["every_frame_counted"],
        "node alive at the end": alive,
        "clean exit on SIGINT (code 0)": exit_code == 0,
        "parameter changes accepted (the invalid one refused)": changes_ok,
        "bad frames rejected and counted by kind": get("rejected") > 0 and set(rejected_by_kind) <= set(bad_sent)
        and all(rejected_by_kind[k] <= bad_sent[k] for k in rejected_by_kind),
        "frames processed and results received": get("processed") > 0 and len(latency) > 0,
    }
    log_text = log.read_text(errors="replace") if log.exists() else ""
    return {
        "frames": {"sent": sent, "good": sent - sum(bad_sent.values()), "bad": dict(sorted(bad_sent.items())),
                   "by_kind": dict(sorted(Counter(p.label for p in run.plan).items())),
                   "warmup": run.warmup},
        "rate_hz": run.rate, "achieved_rate_hz": sent / streamed["stream_s"], "late_frames": streamed["late_frames"],
        "node": {**{k: get(k) for k in COUNTERS}, "rejected_by_kind": rejected_by_kind, "all_counters": counters},
        "accounting": accounting, "last_frame_output_received": last_output,
        "memory": memory, "threads": threads, "open_fds": fds,
        "parameter_changes": streamed["parameter_changes"], "outputs_received_by_phase": outputs,
        "end_to_end_latency_ms": percentiles(latency), "results_received": len(latency),
        "diagnostics": {"messages": observer.diagnostics_count, "levels": {str(k): v for k, v in observer.levels.items()},
                        "non_ok_messages": observer.warnings, "period_s": run.diagnostics_period},
        "node_alive_at_end": alive, "node_exit_code": exit_code, "startup_s": startup_s,
        "stream_s": streamed["stream_s"], "wall_s": wall_s,
        "node_log": {"path": str(log), "lines": log_text.count("\n"),
                     "warning_lines": sum("WARN" in line for line in log_text.splitlines()),
                     "error_lines": sum("ERROR" in line or "Traceback" in line for line in log_text.splitlines()),
                     "tail": log_text.splitlines()[-5:]},
        "checks": checks, "passed": all(checks.values()),
        "time_series": run.samples,
    }


def markdown(payload: dict) -> list[str]:
    n, acc, mem, thr = payload["node"], payload["accounting"], payload["memory"], payload["threads"]
    frames = payload["frames"]
    kinds = ", ".join(f"{k} {v}" for k, v in n["rejected_by_kind"].items()) or "none"
    bad = ", ".join(f"{k} {v}" for k, v in frames["bad"].items())
    lat = payload["end_to_end_latency_ms"]
    verdict = "= sent" if acc["every_frame_counted"] else f"sent {acc['sent']}: difference {acc['difference']:+d}"
    lines = [f"# Node soak ({payload['device'].upper()})", "",
             f"commit {payload['commit']}, {payload['date']}, {payload['cpu']}, torch {payload['torch']}; node process "
             f"on the CPU, frames published by this process at {payload['rate_hz']:g} Hz "
             f"(achieved {payload['achieved_rate_hz']:.1f} Hz), diagnostics every {payload['diagnostics']['period_s']:g} s",
             "", f"{frames['sent']} frames: 160x120 to 1024x512 in {len(ENCODINGS)} encodings (padded rows included), "
             f"{sum(frames['bad'].values())} bad ({bad}); warm-up = the first {frames['warmup']} frames", "",
             "| frames | count |", "|---|---|",
             f"| sent | {frames['sent']} |", f"| received by the node | {n['received']} |",
             f"| processed | {n['processed']} |", f"| dropped (replaced in the one-frame slot) | {n['dropped']} |",
             f"| lost in transport | {n['lost_in_transport']} |", f"| rejected | {n['rejected']} ({kinds}) |",
             f"| processed + dropped + lost + rejected | {acc['processed + dropped + lost_in_transport + rejected']} "
             f"({verdict}) |",
             "", "| measurement | result | target |", "|---|---|---|",
             f"| node RSS: warm-up end -> end | {mem['rss_warmup_end_mb']:.0f} -> {mem['rss_end_mb']:.0f} MB "
             f"({mem['growth_pct']:+.1f}%; slope {mem['slope_mb_per_1000_frames_after_warmup']:+.2f} MB per 1000 frames, "
             f"peak {mem['peak_rss_mb']:.0f} MB) | < {mem['target_growth_pct']:g}% "
             f"({'met' if mem['meets_target'] else 'missed'}) |",
             f"| node threads: start / warm-up end / end / max | {thr['start']} / {thr['warmup_end']} / {thr['end']} / "
             f"{thr['max']} (slope {thr['slope_per_1000_frames_after_warmup']:+.2f} per 1000 frames) | no growth |",
             f"| open file descriptors: warm-up end / end / max | {payload['open_fds']['warmup_end']} / "
             f"{payload['open_fds']['end']} / {payload['open_fds']['max']} | no growth |",
             f"| end to end (publish -> ~/panoptic received), {payload['results_received']} results | "
             + (f"p50 {lat['p50']:.0f} / p90 {lat['p90']:.0f} / p99 {lat['p99']:.0f} ms" if lat else "none") + " | report |",
             f"| wall time (node start to exit) | {payload['wall_s']:.0f} s (start-up {payload['startup_s']:.0f} s, "
             f"stream {payload['stream_s']:.0f} s) | report |", "",
             "| parameter change at frame | expected | accepted |", "|---|---|---|"]
    for change in payload["parameter_changes"]:
        values = ", ".join(f"{k}={v}" for k, v in change["parameters"].items())
        lines.append(f"| {change['frame']}: {values} | {'accepted' if change['expected_accepted'] else 'refused'} | "
                     f"{change['accepted']}{' OK' if change['ok'] else ' UNEXPECTED'} |")
    lines += ["", "| check | result |", "|---|---|"]
    lines += [f"| {name} | {'pass' if ok else 'FAIL'} |" for name, ok in payload["checks"].items()]
    lines += ["", f"node alive at the end: {payload['node_alive_at_end']}, exit code after SIGINT: "
                  f"{payload['node_exit_code']}; diagnostics levels seen {payload['diagnostics']['levels']}; "
                  f"time series of {len(payload['time_series'])} samples in the JSON", ""]
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second published")
    parser.add_argument("--sample-period", type=float, default=2.0, help="seconds between /proc samples")
    parser.add_argument("--diagnostics-period", type=float, default=0.5)
    parser.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID (default: 1 + pid %% 100)")
    parser.add_argument("--log-dir", type=Path, default=None, help="where node.log goes (default: a temp dir)")
    parser.add_argument("--bad-fraction", type=float, default=0.05, help="share of bad frames")
    parser.add_argument("--quick", action="store_true",
                        help="a test-sized run: 300 frames, 15%% bad (so that some are surely rejected rather than "
                             "all replaced in the slot), samples every second")
    opts = parser.parse_args(argv)
    if opts.quick:
        opts.frames, opts.sample_period, opts.bad_fraction = 300, 1.0, 0.15
    if opts.frames < 30:
        parser.error("--frames must be at least 30")
    log_dir = opts.log_dir or Path(tempfile.mkdtemp(prefix="soak_"))
    result = soak(opts.frames, opts.rate, opts.sample_period, opts.diagnostics_period,
                  opts.domain_id if opts.domain_id is not None else 1 + os.getpid() % 100, log_dir, opts.bad_fraction)
    cpu = torch.device("cpu")
    payload = {**environment(cpu), **result}
    report("soak", cpu, payload, markdown(payload))
    failed = [name for name, ok in payload["checks"].items() if not ok]
    if failed:
        print(f"soak FAILED: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
