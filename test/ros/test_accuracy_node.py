"""The node in the accuracy mode (Panoptic-FPN-IMP) through real rclpy, with a tiny untrained PanopticFPN saved
by ``save_weights``: the same outputs and header as the fast mode, bad frames survived, and the settings that do
not fit the mode refused with the reason. The ROS environment (loopback discovery, a domain per run) is set by
test/conftest.py, as for every test under test/ros."""

import os

from rclpy.parameter import Parameter
from test_panoptic_node import OUTPUT_TYPES, bad_frames, check_outputs, context, frame, harness, header, image  # noqa: F401

assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and os.environ["ROS_DOMAIN_ID"]


def test_accuracy_mode_gives_every_output_with_the_input_header(harness, frame, tiny_fpn_weights):
    h = harness(mode="accuracy", weights=str(tiny_fpn_weights))
    assert h.node._predictor.mode == "accuracy" and h.node._predictor.backend == "eager"
    h.listen_outputs()
    pub = h.publisher("/image")
    h.wait_matched(*(f"/panoptic_node/{n}" for n in OUTPUT_TYPES if n != "camera_info"))
    pub.publish(image(frame, stamp=1))
    msgs = check_outputs(h, 1, frame.shape, names=[n for n in OUTPUT_TYPES if n != "camera_info"], mode="accuracy")
    assert any(s.is_thing for s in msgs["panoptic"].segments)  # detections reached the merge
    assert h.node._predictor.bandwidths == {} and not any(n.startswith("bandwidths.") for n in h.node._parameters)


def test_accuracy_mode_survives_a_malformed_frame(harness, frame, tiny_fpn_weights):
    h = harness(mode="accuracy", weights=str(tiny_fpn_weights))
    pub = h.image_publisher()
    bad = bad_frames(frame)["step"]
    bad.header = header(1)
    pub.publish(bad)
    assert h.wait(lambda: h.node._cameras[""].errors.counts["step"] == 1)
    pub.publish(image(frame, stamp=2))
    assert h.wait_output("/panoptic_node/panoptic", 2).mode == "accuracy"
    assert not h.got("/panoptic_node/panoptic", 1) and h.node.state == "active"


def test_settings_that_do_not_fit_the_mode_are_refused_with_the_reason(harness, tiny_fpn_weights, capfd):
    h = harness(mode="fast", weights=str(tiny_fpn_weights))
    assert h.node._predictor is None and "holds a panoptic_fpn network (mode 'accuracy')" in capfd.readouterr().err
    h = harness(mode="accuracy", weights=str(tiny_fpn_weights), backend="onnxruntime")
    assert h.node._predictor is None and "runs eager only" in capfd.readouterr().err
    h = harness(mode="accuracy", weights=str(tiny_fpn_weights))
    result = h.node.set_parameters([Parameter("filter.min_instance_pixels", value=5)])[0]
    assert not result.successful and "accuracy mode has no clustering" in result.reason
    assert h.node.set_parameters([Parameter("filter.stuff_min_area", value=10)])[0].successful
    assert h.node._predictor.postprocess.stuff_min_area == 10
