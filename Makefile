# Everything runs in .venv. `make setup` creates it on a fresh machine and is a quick no-op when nothing changed;
# every other target runs it first.
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
# ROS 2 traffic of tests and demos stays on this host.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup test demo bench colcon clean

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q test

# The core demo on one frame, then the real node fed by the project's bag player with the embedded sample bag
# (at a quarter of its 15 Hz, so a 2-core CPU keeps up), scored against the bag's labels.
demo: setup
	$(PY) -m panoptic_ros.demo
	$(PY) -m panoptic_ros.ros.replay --out demo_output/node --rate 0.25 --evaluate

bench: setup
	$(PY) -m benchmarks.imp
	$(PY) -m benchmarks.clustering
	$(PY) -m benchmarks.panonet
	$(PY) -m benchmarks.replay
	$(PY) -m benchmarks.node
	$(PY) -m benchmarks.mirror $(if $(wildcard ../shared/datasets/camvid),--root ../shared/datasets/camvid --split val)

# The ROS 2 workspace route, with the venv's ros-* wheels as underlay (in a real workspace, source
# /opt/ros/<distro>/setup.bash instead). colcon builds from CMakeLists.txt; setup.py builds only the op there.
colcon: setup
	AMENT_PREFIX_PATH=$(VENV)$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH} PATH=$(VENV)/bin:$$PATH \
	  $(VENV)/bin/colcon --log-base build_colcon/log build --base-paths . \
	  --build-base build_colcon/build --install-base build_colcon/install \
	  --cmake-args -DPython3_EXECUTABLE=$(PY) -DBUILD_TESTING=OFF

# Removes build outputs, not .venv (delete it by hand to start from scratch).
clean:
	rm -rf build build_colcon panoptic_ros.egg-info panoptic_ros/msg panoptic_ros/panoptic_ros_s__*.so \
	  panoptic_ros/ops/_C.cpython-*.so $(VENV)/.stamp-install
