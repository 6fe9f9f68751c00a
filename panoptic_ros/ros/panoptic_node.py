"""The panoptic segmentation node: camera images in, semantic / instance / panoptic outputs out.

    ros2 run panoptic_ros panoptic_node --ros-args --params-file config/fast.yaml
    python -m panoptic_ros.ros.panoptic_node --ros-args -p device:=cpu -r image:=/camera/image_raw

A lifecycle node as nav2's ``lifecycle_manager`` expects: with ``autostart:=false`` it waits in ``unconfigured`` for
transitions; with ``autostart`` (the default, for ``ros2 run``) it configures and activates itself once spinning.
Configure loads and checks the weights, activate moves the model to its device and subscribes, deactivate
unsubscribes and frees GPU memory, cleanup drops the model. Outputs are lifecycle publishers. ``/diagnostics`` is
published in every state: a failed transition is an ERROR with its reason.

Subscription callbacks take the serialised image (a raw subscription) and only put it in its camera's one-slot
buffer (``runtime.FrameSlots``); one worker thread deserialises the newest frame, runs the shared ``Predictor``
and publishes, so a frame that is replaced before its turn costs nothing and no stale frame is processed. Every
output is built only while it has a subscriber. Parameters, decoding, the Predictor and the statistics live
outside ``ros/``; this module wires them to topics.

The node sets no discovery range or transport: that is the deployment's choice (README, "Network").
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
import torch
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header

from panoptic_ros.classes import TABLES
from panoptic_ros.config import ConfigError
from panoptic_ros.images import ImageError, rgb_to_compressed
from panoptic_ros.msg import PanopticSegmentation
from panoptic_ros.node_config import NodeConfig, flatten, is_runtime_parameter, node_config_from_parameters
from panoptic_ros.predictor import SHIPPED_WEIGHTS, OutputBuffers, Predictor, filter_prediction
from panoptic_ros.runtime import (ERROR, OK, CameraStats, ErrorThrottle, FrameSlots, SequenceGaps, Status,
                                  camera_status)
from panoptic_ros.visualize import render_panoptic

from .conversions import FRAME_TYPES, ImageBuffer, class_infos, decode_frame, diagnostic_array, panoptic_msg

# output topic -> (message type, the output.<flag> that enables it)
OUTPUTS = {"semantic": (Image, "semantic"), "panoptic": (PanopticSegmentation, "panoptic"),
           "panoptic_image": (Image, "panoptic_image"), "instance": (Image, "instance"),
           "overlay": (Image, "overlay"), "overlay/compressed": (CompressedImage, "overlay"),
           "camera_info": (CameraInfo, "camera_info")}
_PARAMETER_NAMES = frozenset(flatten(NodeConfig()))
_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}
# rclpy passes MessageInfo to two-argument callbacks from Iron on; Humble's rclpy calls every callback with the
# message only, so there the node counts no sequence gaps.
MESSAGE_INFO = hasattr(Subscription, "CallbackType")
STOP_TIMEOUT = 10.0  # seconds deactivate waits for the frame in progress


def qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=_RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def is_ours(parameter: str) -> bool:
    return parameter in _PARAMETER_NAMES or parameter.startswith("bandwidths.")


def topic(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def stamp_key(stamp) -> tuple[int, int]:
    return stamp.sec, stamp.nanosec


class Lap:
    """``lap(name)`` stores the ms since the previous lap (or creation) as ``timings[prefix + name]``."""

    def __init__(self, timings: dict[str, float], prefix: str):
        self.timings, self.prefix, self.last = timings, prefix, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[self.prefix + name] = (now - self.last) * 1e3
        self.last = now


@dataclass
class Camera:
    """One input stream and its outputs; ``stats``, ``errors`` and ``gaps`` start over at every activation."""

    name: str
    stats: CameraStats
    errors: ErrorThrottle = field(default_factory=ErrorThrottle)
    gaps: SequenceGaps = field(default_factory=SequenceGaps)
    publishers: dict = field(default_factory=dict)
    subscriptions: list = field(default_factory=list)
    camera_infos: deque = field(default_factory=lambda: deque(maxlen=16))  # the latest, to pair by stamp
    info_problems: ErrorThrottle = field(default_factory=ErrorThrottle)  # frames without a matching camera_info
    buffers: dict = field(default_factory=lambda: {name: ImageBuffer(encoding) for name, encoding in (
        ("semantic", "mono8"), ("segments", "16UC1"), ("instance", "16UC1"), ("overlay", "rgb8"))})
    bit_depth: int = 0  # of 16-bit frames, detected so far (input.bit_depth 0)


class PanopticNode(LifecycleNode):
    """Parameters: ``node_config.NodeConfig`` (README, "Parameters"); topics: README, "Topics"."""

    def __init__(self, node_name: str = "panoptic_node", **kwargs):
        super().__init__(node_name, **kwargs)
        for name, value in flatten(NodeConfig()).items():
            self.declare_parameter(name, value, ParameterDescriptor(dynamic_typing=isinstance(value, float)))
        self._lock = threading.Lock()  # output publishers: the worker publishes, parameter changes replace them
        self._config = NodeConfig()
        self._predictor: Predictor | None = None
        self._weights_postprocess = None
        self._weights_parameters: list[str] = []  # bandwidths.<class> declared from the loaded weights
        self._classes = []
        self._cameras: dict[str, Camera] = {}
        self._slots: FrameSlots | None = None
        self._worker: threading.Thread | None = None
        self._failure: str | None = None  # the last failed transition's reason, until one succeeds
        self._model_error: str | None = None  # the last frame's model failure, until a frame succeeds
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(self.get_parameter("diagnostics.period").value,
                                                    self._publish_diagnostics)
        self._autostart_timer = None
        if self.get_parameter("autostart").value:  # once spinning, so the lifecycle services are up first
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    def _autostart(self) -> None:
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    @property
    def state(self) -> str:
        """The lifecycle state's label: unconfigured, inactive, active or finalized."""
        return self._state_machine.current_state[1]

    # ---- parameters -------------------------------------------------------------------------------------
    def _parameter_values(self) -> dict:
        return {name: p.value for name, p in self._parameters.items() if is_ours(name)}

    def _read_config(self, changes: dict | None = None) -> NodeConfig:
        config = node_config_from_parameters({**self._parameter_values(), **(changes or {})}, self.get_name())
        if self._predictor is not None:
            config.postprocess(self._weights_postprocess, self._predictor.table)  # raises for unknown names
        return config

    def _on_set_parameters(self, parameters) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters if is_ours(p.name)}  # not e.g. use_sim_time
        if self._predictor is not None:
            fixed = sorted(name for name in changes if not is_runtime_parameter(name))
            if fixed:
                return SetParametersResult(successful=False, reason=(
                    f"{fixed[0]} takes effect at configure: deactivate and clean up the node, set it, configure"))
        try:
            config = self._read_config(changes)
        except ConfigError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if self._predictor is not None:
            self._apply(config)
        return SetParametersResult(successful=True)

    def _apply(self, config: NodeConfig) -> None:
        """Make a validated configuration current: post-processing and the set of output publishers."""
        self._predictor.postprocess = config.postprocess(self._weights_postprocess, self._predictor.table)
        self._config = config
        active = self.state == "active"
        with self._lock:
            for camera in self._cameras.values():
                for output, (msg_type, flag) in OUTPUTS.items():
                    wanted = getattr(config.output, flag)
                    if wanted and output not in camera.publishers:
                        publisher = self.create_lifecycle_publisher(
                            msg_type, f"~/{topic(camera.name, output)}", qos(config.output.reliability, 5))
                        if active:
                            publisher.on_activate(None)
                        camera.publishers[output] = publisher
                    elif not wanted and output in camera.publishers:
                        self.destroy_lifecycle_publisher(camera.publishers.pop(output))

    def _forget_weights_parameters(self) -> None:
        """Undeclare the weights' ``bandwidths.<class>``: other weights may have other thing classes."""
        for name in self._weights_parameters:
            if self.has_parameter(name):
                self.undeclare_parameter(name)
        self._weights_parameters = []

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def _fail(self, transition: str, error: Exception) -> TransitionCallbackReturn:
        self._failure = f"{transition} failed: {error}"
        self.get_logger().error(self._failure)
        self._publish_diagnostics()  # now, not a period later: a manager may shut the node down at once
        return TransitionCallbackReturn.FAILURE

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = self._read_config()
            if not config.weights and config.mode not in SHIPPED_WEIGHTS:
                raise ConfigError(f"mode {config.mode!r} has no shipped weights in this version: set 'weights' to a "
                                  f"panoptic_fpn weights file (python -m panoptic_ros.train --config "
                                  f"config/panoptic_fpn_camvid.yaml)")
            weights = Path(config.weights) if config.weights else SHIPPED_WEIGHTS[config.mode]
            predictor = Predictor.from_weights(weights, device="cpu", precision=config.precision,
                                               backend=config.backend, cache_dir=config.backend_cache_dir or None,
                                               build_missing=config.backend_build_missing)
            if predictor.mode != config.mode:
                raise ConfigError(f"mode {config.mode!r}, but {weights} holds a {predictor.architecture} network "
                                  f"(mode {predictor.mode!r}): set mode to {predictor.mode!r} or other weights")
            if config.class_table and config.class_table != predictor.table.name:
                table = TABLES[config.class_table]
                if len(table) != len(predictor.table):
                    raise ConfigError(f"class_table {config.class_table!r} has {len(table)} classes, but {weights} "
                                      f"predicts {len(predictor.table)}")
                predictor.table = table
            if len(predictor.table) > 255:
                raise ConfigError(f"{len(predictor.table)} classes do not fit ~/semantic's mono8")
            for class_id, bandwidth in predictor.bandwidths.items():  # defaults from the weights
                name = f"bandwidths.{predictor.table[class_id].name}"
                if not self.has_parameter(name):
                    self.declare_parameter(name, bandwidth, ParameterDescriptor(dynamic_typing=True))
                    self._weights_parameters.append(name)
            self._weights_postprocess = predictor.postprocess
            self._predictor = predictor
            config = self._read_config()
        except Exception as error:  # ConfigError, WeightsError, OSError, ...: rclpy would swallow it silently
            self._predictor = None
            self._forget_weights_parameters()
            return self._fail("configure", error)
        self._classes = class_infos(predictor.table)
        self._cameras = {name: Camera(name, CameraStats(window=config.diagnostics.window))
                         for name in config.input.cameras}
        self._apply(config)
        self._failure = None
        self.get_logger().info(f"configured: {predictor.name} ({predictor.table.name}, {len(predictor.table)} classes) "
                               f"from {weights}, cameras {list(self._cameras)}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:  # rclpy turns an exception here into a silent ERROR transition: say why
            self._predictor.to(self._config.device)
            self._serve()
        except Exception as error:
            self.stop_serving()
            return self._fail("activate", error)
        self._failure = None
        self.get_logger().info(f"active on {self._predictor.device} (backend {self._predictor.backend}), input "
                               f"{self._config.input.transport} {self._config.input.reliability}")
        return super().on_activate(state)  # enables the lifecycle publishers

    def _serve(self) -> None:
        """Fresh statistics, the input subscriptions and the worker."""
        config = self._config
        self._slots = FrameSlots()
        self._model_error = None
        msg_type, suffix = FRAME_TYPES[config.input.transport]
        for camera in self._cameras.values():
            camera.stats = CameraStats(window=config.diagnostics.window)
            camera.errors, camera.info_problems, camera.gaps = ErrorThrottle(), ErrorThrottle(), SequenceGaps()
            camera.bit_depth = 0
            camera.camera_infos.clear()
            subscription = self.create_subscription(
                msg_type, topic(camera.name, suffix),
                ((lambda data, info, c=camera: self._on_image(c, data, info)) if MESSAGE_INFO
                 else (lambda data, c=camera: self._on_image(c, data, None))),
                qos(config.input.reliability, 1), raw=True)
            camera.subscriptions = [subscription, self.create_subscription(
                CameraInfo, topic(camera.name, "camera_info"), lambda msg, c=camera: c.camera_infos.append(msg),
                qos(config.input.reliability, 5))]
        self._worker = threading.Thread(target=self._work, args=(self._slots,), name="panoptic_worker", daemon=True)
        self._worker.start()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_serving()
        self._predictor.to("cpu")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_serving()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def stop_serving(self) -> None:
        """Unsubscribe and stop the worker, waiting up to ``STOP_TIMEOUT`` for the frame in progress."""
        for camera in self._cameras.values():
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions = []
        if self._slots is not None:
            self._slots.close()
        if self._worker is not None:
            self._worker.join(STOP_TIMEOUT)
            if self._worker.is_alive():  # a daemon thread: it ends after its frame and cannot keep the process
                self.get_logger().error(f"the worker is still busy after {STOP_TIMEOUT:g} s; it stops after its "
                                        f"current frame")
            self._worker = None

    def _release(self) -> None:
        with self._lock:
            for camera in self._cameras.values():
                for publisher in camera.publishers.values():
                    self.destroy_lifecycle_publisher(publisher)
            self._cameras = {}
        self._predictor = None
        self._forget_weights_parameters()

    # ---- serving -----------------------------------------------------------------------------------------
    def _on_image(self, camera: Camera, data: bytes, info) -> None:
        camera.stats.record_input(time.monotonic())
        if info is not None:
            gid = info.get("publisher_gid")  # Kilted on; Jazzy has only the sequence number
            if gid:
                publisher = bytes(gid.get("data", b""))
            else:  # one publisher needs no name; several cannot be told apart
                publisher = "the only publisher" if camera.subscriptions[0].get_publisher_count() == 1 else None
            lost = camera.gaps.update(publisher, info.get("publication_sequence_number"))
            if lost:
                camera.stats.record_lost(lost)
        if self._slots.put(camera.name, (data, time.perf_counter())):
            camera.stats.record_dropped()

    def _work(self, slots: FrameSlots) -> None:
        while (item := slots.take()) is not None:
            name, (data, received) = item
            camera = self._cameras.get(name)
            if camera is None:
                continue
            try:
                self._process(camera, data, received)
            except Exception as error:  # one bad frame must never stop the worker
                self._reject(camera, "internal", f"{error}\n{traceback.format_exc()}")

    def _reject(self, camera: Camera, kind: str, reason: str) -> None:
        camera.stats.record_rejected()
        suffix = camera.errors.record(kind, time.monotonic())
        if suffix is not None:
            self.get_logger().warning(f"dropped a frame of '{camera.name or 'image'}' ({kind}): {reason}{suffix}")

    def _process(self, camera: Camera, data: bytes, received: float) -> None:
        config, predictor = self._config, self._predictor
        timings = {"queue": (time.perf_counter() - received) * 1e3}
        clock = time.perf_counter()
        try:
            stamp, frame_id, rgb, camera.bit_depth = decode_frame(
                data, config.input.transport, config.input.max_pixels, config.input.bit_depth, camera.bit_depth)
        except ImageError as error:
            self._reject(camera, error.kind, str(error))
            return
        timings["decode"] = (time.perf_counter() - clock) * 1e3
        header = Header(stamp=Time(sec=stamp[0], nanosec=stamp[1]), frame_id=frame_id)
        # the prediction's final maps are written straight into the messages' reused buffers
        buffers, (height, width) = camera.buffers, rgb.shape[:2]
        out = OutputBuffers(torch.from_numpy(buffers["semantic"].pixels(header, height, width)),
                            torch.from_numpy(buffers["segments"].pixels(header, height, width).view(np.int16)))
        try:
            prediction = predictor(rgb, config.network_scale(rgb.shape[1], predictor.scale), out)
        except Exception as error:  # the model, not the frame: ERROR in diagnostics until a frame succeeds
            self._model_error = f"{type(error).__name__}: {error}"
            self._reject(camera, "model", f"{self._model_error}\n{traceback.format_exc()}")
            return
        self._model_error = None
        prediction = filter_prediction(prediction, config.filter.score_threshold, config.filter.min_area)
        timings.update(prediction.timings)
        clock = time.perf_counter()
        self._publish(camera, header, rgb, prediction, received, config, timings)
        timings["publish"] = (time.perf_counter() - clock) * 1e3
        timings["total"] = (time.perf_counter() - received) * 1e3
        camera.stats.record_output(time.monotonic(), timings)

    def _publish(self, camera: Camera, header: Header, rgb, prediction, received: float, config: NodeConfig,
                 timings: dict[str, float]) -> None:
        """Each subscribed output, built once from the prediction's own buffers (uint8 classes, 16-bit segment
        indices), its ms in ``timings["publish.<output>"]``. The lock keeps a parameter change from destroying a
        publisher in use."""
        with self._lock:
            wanted = {name: pub for name, pub in camera.publishers.items() if pub.get_subscription_count() > 0}
            lap = Lap(timings, "publish.")
            buffers = camera.buffers
            if "semantic" in wanted:
                wanted["semantic"].publish(buffers["semantic"].fill(prediction.semantic.numpy(), header))
                lap("semantic")
            segment_map = prediction.segment_map.numpy().view(np.uint16)
            if "panoptic_image" in wanted or "panoptic" in wanted:
                segments_msg = buffers["segments"].fill(segment_map, header)
                if "panoptic_image" in wanted:
                    wanted["panoptic_image"].publish(segments_msg)
                    lap("panoptic_image")
                if "panoptic" in wanted:
                    latency_ns = int((time.perf_counter() - received) * 1e9)
                    wanted["panoptic"].publish(panoptic_msg(segments_msg, prediction.segments, self._classes,
                                                            model=self._predictor.name, mode=config.mode,
                                                            latency_ns=latency_ns))
                    lap("panoptic")
            if "instance" in wanted:  # segments sort by id, stuff (id < 1000) before things: indices > stuff count
                stuff = sum(not s.is_thing for s in prediction.segments)
                np.multiply(segment_map, segment_map > stuff, out=buffers["instance"].pixels(header, *segment_map.shape),
                            casting="unsafe")
                wanted["instance"].publish(buffers["instance"].msg)
                lap("instance")
            if "overlay" in wanted or "overlay/compressed" in wanted:
                overlay = render_panoptic(rgb, prediction.semantic.numpy(), prediction.panoptic.numpy(),
                                          self._predictor.table, config.output.overlay_alpha)
                if "overlay" in wanted:
                    wanted["overlay"].publish(buffers["overlay"].fill(overlay, header))
                    lap("overlay")
                if "overlay/compressed" in wanted:
                    wanted["overlay/compressed"].publish(CompressedImage(
                        header=header, format="rgb8; jpeg compressed bgr8",
                        data=rgb_to_compressed(overlay, "jpeg", config.output.jpeg_quality)))
                    lap("overlay/compressed")
            if "camera_info" in wanted:
                info = self._paired_camera_info(camera, header, rgb.shape)
                if info is not None:
                    wanted["camera_info"].publish(info)
                lap("camera_info")

    def _paired_camera_info(self, camera: Camera, header: Header, shape) -> CameraInfo | None:
        """The input's camera_info with this frame's stamp, if its size is the frame's; else None, logged."""
        key = stamp_key(header.stamp)
        info = next((i for i in reversed(camera.camera_infos) if stamp_key(i.header.stamp) == key), None)
        if info is None:
            problem, reason = "unpaired", "no camera_info with the image's stamp"
        elif (info.height, info.width) != tuple(shape[:2]):
            problem, reason = "wrong_size", (f"camera_info is {info.width} x {info.height}, the image "
                                                   f"{shape[1]} x {shape[0]}")
        else:
            return info
        suffix = camera.info_problems.record(problem, time.monotonic())
        if suffix is not None:
            self.get_logger().warning(f"no ~/camera_info for a frame of '{camera.name or 'image'}': {reason}{suffix}")
        return None

    def _publish_diagnostics(self) -> None:
        config, now, node = self._config, time.monotonic(), self.get_name()
        predictor = self._predictor
        if self._failure is not None:
            model = Status(ERROR, f"{node}: model", self._failure, {"state": self.state})
        elif predictor is None or self.state != "active":
            model = Status(OK, f"{node}: model", self.state, {"state": self.state})
        else:
            values = {"state": self.state, "model": predictor.name, "mode": config.mode, "backend": predictor.backend,
                      "device": str(predictor.device), "precision": config.precision, "classes": predictor.table.name}
            model = (Status(ERROR, f"{node}: model", self._model_error, values) if self._model_error
                     else Status(OK, f"{node}: model", f"{predictor.name} on {predictor.device}", values))
        statuses = [model]
        if self.state == "active":
            limits = config.diagnostics
            for camera in list(self._cameras.values()):
                status = camera_status(
                    f"{node}: {camera.name or 'image'}", camera.stats, camera.errors.counts, now,
                    expected_rate_hz=limits.expected_rate_hz, max_drop_ratio=limits.max_drop_ratio,
                    stale_after=limits.stale_after, min_rate_hz=limits.min_rate_hz,
                    max_latency_ms=limits.max_latency_ms)
                status.values.update({f"camera_info.{kind}": str(n) for kind, n in camera.info_problems.counts.items()})
                statuses.append(status)
        self._diagnostics_pub.publish(diagnostic_array(statuses, self.get_clock().now().to_msg(), node))


def main(args=None) -> None:
    rclpy.init(args=args)
    node = None
    try:  # Ctrl-C may come while autostart is still loading the model
        node = PanopticNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # Ctrl-C shuts the context down from rclpy's signal handler, possibly while a callback (diagnostics,
        # autostart) is publishing: that callback's "context invalid" error is the shutdown, not a failure.
        if rclpy.ok():
            raise
    finally:
        if node is not None:
            node.stop_serving()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
