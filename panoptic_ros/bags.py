"""ROS 2 bags without ROS: read camera frames with their label images, write images and panoptic results.

Built on ``rosbags`` (not a ROS package): messages are (de)serialised with a Kilted typestore that also holds this
package's messages, parsed from the ``.msg`` files. Pixel buffers go through :mod:`panoptic_ros.images`, the
conversions the node uses.

Bags are rosbag2 directories (``metadata.yaml`` + storage files) or single ``.mcap`` / ``.db3`` files.
A ``.mcap`` file that cannot be opened (a recorder killed before writing the index, a cut download) is read
record by record up to the damage, and then :class:`BagError` names the file: nothing before the damage is lost.

Label topics (ground truth for :mod:`panoptic_ros.evaluate_bag`, written by :mod:`panoptic_ros.make_bag`), matched to
frames by header stamp; the message decides the kind:

=================================  ===========  =====================================================
message                            kind         pixels
=================================  ===========  =====================================================
Image ``mono8`` / ``8UC1``         semantic     class ids of the model's table, ``IGNORE_LABEL`` (255) void
Image ``32SC1``                    instances    instance index k >= 0 within its class's pixels, -1 none
Image ``16UC1``                    instances    k + 1, 0 none (read back as k, -1)
``panoptic_ros/PanopticSegmentation``  panoptic  ``16UC1`` segment indices + 1, read back as segment ids, -1 void
=================================  ===========  =====================================================
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from mcap.reader import NonSeekingReader, make_reader
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode, StoragePlugin
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore
from ruamel.yaml import YAML

from .classes import ClassTable
from .images import ImageError, array_to_image, compressed_to_rgb, image_to_array, image_to_rgb, rgb_to_compressed, rgb_to_image
from .postprocess import Segment, ids_from_segment_map, segment_map_from_ids

log = logging.getLogger(__name__)

STORE = Stores.ROS2_KILTED  # the distro this package targets (README: colcon with /opt/ros/kilted)
PACKAGE = "panoptic_ros"
MESSAGES = ("ClassInfo", "Segment", "PanopticSegmentation")
IMAGE = "sensor_msgs/msg/Image"
COMPRESSED_IMAGE = "sensor_msgs/msg/CompressedImage"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
PANOPTIC = f"{PACKAGE}/msg/PanopticSegmentation"
FRAME_TYPES = (IMAGE, COMPRESSED_IMAGE)
LABEL_TYPES = (IMAGE, PANOPTIC)
SEMANTIC_ENCODINGS = ("mono8", "8UC1")
INSTANCE_ENCODINGS = ("32SC1", "16UC1")
STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
FRAME_NAMES_KEY = f"{PACKAGE}.frame_names"  # custom_data: JSON {stamp ns: source image name}, written by make_bag


class BagError(RuntimeError):
    """A bag that cannot be opened or read; the message names the file."""


# ---------------------------------------------------------------------------------------------------- typestore


def message_dirs() -> list[Path]:
    """Where this package's ``.msg`` files may be, in order: the source tree's ``msg/`` next to the package (the
    files that match this code), the generated ``panoptic_ros/msg`` package (setup.py copies them there, so pip
    installs have them), then ``share/panoptic_ros/msg`` of each ``AMENT_PREFIX_PATH`` entry (colcon or apt)."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    return [here.parent / "msg", here / "msg", *(Path(p) / "share" / PACKAGE / "msg" for p in prefixes)]


def find_message_dir() -> Path:
    for folder in message_dirs():
        if all((folder / f"{name}.msg").is_file() for name in MESSAGES):
            return folder
    raise FileNotFoundError(f"{PACKAGE} message definitions ({', '.join(MESSAGES)}.msg) not found; looked in "
                            f"{', '.join(str(d) for d in message_dirs())} (set AMENT_PREFIX_PATH to an install prefix)")


@cache
def typestore() -> Typestore:
    """ROS 2 Kilted message types plus ClassInfo, Segment and PanopticSegmentation from their ``.msg`` files."""
    store = get_typestore(STORE)
    folder = find_message_dir()
    types = {}
    for name in MESSAGES:
        types.update(get_types_from_msg((folder / f"{name}.msg").read_text(), f"{PACKAGE}/msg/{name}"))
    store.register(types)
    return store


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class TopicInfo:
    name: str
    msgtype: str  # "a | b" when connections on the topic disagree
    count: int


@dataclass
class Frame:
    """One decoded camera frame.

    index: position among the topic's messages (0-based; skipped messages keep their number); stamp_ns: header
    stamp; log_time_ns: bag receive time; encoding: the Image encoding or the CompressedImage format; rgb: uint8
    [H, W, 3]; labels: kind (``semantic``, ``instances``, ``panoptic``) -> [H, W] array from the label topics
    whose header stamp equals this frame's (see the module docstring), empty when none matched.
    """

    index: int
    stamp_ns: int
    log_time_ns: int
    frame_id: str
    encoding: str
    rgb: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ReadStats:
    """What a ``frames`` call could not use: frames by ``ImageError.kind`` (``message`` for undeserialisable
    bytes), label messages likewise, and labels whose stamp matched no frame."""

    skipped: Counter = field(default_factory=Counter)
    labels_skipped: Counter = field(default_factory=Counter)
    unmatched_labels: int = 0


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def decode_frame(msgtype: str, msg) -> tuple[str, np.ndarray]:
    """(encoding or format, uint8 RGB [H, W, 3]) of an Image or CompressedImage; raises ``ImageError``."""
    if msgtype == COMPRESSED_IMAGE:
        return msg.format, compressed_to_rgb(msg.format, msg.data)
    return msg.encoding, image_to_rgb(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


def decode_label(msgtype: str, msg) -> tuple[str, np.ndarray]:
    """(kind, [H, W] array) of a label message (module docstring); raises ``ImageError``."""
    if msgtype == PANOPTIC:
        if msg.panoptic.encoding != "16UC1":
            raise ImageError("encoding", f"PanopticSegmentation.panoptic must be 16UC1, got {msg.panoptic.encoding!r}")
        try:
            return "panoptic", ids_from_segment_map(_pixels(msg.panoptic), [s.id for s in msg.segments])
        except ValueError as error:
            raise ImageError("data", f"PanopticSegmentation: {error}") from None
    if msg.encoding in SEMANTIC_ENCODINGS:
        return "semantic", _pixels(msg).copy()
    if msg.encoding == "32SC1":
        return "instances", _pixels(msg).copy()
    if msg.encoding == "16UC1":
        return "instances", _pixels(msg).astype(np.int32) - 1
    raise ImageError("encoding", f"label encoding {msg.encoding!r} is none of semantic {SEMANTIC_ENCODINGS} or "
                                 f"instances {INSTANCE_ENCODINGS}")


def _pixels(msg) -> np.ndarray:
    return image_to_array(msg.encoding, msg.height, msg.width, msg.step, msg.data, bool(msg.is_bigendian))


class BagReader:
    """Read a bag: ``with BagReader(path) as bag: for frame in bag.frames("/camera/image_raw", labels): ...``.

    ``bag.topics`` lists what the bag holds; ``bag.stats`` counts what the last ``frames`` call skipped;
    ``bag.frame_names`` maps stamps to source image names where make_bag recorded them.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"no bag at {self.path}")
        self.store = typestore()
        self.stats = ReadStats()
        self.damage: str | None = None  # why rosbags could not open the bag, when it is read record by record
        self._reader: Reader | None = None
        self._salvage: list[Path] = []
        self._salvage_topics_cache: dict[str, TopicInfo] | None = None
        self._open()

    def _open(self) -> None:
        try:
            reader = Reader(self._storage_target())
            reader.open()
            self._reader = reader
        except Exception as error:  # rosbags raises several types for damaged files
            self._salvage = _mcap_files(self.path)
            if not self._salvage:
                raise BagError(f"{self.path}: cannot open the bag: {error}") from error
            self.damage = f"{type(error).__name__}: {error}"
            log.warning("%s: cannot be opened as a whole (%s); reading it record by record", self.path, self.damage)

    def _storage_target(self) -> Path:
        """The path rosbags opens: a directory with metadata.yaml, a storage file, or the one storage file of a
        directory whose recorder stopped before writing metadata.yaml."""
        if self.path.is_dir() and not (self.path / "metadata.yaml").exists():
            files = [p for p in sorted(self.path.iterdir()) if p.suffix in SUFFIXES]
            if len(files) == 1:
                return files[0]
        return self.path

    def close(self) -> None:
        if self._reader is not None and self._reader.is_open:
            self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def topics(self) -> dict[str, TopicInfo]:
        """Topic name -> type and message count (for a damaged bag: the messages readable before the damage)."""
        if self._reader is None:
            return self._salvage_topics()
        return {name: TopicInfo(name, info.msgtype or " | ".join(sorted({c.msgtype for c in info.connections})),
                                info.msgcount) for name, info in self._reader.topics.items()}

    def _salvage_topics(self) -> dict[str, TopicInfo]:
        if self._salvage_topics_cache is None:
            self._salvage_topics_cache = self._scan_salvage()
        return self._salvage_topics_cache

    def _scan_salvage(self) -> dict[str, TopicInfo]:
        counts: Counter = Counter()
        types: dict[str, set[str]] = {}
        try:
            for topic, msgtype, _, _ in self._salvaged(None):
                counts[topic] += 1
                types.setdefault(topic, set()).add(msgtype)
        except BagError:
            pass
        return {t: TopicInfo(t, " | ".join(sorted(types[t])), counts[t]) for t in sorted(counts)}

    def describe_topics(self) -> str:
        topics = self.topics
        if not topics:
            return "(none)"
        return ", ".join(f"{t.name} [{t.msgtype}, {t.count}]" for t in topics.values())

    def check_topic(self, topic: str, allowed: Sequence[str]) -> TopicInfo:
        """The topic's info; raises ``BagError`` listing the bag's topics when it is missing or of another type."""
        topics = self.topics
        if topic not in topics:
            raise BagError(f"{self.path}: no topic {topic!r}; the bag has: {self.describe_topics()}")
        wrong = set(topics[topic].msgtype.split(" | ")) - set(allowed)
        if wrong:
            raise BagError(f"{self.path}: topic {topic!r} has type {topics[topic].msgtype}; expected one of "
                           f"{', '.join(allowed)}")
        return topics[topic]

    @property
    def frame_names(self) -> dict[int, str]:
        """Header stamp (ns) -> source image name, as make_bag records them in the bag's custom data."""
        text = read_custom_data(self.path).get(FRAME_NAMES_KEY)
        return {int(stamp): name for stamp, name in json.loads(text).items()} if text else {}

    def _deserialize(self, data: bytes, msgtype: str):
        try:
            return self.store.deserialize_cdr(data, msgtype)
        except Exception as error:  # corrupt bytes make the generated deserialiser fail in many ways
            raise ImageError("message", f"cannot deserialise {msgtype}: {type(error).__name__}: {error}") from None

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """Undecoded messages of ``topics`` in log-time order: (topic, msgtype, log time ns, CDR bytes); a damaged
        .mcap yields what it can, then raises ``BagError``."""
        if self._reader is None:
            yield from self._salvaged(topics)
            return
        connections = [c for c in self._reader.connections if c.topic in topics]
        count = 0
        try:
            for connection, log_time, data in self._reader.messages(connections):
                count += 1
                yield connection.topic, connection.msgtype, log_time, data
        except Exception as error:
            raise BagError(f"{self.path}: reading failed after {count} messages of {sorted(topics)}: "
                           f"{type(error).__name__}: {error}") from error

    def _salvaged(self, topics: set[str] | None) -> Iterator[tuple[str, str, int, bytes]]:
        """Messages of damaged .mcap files, read sequentially with chunk CRCs checked, up to the damage."""
        for path in self._salvage:
            count = 0
            try:
                with path.open("rb") as stream:
                    for schema, channel, message in NonSeekingReader(stream, validate_crcs=True).iter_messages(
                            topics, log_time_order=False):
                        count += 1
                        yield channel.topic, schema.name if schema else "", message.log_time, message.data
            except Exception as error:  # EndOfFile, CRC errors, bad records
                raise BagError(f"{path}: truncated or corrupt after {count} readable messages "
                               f"({type(error).__name__}: {str(error) or 'unexpected end of file'}); opening it failed "
                               f"with {self.damage}") from error

    def frames(self, topic: str, label_topics: Sequence[str] = (), max_pending: int = 30) -> Iterator[Frame]:
        """Decoded frames of an Image / CompressedImage topic in log-time order, each with the labels whose header
        stamp equals its own.

        A frame waits until every label topic has given a label for its stamp, or until ``max_pending`` later
        frames arrived (then it goes on with the labels it has). Frames that cannot be decoded are skipped and
        counted in ``self.stats`` by ``ImageError.kind``, as are bad label messages. Topics are checked at the
        call (``BagError`` listing the bag's topics); reading errors surface while iterating.
        """
        self.check_topic(topic, FRAME_TYPES)
        for label_topic in label_topics:
            self.check_topic(label_topic, LABEL_TYPES)
        self.stats = ReadStats()
        return self._frames(topic, label_topics, max_pending)

    def _frames(self, topic: str, label_topics: Sequence[str], max_pending: int) -> Iterator[Frame]:
        matcher = _LabelMatcher(len(label_topics), max_pending, self.stats)
        index = -1
        for msg_topic, msgtype, log_time, data in self.messages({topic, *label_topics}):
            if msg_topic == topic:
                index += 1
                frame = self._frame(index, msgtype, log_time, data)
                if frame is not None:
                    yield from matcher.add_frame(frame)
            else:
                self._label(msg_topic, msgtype, data, matcher)
        yield from matcher.flush()

    def _frame(self, index: int, msgtype: str, log_time: int, data: bytes) -> Frame | None:
        try:
            msg = self._deserialize(data, msgtype)
            encoding, rgb = decode_frame(msgtype, msg)
        except ImageError as error:
            self._skip(self.stats.skipped, error, f"frame {index}")
            return None
        return Frame(index, stamp_ns(msg.header), log_time, msg.header.frame_id, encoding, rgb)

    def _label(self, topic: str, msgtype: str, data: bytes, matcher: _LabelMatcher) -> None:
        try:
            msg = self._deserialize(data, msgtype)
            kind, array = decode_label(msgtype, msg)
        except ImageError as error:
            self._skip(self.stats.labels_skipped, error, f"label on {topic}")
            return
        matcher.add_label(stamp_ns(msg.header), kind, array)

    def _skip(self, counter: Counter, error: ImageError, what: str) -> None:
        if not counter[error.kind]:
            log.warning("%s: skipping %s (%s: %s); further ones are only counted", self.path, what, error.kind, error)
        counter[error.kind] += 1


class _LabelMatcher:
    """Pairs frames with labels of equal header stamp, whichever arrives first, keeping frames in arrival order."""

    def __init__(self, label_count: int, max_pending: int, stats: ReadStats):
        self.label_count = label_count
        self.max_pending = max_pending
        self.stats = stats
        self.pending: deque[Frame] = deque()
        self.by_stamp: dict[int, Frame] = {}
        self.labels: dict[int, dict[str, np.ndarray]] = {}  # labels that came before their frame

    def add_frame(self, frame: Frame) -> Iterator[Frame]:
        frame.labels.update(self.labels.pop(frame.stamp_ns, {}))
        self.pending.append(frame)
        self.by_stamp[frame.stamp_ns] = frame
        yield from self._ready()

    def add_label(self, stamp: int, kind: str, array: np.ndarray) -> None:
        frame = self.by_stamp.get(stamp)
        if frame is not None:
            frame.labels[kind] = array
            return
        self.labels.setdefault(stamp, {})[kind] = array
        while len(self.labels) > self.max_pending * max(self.label_count, 1):
            self.labels.pop(next(iter(self.labels)))
            self.stats.unmatched_labels += 1

    def _ready(self) -> Iterator[Frame]:
        while self.pending and (len(self.pending[0].labels) >= self.label_count or len(self.pending) > self.max_pending):
            yield self._pop()

    def flush(self) -> Iterator[Frame]:
        while self.pending:
            yield self._pop()
        self.stats.unmatched_labels += len(self.labels)
        self.labels.clear()

    def _pop(self) -> Frame:
        frame = self.pending.popleft()
        if self.by_stamp.get(frame.stamp_ns) is frame:
            del self.by_stamp[frame.stamp_ns]
        return frame


def _mcap_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(path.glob("*.mcap"))
    return [path] if path.suffix == ".mcap" else []


def read_custom_data(path: Path) -> dict[str, str]:
    """rosbag2 ``custom_data`` of a bag: from metadata.yaml, or the copy rosbag2 embeds in a storage file (the
    ``rosbag2`` metadata record of an .mcap, the ``metadata`` table of a .db3). Empty when there is none or it
    cannot be read."""
    path = Path(path)
    try:
        if path.is_dir():
            if (path / "metadata.yaml").exists():
                info = YAML(typ="safe").load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
                return info.get("custom_data") or {}
            files = [p for p in sorted(path.iterdir()) if p.suffix in SUFFIXES]
            return read_custom_data(files[0]) if len(files) == 1 else {}
        text = _embedded_metadata(path)
        return (YAML(typ="safe").load(text).get("custom_data") or {}) if text else {}
    except Exception as error:  # damaged metadata must not stop reading the frames
        log.warning("%s: cannot read the bag's custom data: %s", path, error)
        return {}


def _embedded_metadata(path: Path) -> str | None:
    if path.suffix == ".mcap":
        with path.open("rb") as stream:
            for record in make_reader(stream).iter_metadata():
                if record.name == "rosbag2":
                    return record.metadata.get("serialized_metadata")
        return None
    if path.suffix == ".db3":
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT metadata FROM metadata ORDER BY metadata_version DESC LIMIT 1").fetchone()
        return row[0] if row else None
    return None


# ---------------------------------------------------------------------------------------------------- writing


class BagWriter:
    """Write a bag of images and panoptic results: ``with BagWriter(path) as bag: bag.write_image(...)``.

    ``path`` ending in ``.mcap`` or ``.db3`` gives a single storage file (written as a rosbag2 directory beside it,
    then moved); any other path a rosbag2 directory. mcap chunks are zstd-compressed (lossless, read natively by
    rosbag2, Foxglove and rosbags). Log times default to the header stamp. The bag is complete only after
    ``close`` (the context manager closes it, also on an exception).
    """

    def __init__(self, path: str | Path, storage: str | None = None):
        self.path = Path(path)
        storage = storage or SUFFIXES.get(self.path.suffix, "mcap")
        if storage not in STORAGES:
            raise ValueError(f"storage {storage!r} is not allowed: expected one of {sorted(STORAGES)}")
        if self.path.suffix in SUFFIXES and SUFFIXES[self.path.suffix] != storage:
            raise ValueError(f"{self.path}: a {self.path.suffix} file cannot hold {storage} storage")
        if self.path.exists():
            raise FileExistsError(f"{self.path} exists; bags are never overwritten")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.store = typestore()
        self._single = self.path.suffix in SUFFIXES
        self._tmp = Path(tempfile.mkdtemp(prefix=".bag-", dir=self.path.parent)) if self._single else None
        self._writer = Writer(self._tmp / self.path.stem if self._single else self.path, version=9,
                              storage_plugin=STORAGES[storage])
        if storage == "mcap":
            self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
        self._writer.open()
        self._connections: dict[tuple[str, str], object] = {}
        self.counts: Counter = Counter()

    def __enter__(self) -> BagWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def set_custom_data(self, key: str, value: str) -> None:
        self._writer.set_custom_data(key, value)

    def close(self) -> None:
        """Finish the bag (index, metadata) and, for a single-file path, move the storage file into place."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.close()
        if self._tmp is not None:
            shutil.move(self._tmp / self.path.stem / f"{self.path.stem}{self.path.suffix}", self.path)
            shutil.rmtree(self._tmp)

    def write(self, topic: str, msgtype: str, msg, log_time_ns: int) -> None:
        key = (topic, msgtype)
        if key not in self._connections:
            self._connections[key] = self._writer.add_connection(topic, msgtype, typestore=self.store)
        self._writer.write(self._connections[key], log_time_ns, self.store.serialize_cdr(msg, msgtype))
        self.counts[topic] += 1

    def header(self, stamp: int, frame_id: str):
        types = self.store.types
        time = types["builtin_interfaces/msg/Time"](sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000)
        return types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def image_msg(self, stamp: int, frame_id: str, array: np.ndarray, encoding: str):
        """An Image: a uint8 [H, W, 3] ``array`` is RGB, encoded as any camera ``encoding``; any other array must
        already have the encoding's type and channels (labels: mono8 [H, W] uint8, 32SC1 [H, W] int32, ...)."""
        is_rgb = array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
        height, width, step, data = rgb_to_image(array, encoding) if is_rgb else array_to_image(array, encoding)
        return self.store.types[IMAGE](header=self.header(stamp, frame_id), height=height, width=width,
                                       encoding=encoding, is_bigendian=0, step=step,
                                       data=np.frombuffer(data, np.uint8))

    def write_image(self, topic: str, stamp: int, array: np.ndarray, encoding: str, frame_id: str,
                    log_time_ns: int | None = None) -> None:
        """An Image message (see ``image_msg`` for ``array``); ``stamp`` in ns."""
        self.write(topic, IMAGE, self.image_msg(stamp, frame_id, array, encoding), _log(log_time_ns, stamp))

    def write_compressed(self, topic: str, stamp: int, rgb: np.ndarray, fmt: str, frame_id: str,
                         log_time_ns: int | None = None) -> None:
        """A CompressedImage of a uint8 RGB [H, W, 3] image, ``fmt`` ``jpeg`` or ``png``."""
        msg = self.store.types[COMPRESSED_IMAGE](header=self.header(stamp, frame_id), format=fmt,
                                                 data=np.frombuffer(rgb_to_compressed(rgb, fmt), np.uint8))
        self.write(topic, COMPRESSED_IMAGE, msg, _log(log_time_ns, stamp))

    def write_panoptic(self, topic: str, stamp: int, panoptic: np.ndarray, segments: Sequence[Segment],
                       table: ClassTable, frame_id: str, model: str, mode: str = "fast", latency_ns: int = 0,
                       log_time_ns: int | None = None) -> None:
        """A PanopticSegmentation: ``panoptic`` [H, W] segment ids (-1 void) and its segments (sorted by id), stored
        as the message's 16UC1 segment map; the class table."""
        types = self.store.types
        segment_map = segment_map_from_ids(panoptic, [s.id for s in segments])
        msg = types[PANOPTIC](
            header=self.header(stamp, frame_id),
            panoptic=self.image_msg(stamp, frame_id, segment_map, "16UC1"),
            segments=[self._segment(s) for s in segments],
            classes=[types[f"{PACKAGE}/msg/ClassInfo"](
                id=c.id, name=c.name, is_thing=c.is_thing,
                color=types["std_msgs/msg/ColorRGBA"](*(v / 255 for v in c.color), 1.0)) for c in table.classes],
            model=model, mode=mode,
            latency=types["builtin_interfaces/msg/Duration"](sec=latency_ns // 1_000_000_000,
                                                             nanosec=latency_ns % 1_000_000_000))
        self.write(topic, PANOPTIC, msg, _log(log_time_ns, stamp))

    def _segment(self, segment: Segment):
        types = self.store.types
        x, y, width, height = (int(v) for v in segment.bbox)
        bbox = types["sensor_msgs/msg/RegionOfInterest"](x_offset=x, y_offset=y, height=height, width=width,
                                                         do_rectify=False)
        return types[f"{PACKAGE}/msg/Segment"](id=int(segment.id), class_id=int(segment.class_id),
                                               class_name=segment.class_name, is_thing=bool(segment.is_thing),
                                               score=float(segment.score), area=int(segment.area), bbox=bbox)

    def write_camera_info(self, topic: str, stamp: int, width: int, height: int, frame_id: str,
                          k: np.ndarray | None = None, log_time_ns: int | None = None) -> None:
        """A CameraInfo of the image size; ``k`` the 3 x 3 intrinsics, or None for an uncalibrated camera (all
        matrices zero, as sensor_msgs/CameraInfo defines it)."""
        types = self.store.types
        k = np.zeros(9) if k is None else np.asarray(k, np.float64).reshape(9)
        p = np.zeros(12) if not k.any() else np.concatenate([k.reshape(3, 3), np.zeros((3, 1))], 1).reshape(12)
        msg = types[CAMERA_INFO](
            header=self.header(stamp, frame_id), height=height, width=width, distortion_model="plumb_bob",
            d=np.zeros(5), k=k, r=np.eye(3).reshape(9) if k.any() else np.zeros(9), p=p, binning_x=0, binning_y=0,
            roi=types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
        self.write(topic, CAMERA_INFO, msg, _log(log_time_ns, stamp))


def _log(log_time_ns: int | None, stamp: int) -> int:
    return stamp if log_time_ns is None else log_time_ns
