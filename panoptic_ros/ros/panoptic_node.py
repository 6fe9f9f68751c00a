"""The panoptic segmentation node: camera images in, semantic / instance / panoptic outputs out.

    ros2 run panoptic_ros panoptic_node --ros-args --params-file config/fast.yaml
    python -m panoptic_ros.ros.panoptic_node --ros-args -p device:=cpu -r image:=/camera/image_raw

A lifecycle node (autostarts unless ``autostart:=false``): configure loads and checks the weights, activate moves
the model to its device and subscribes, deactivate unsubscribes and frees GPU memory, cleanup drops the model.
Subscription callbacks only put the message in its camera's one-slot buffer (``runtime.FrameSlots``); one worker
thread decodes the newest frame, runs the shared ``Predictor`` and publishes, so no stale frame is ever processed.
Parameters, decoding, the Predictor and the statistics live outside ``ros/``; this module wires them to topics.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from panoptic_ros.checkpoint import WeightsError
from panoptic_ros.classes import TABLES
from panoptic_ros.config import ConfigError
from panoptic_ros.images import ImageError
from panoptic_ros.msg import PanopticSegmentation
from panoptic_ros.node_config import NodeConfig, flatten, is_runtime_parameter, node_config_from_parameters
from panoptic_ros.predictor import DEFAULT_WEIGHTS, Predictor, filter_prediction
from panoptic_ros.runtime import OK, CameraStats, ErrorThrottle, FrameSlots, SequenceGaps, Status, camera_status
from panoptic_ros.visualize import render_panoptic

from .conversions import class_infos, diagnostic_array, image_msg, panoptic_msg, rgb_from_msg
from .env import configure_ros_environment

OUTPUTS = {"semantic": Image, "instance": Image, "panoptic": PanopticSegmentation, "panoptic_image": Image,
           "overlay": Image, "camera_info": CameraInfo}
_PARAMETER_NAMES = frozenset(flatten(NodeConfig()))
_RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=_RELIABILITY[reliability],
                      durability=DurabilityPolicy.VOLATILE)


def is_ours(parameter: str) -> bool:
    return parameter in _PARAMETER_NAMES or parameter.startswith("bandwidths.")


def topic(namespace: str, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


@dataclass
class Camera:
    """One input stream and its outputs."""

    name: str
    stats: CameraStats
    errors: ErrorThrottle = field(default_factory=ErrorThrottle)
    gaps: SequenceGaps = field(default_factory=SequenceGaps)
    publishers: dict = field(default_factory=dict)
    subscriptions: list = field(default_factory=list)
    camera_info: CameraInfo | None = None


class PanopticNode(LifecycleNode):
    """Parameters: ``node_config.NodeConfig`` (README, "Parameters"); topics: README, "Topics"."""

    def __init__(self, node_name: str = "panoptic_node", **kwargs):
        super().__init__(node_name, **kwargs)
        for name, value in flatten(NodeConfig()).items():
            self.declare_parameter(name, value, ParameterDescriptor(dynamic_typing=isinstance(value, float)))
        self._lock = threading.Lock()  # publishers vs. the parameter callback
        self._config = NodeConfig()
        self._predictor: Predictor | None = None
        self._weights_postprocess = None
        self._classes = []
        self._cameras: dict[str, Camera] = {}
        self._slots: FrameSlots | None = None
        self._worker: threading.Thread | None = None
        self._diagnostics_pub = None
        self._diagnostics_timer = None
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.get_parameter("autostart").value:
            if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
                self.trigger_activate()

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
        with self._lock:
            for camera in self._cameras.values():
                for output, msg_type in OUTPUTS.items():
                    wanted = getattr(config.output, output)
                    if wanted and output not in camera.publishers:
                        camera.publishers[output] = self.create_publisher(
                            msg_type, f"~/{topic(camera.name, output)}", qos(config.output.reliability, 5))
                    elif not wanted and output in camera.publishers:
                        self.destroy_publisher(camera.publishers.pop(output))

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            config = self._read_config()
            if config.mode != "fast":
                raise ConfigError(f"mode {config.mode!r}: the accuracy model (Panoptic-FPN-IMP) is not available "
                                  f"in this version; use mode 'fast'")
            weights = Path(config.weights) if config.weights else DEFAULT_WEIGHTS
            predictor = Predictor.from_weights(weights, device="cpu", precision=config.precision)
            if config.class_table and config.class_table != predictor.table.name:
                table = TABLES[config.class_table]
                if len(table) != len(predictor.table):
                    raise ConfigError(f"class_table {config.class_table!r} has {len(table)} classes, but {weights} "
                                      f"predicts {len(predictor.table)}")
                predictor.table = table
            for class_id, bandwidth in predictor.bandwidths.items():  # defaults from the weights
                name = f"bandwidths.{predictor.table[class_id].name}"
                if not self.has_parameter(name):
                    self.declare_parameter(name, bandwidth, ParameterDescriptor(dynamic_typing=True))
            self._weights_postprocess = predictor.postprocess
            self._predictor = predictor
            config = self._read_config()
        except (ConfigError, WeightsError, ValueError, OSError) as error:
            self._predictor = None
            self.get_logger().error(f"configure failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self._classes = class_infos(predictor.table)
        self._cameras = {name: Camera(name, CameraStats(window=config.diagnostics.window))
                         for name in config.input.cameras}
        self._apply(config)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.get_logger().info(f"configured: {predictor.name} ({predictor.table.name}, {len(predictor.table)} classes) "
                               f"from {weights}, cameras {list(self._cameras)}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        config = self._config
        try:
            self._predictor.to(config.device)
        except (ValueError, RuntimeError) as error:
            self.get_logger().error(f"activate failed: {error}")
            return TransitionCallbackReturn.FAILURE
        self._slots = FrameSlots()
        msg_type, suffix = (Image, "image") if config.input.transport == "raw" else (CompressedImage, "image/compressed")
        for camera in self._cameras.values():
            camera.subscriptions = [
                self.create_subscription(msg_type, topic(camera.name, suffix),
                                         lambda msg, info, c=camera: self._on_image(c, msg, info),
                                         qos(config.input.reliability, 1)),
                self.create_subscription(CameraInfo, topic(camera.name, "camera_info"),
                                         lambda msg, c=camera: setattr(c, "camera_info", msg),
                                         qos(config.input.reliability, 1))]
        self._worker = threading.Thread(target=self._work, args=(self._slots,), name="panoptic_worker", daemon=True)
        self._worker.start()
        self._diagnostics_timer = self.create_timer(config.diagnostics.period, self._publish_diagnostics)
        self.get_logger().info(f"active on {self._predictor.device}, input {config.input.transport} "
                               f"{config.input.reliability}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_serving()
        self._predictor.to("cpu")
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_serving()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def stop_serving(self) -> None:
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
            self._diagnostics_timer = None
        for camera in self._cameras.values():
            for subscription in camera.subscriptions:
                self.destroy_subscription(subscription)
            camera.subscriptions = []
        if self._slots is not None:
            self._slots.close()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    def _release(self) -> None:
        with self._lock:
            for camera in self._cameras.values():
                for publisher in camera.publishers.values():
                    self.destroy_publisher(publisher)
            self._cameras = {}
        if self._diagnostics_pub is not None:
            self.destroy_publisher(self._diagnostics_pub)
            self._diagnostics_pub = None
        self._predictor = None

    # ---- serving -----------------------------------------------------------------------------------------
    def _on_image(self, camera: Camera, msg, info) -> None:
        now = time.monotonic()
        camera.stats.record_input(now)
        gid = info.get("publisher_gid") or {}
        camera.gaps.update(bytes(gid.get("data", b"")), info.get("publication_sequence_number"))
        self._slots.put(camera.name, (msg, time.perf_counter()))

    def _work(self, slots: FrameSlots) -> None:
        while (item := slots.take()) is not None:
            name, (msg, received) = item
            camera = self._cameras.get(name)
            if camera is None:
                continue
            try:
                self._process(camera, msg, received)
            except Exception as error:  # one bad frame must never stop the worker
                self._reject(camera, "internal", f"{error}\n{traceback.format_exc()}")

    def _reject(self, camera: Camera, kind: str, reason: str) -> None:
        suffix = camera.errors.record(kind, time.monotonic())
        if suffix is not None:
            self.get_logger().warning(f"dropped a frame of '{camera.name or 'image'}' ({kind}): {reason}{suffix}")

    def _process(self, camera: Camera, msg, received: float) -> None:
        config, predictor = self._config, self._predictor
        timings = {"queue": (time.perf_counter() - received) * 1e3}
        clock = time.perf_counter()
        try:
            rgb = rgb_from_msg(msg, config.input.max_pixels)
        except ImageError as error:
            self._reject(camera, error.kind, str(error))
            return
        timings["decode"] = (time.perf_counter() - clock) * 1e3
        prediction = predictor(rgb, config.network_scale(rgb.shape[1]))
        prediction = filter_prediction(prediction, config.filter.score_threshold, config.filter.min_area)
        timings.update(prediction.timings)
        clock = time.perf_counter()
        self._publish(camera, msg.header, rgb, prediction, received, config)
        timings["publish"] = (time.perf_counter() - clock) * 1e3
        timings["total"] = (time.perf_counter() - received) * 1e3
        camera.stats.record_output(time.monotonic(), timings)

    def _publish(self, camera: Camera, header, rgb, prediction, received: float, config: NodeConfig) -> None:
        with self._lock:
            wanted = {name: pub for name, pub in camera.publishers.items() if pub.get_subscription_count() > 0}
        if "semantic" in wanted:
            wanted["semantic"].publish(image_msg(prediction.semantic.numpy().astype(np.uint8), "mono8", header))
        if "instance" in wanted:
            ids = prediction.instances.numpy()  # -1 or a cluster index (far below 65535)
            pixels = ((ids + 1).astype(np.uint16) if config.output.instance_encoding == "mono16"
                      else ids.astype(np.int32))
            wanted["instance"].publish(image_msg(pixels, config.output.instance_encoding, header))
        if "panoptic_image" in wanted or "panoptic" in wanted:
            ids_msg = image_msg(prediction.panoptic.numpy(), "32SC1", header)
            if "panoptic_image" in wanted:
                wanted["panoptic_image"].publish(ids_msg)
            if "panoptic" in wanted:
                latency_ns = int((time.perf_counter() - received) * 1e9)
                wanted["panoptic"].publish(panoptic_msg(ids_msg, prediction.segments, self._classes,
                                                        model=self._predictor.name, mode=config.mode,
                                                        latency_ns=latency_ns))
        if "overlay" in wanted:
            overlay = render_panoptic(rgb, prediction.semantic.numpy(), prediction.panoptic.numpy(),
                                      self._predictor.table, config.output.overlay_alpha)
            wanted["overlay"].publish(image_msg(overlay, "rgb8", header))
        if "camera_info" in wanted and camera.camera_info is not None:
            info = camera.camera_info
            info.header = header
            wanted["camera_info"].publish(info)

    def _publish_diagnostics(self) -> None:
        config, now = self._config, time.monotonic()
        predictor = self._predictor
        node = self.get_name()
        statuses = [Status(OK, f"{node}: model", f"{predictor.name} on {predictor.device}", {
            "model": predictor.name, "mode": config.mode, "device": str(predictor.device),
            "precision": config.precision, "classes": predictor.table.name})]
        for camera in self._cameras.values():
            statuses.append(camera_status(
                f"{node}: {camera.name or 'image'}", camera.stats, self._slots.dropped[camera.name],
                camera.errors.counts, now, lost=camera.gaps.lost, min_rate_hz=config.diagnostics.min_rate_hz,
                max_latency_ms=config.diagnostics.max_latency_ms))
        self._diagnostics_pub.publish(diagnostic_array(statuses, self.get_clock().now().to_msg(), node))


def main(args=None) -> None:
    configure_ros_environment()
    rclpy.init(args=args)
    node = None
    try:  # Ctrl-C may come while autostart is still loading the model
        node = PanopticNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop_serving()
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
