# Everything runs in .venv (ROS 2 Kilted). `make setup` creates it on a fresh machine and is a quick no-op when
# nothing changed; the targets below run it first. `make setup ROS_DISTRO=jazzy` sets up .venv-jazzy instead
# (ROS 2 Jazzy, on its own copy of this tree in build/jazzy/src; see scripts/setup.sh). Only a ROS_DISTRO given on
# the command line counts, not one a sourced ROS 2 shell exports.
VENV := $(CURDIR)/.venv
PY := $(VENV)/bin/python
DISTRO := $(if $(filter command line,$(origin ROS_DISTRO)),$(ROS_DISTRO),kilted)
JAZZY_VENV := $(CURDIR)/.venv-jazzy
JAZZY_SRC := $(CURDIR)/build/jazzy/src
# ROS 2 traffic of tests and demos stays on this host.
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup setup-kilted setup-jazzy test test-jazzy demo bench mutate colcon clean

setup:
	@bash scripts/setup.sh $(DISTRO)

setup-kilted:
	@bash scripts/setup.sh kilted

setup-jazzy:
	@bash scripts/setup.sh jazzy

# The whole suite under Kilted, then the ROS-facing tests (node, messages, bags, colcon route) under Jazzy (LTS);
# the Jazzy ones run also when the first run fails, and either failing fails the target.
test: setup-kilted
	@status=0; \
	  echo "$(PY) -m pytest -q test"; $(PY) -m pytest -q test || status=$$?; \
	  $(MAKE) --no-print-directory test-jazzy || status=$$?; \
	  exit $$status

# In the copy the Jazzy set-up has just refreshed, with its generated messages and op.
test-jazzy: setup-jazzy
	cd $(JAZZY_SRC) && env -u _ROS_WHEELS_BOOTSTRAP_COMPLETE $(JAZZY_VENV)/bin/python -m pytest -q test/ros test/test_packaging.py

# The core demo on one frame, then the real node fed by the project's bag player with the embedded sample bag
# (at a quarter of its 15 Hz, so a 2-core CPU keeps up), scored against the bag's labels.
demo: setup-kilted
	$(PY) -m panoptic_ros.demo
	$(PY) -m panoptic_ros.ros.replay --out demo_output/node --rate 0.25 --evaluate

bench: setup-kilted
	$(PY) -m benchmarks.imp
	$(PY) -m benchmarks.accuracy
	$(PY) -m benchmarks.clustering
	$(PY) -m benchmarks.panonet
	$(PY) -m benchmarks.backends
	$(PY) -m benchmarks.baseline
	$(PY) -m benchmarks.replay
	$(PY) -m benchmarks.node
	$(PY) -m benchmarks.soak
	$(PY) -m benchmarks.mirror $(if $(wildcard ../shared/datasets/camvid),--root ../shared/datasets/camvid --split val)
	$(PY) -m benchmarks.decoders $(if $(wildcard ../shared/datasets/camvid),--root ../shared/datasets/camvid --split val)

# Mutation testing of the core modules (not part of `make test` or CI): scripts/mutate.py runs mutmut
# (requirements-dev.txt, installed here) module by module, each in a snapshot of the tree under build/mutation/
# and against its own test files; prints killed / tested per module (docs/mutation.md has the
# measured scores and run times). MODULES='runtime images' runs some.
mutate: setup-kilted
	$(PY) -m pip install -q -r requirements-dev.txt -c requirements.txt
	OMP_NUM_THREADS=1 $(PY) scripts/mutate.py $(MODULES)

# The ROS 2 workspace route, with the venv's ros-* wheels as underlay (in a real workspace, source
# /opt/ros/<distro>/setup.bash instead). colcon builds from CMakeLists.txt; setup.py builds only the op there.
colcon: setup-kilted
	AMENT_PREFIX_PATH=$(VENV)$${AMENT_PREFIX_PATH:+:$$AMENT_PREFIX_PATH} PATH=$(VENV)/bin:$$PATH \
	  $(VENV)/bin/colcon --log-base build_colcon/log build --base-paths . \
	  --build-base build_colcon/build --install-base build_colcon/install \
	  --cmake-args -DPython3_EXECUTABLE=$(PY) -DBUILD_TESTING=OFF

# Removes build outputs (the Jazzy copy in build/ too), not the venvs (delete them by hand to start from scratch).
clean:
	rm -rf build build_colcon panoptic_ros.egg-info panoptic_ros/msg panoptic_ros/panoptic_ros_s__*.so \
	  panoptic_ros/ops/_C.cpython-*.so $(VENV)/.stamp-install $(JAZZY_VENV)/.stamp-install
