"""The bag player's records stay bounded when it loops (issue #12, item 8): a looping player used to append every
pass's records to ``published`` for as long as it ran."""

import numpy as np
import pytest
import rclpy
from rclpy.context import Context

from panoptic_ros.bags import BagWriter
from panoptic_ros.ros import bag_player
from panoptic_ros.ros.bag_player import BagPlayer

TOPIC = "/camera/image_raw"
SECOND = 1_000_000_000


@pytest.fixture
def tiny_bag(tmp_path):
    """Three 8 x 6 rgb8 frames and their camera_info, 0.1 s apart."""
    path = tmp_path / "tiny.mcap"
    rng = np.random.default_rng(0)
    with BagWriter(path) as bag:
        for k in range(3):
            stamp = SECOND + k * SECOND // 10
            bag.write_image(TOPIC, stamp, rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), "rgb8", "camera")
            bag.write_camera_info("/camera/camera_info", stamp, 8, 6, "camera")
    return path


@pytest.fixture
def node():
    context = Context()
    rclpy.init(context=context)
    try:
        yield rclpy.create_node("bag_player_test", context=context)
    finally:
        rclpy.try_shutdown(context=context)


def fake_clock():
    """A clock that the player's waits advance: paced passes without real sleeping."""
    now = [0.0]
    return (lambda: now[0]), (lambda seconds: now.__setitem__(0, now[0] + seconds))


def test_repeated_passes_keep_only_the_latest_pass_records(tiny_bag, node):
    stamps = [SECOND + k * SECOND // 10 for k in range(3)]
    clock, spin = fake_clock()
    with bag_player.BagReader(tiny_bag) as reader:
        player = BagPlayer(node, reader, [TOPIC, "/camera/camera_info"], clock=clock)
        for _ in range(5):
            assert player.play(spin) == 6
            # one pass's records, whatever the number of passes so far
            assert [s for _, s in player.published[TOPIC]] == stamps
            assert [s for _, s in player.published["/camera/camera_info"]] == stamps
        assert player.passes == 5


def test_records_can_be_switched_off(tiny_bag, node):
    clock, spin = fake_clock()
    with bag_player.BagReader(tiny_bag) as reader:
        player = BagPlayer(node, reader, [TOPIC], clock=clock, record=False)
        for _ in range(3):
            assert player.play(spin) == 3
        assert player.published == {TOPIC: []} and player.passes == 3


def test_looping_cli_holds_no_records(tiny_bag, monkeypatch):
    """``--loop`` plays until interrupted; after many passes its player holds nothing per message."""
    players = []
    play = BagPlayer.play

    def counted_play(self, spin=None):
        if self not in players:
            players.append(self)
        if self.passes == 20:
            raise KeyboardInterrupt
        return play(self, spin)

    monkeypatch.setattr(BagPlayer, "play", counted_play)
    bag_player.main([str(tiny_bag), "--loop", "--rate", "1000"])
    (player,) = players
    assert player.passes == 20 and all(len(records) == 0 for records in player.published.values())
