"""Checks what `pip install -e TREE` built: the ROS 2 messages with their C type support, and the IMP op.

    VENV/bin/python scripts/check_build.py TREE HAS_OP      (run by scripts/setup.sh after the install)

Exits non-zero, saying what is wrong, when this Python imports panoptic_ros.msg from elsewhere than TREE, the
generated package was not generated from TREE's current msg/*.msg (left over from an earlier build), a message
does not serialise (its type support does not load), or, with HAS_OP=1, panoptic_ros.ops._C does not import.
Needed because setuptools turns an error in build_py, where the messages are generated, into a warning in
editable installs, and pip then exits 0.
"""

import os
import sys
from pathlib import Path


def main(tree: Path, has_op: bool) -> str:
    from rclpy.serialization import deserialize_message, serialize_message

    try:
        import panoptic_ros.msg as msgs
    except ImportError as error:
        sys.exit(f"panoptic_ros.msg does not import: {error}")

    generated = Path(msgs.__file__).resolve().parent
    if not generated.is_relative_to(tree):
        sys.exit(f"panoptic_ros.msg is imported from {generated}, not from {tree}")
    definitions = sorted((tree / "msg").glob("*.msg"))
    for definition in definitions:
        # The build copies each definition next to the code generated from it.
        copy = generated / definition.name
        if not copy.is_file() or copy.read_bytes() != definition.read_bytes():
            sys.exit(f"{generated} was not generated from the current {definition} (left from an earlier build)")
        cls = getattr(msgs, definition.stem)
        # serialising loads the message's C type support
        if deserialize_message(serialize_message(cls()), cls) != cls():
            sys.exit(f"{definition.stem} does not survive a serialisation round trip")
    if has_op:
        import panoptic_ros.ops._C  # noqa: F401
    return f"{len(definitions)} messages" + (" and the IMP op" if has_op else "") + f" load from {tree}"


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("0", "1"):
        sys.exit(__doc__)
    print(main(Path(os.path.realpath(sys.argv[1])), sys.argv[2] == "1"))
