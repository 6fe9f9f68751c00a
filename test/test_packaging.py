"""The ROS 2 workspace route: colcon builds the package (messages + IMP op) and its install prefix is importable."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_OP = any((REPO / "panoptic_ros" / "ops" / "csrc").glob("*.cpp"))

CHECK = textwrap.dedent("""
    import json, os
    from panoptic_ros.msg import PanopticSegmentation
    from rclpy.serialization import deserialize_message, serialize_message
    msg = PanopticSegmentation(model="m")
    assert deserialize_message(serialize_message(msg), PanopticSegmentation) == msg
    files = {"msg": __import__("panoptic_ros.msg", fromlist=["x"]).__file__}
    if os.environ["CHECK_OP"] == "1":
        import panoptic_ros.ops._C as op
        files["op"] = op.__file__
    # the message's C type support libraries actually mapped into this process
    with open("/proc/self/maps") as maps:
        files["libs"] = sorted({line.split()[-1] for line in maps if "libpanoptic_ros__" in line})
    print(json.dumps(files))
""")


@pytest.mark.slow
def test_colcon_build_installs_importable_messages_and_op(tmp_path):
    venv_bin = Path(sys.executable).parent
    # Without a ROS install, the venv is the underlay: cmake and colcon from its bin/, ament resources
    # (e.g. the list of type supports rosidl generates) from its share/ament_index.
    underlay = os.pathsep.join(filter(None, [sys.prefix, os.environ.get("AMENT_PREFIX_PATH")]))
    env = dict(os.environ, FORCE_CUDA="0", MAX_JOBS=os.environ.get("MAX_JOBS", "2"), AMENT_PREFIX_PATH=underlay,
               PATH=f"{venv_bin}{os.pathsep}{os.environ['PATH']}")
    install = tmp_path / "install"
    build = subprocess.run(
        [str(venv_bin / "colcon"), "--log-base", str(tmp_path / "log"), "build",
         "--base-paths", str(REPO), "--build-base", str(tmp_path / "build"), "--install-base", str(install),
         "--cmake-args", f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    log = tmp_path / "log" / "latest_build" / "panoptic_ros" / "stdout_stderr.log"
    assert build.returncode == 0, (log.read_text()[-8000:] if log.exists() else "") + build.stderr[-4000:]
    assert "Finished <<< panoptic_ros" in build.stdout, build.stdout[-3000:]

    # The ros-* wheels' bootstrapper would re-exec Python with LD_LIBRARY_PATH in arbitrary order, so the venv's
    # lib/ (where the pip route puts this package's libraries) could shadow the install's. This test process was
    # already bootstrapped: keep its paths, mark the bootstrap done, and let setup.bash prepend the install's.
    env = dict(os.environ, _ROS_WHEELS_BOOTSTRAP_COMPLETE="1", CHECK_SCRIPT=CHECK, CHECK_OP=str(int(HAS_OP)))
    env.pop("PYTHONPATH", None)
    script = f'source "{install}/setup.bash" && exec "{sys.executable}" -c "$CHECK_SCRIPT"'
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    files = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(files["msg"]).is_relative_to(install), files
    assert files["libs"] and all(Path(lib).is_relative_to(install) for lib in files["libs"]), files
    if HAS_OP:
        assert Path(files["op"]).is_relative_to(install), files
    # `ros2 run panoptic_ros panoptic_node` / `bag_player` and `ros2 launch panoptic_ros ...` find these.
    prefix = install / "panoptic_ros"
    for tool, module in (("panoptic_node", "panoptic_ros.ros.panoptic_node"), ("bag_player", "panoptic_ros.ros.bag_player")):
        script = prefix / "lib" / "panoptic_ros" / tool
        assert os.access(script, os.X_OK) and f"run_module('{module}'" in script.read_text(), script
    for name in ("launch/panoptic.launch.py", "launch/rviz.launch.py", "config/fast.yaml", "config/panoptic.rviz"):
        assert (prefix / "share" / "panoptic_ros" / name).is_file(), name
