"""The node with PanoNet's DCME and Bridging instance decoders (issue #13 item 4) through real rclpy: a weights file
of either configures the node in the fast mode, a frame comes back with every output consistent, the embedding
decoder's ``bandwidths.<class>`` parameters are neither declared nor accepted, and the shared size filter is. The
ROS environment (loopback discovery, a domain per run) is set by test/conftest.py, as for every test under
test/ros."""

import os

import pytest
import torch
from rclpy.exceptions import InvalidParameterValueException
from rclpy.parameter import Parameter
from test_panoptic_node import OUTPUT_TYPES, check_outputs, context, frame, harness, image  # noqa: F401

from panoptic_ros.checkpoint import save_weights
from panoptic_ros.config import config_from_dict
from panoptic_ros.models import build_model

assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST" and os.environ["ROS_DOMAIN_ID"]

EXTRA = {"dcme": {}, "bridging": {"thing_classes": [8, 9, 10]}}


def decoder_weights(path, decoder):
    """An untrained tiny PanoNet of ``decoder`` biased towards cars, so that instances reach the merge (and, for
    bridging, towards large boxes: random 1-cell boxes would make every car pixel an instance of its own)."""
    cfg = config_from_dict({"model": {"num_classes": 11, "width": 0.125, "depths": [1, 1, 1, 1],
                                      "instance_decoder": decoder, **EXTRA[decoder]},
                            "postprocess": {"min_instance_pixels": 1}})
    torch.manual_seed(0)
    model = build_model("panonet", **cfg.model.kwargs())
    with torch.no_grad():
        model.semantic_decoder.head.bias[8] = 2.0
        if decoder == "bridging":  # boxes of ~30 cells: neighbouring pixels vote overlapping boxes, few instances
            model.embedding_decoder.head.bias.view(3, 4)[:, 2:] = 30.0
    return save_weights(model, cfg, path)


@pytest.mark.parametrize("decoder", ["dcme", "bridging"])
def test_a_decoder_weights_file_configures_the_node_and_serves_a_frame(harness, frame, tmp_path, decoder):
    weights = decoder_weights(tmp_path / f"{decoder}.safetensors", decoder)
    h = harness(weights=str(weights))
    predictor = h.node._predictor
    assert (h.node.state, predictor.mode, predictor.instance_decoder) == ("active", "fast", decoder)
    assert not any(name.startswith("bandwidths.") for name in h.node._parameters)
    names = [n for n in OUTPUT_TYPES if n != "camera_info"]
    h.listen_outputs(outputs={n: OUTPUT_TYPES[n] for n in names})
    pub = h.publisher("/image")
    h.wait_matched(*(f"/panoptic_node/{n}" for n in names))
    pub.publish(image(frame, stamp=1))
    msgs = check_outputs(h, 1, frame.shape, names=names, mode="fast")
    assert any(s.is_thing for s in msgs["panoptic"].segments)  # the decoder's instances reached the merge

    with pytest.raises(InvalidParameterValueException, match=f"instance decoder is {decoder}, which has no mean-shift"):
        h.node.declare_parameter("bandwidths.car", 0.7)  # the node's parameter check refuses it, with the reason
    assert not h.node.has_parameter("bandwidths.car")
    assert h.node.set_parameters([Parameter("filter.min_instance_pixels", value=5)])[0].successful
    assert h.node._predictor.postprocess.min_instance_pixels == 5
