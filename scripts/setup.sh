#!/usr/bin/env bash
# One-command, idempotent set-up of a development environment (run by `make setup [ROS_DISTRO=jazzy]`).
#
#   scripts/setup.sh [kilted|jazzy]      (default kilted)
#
#   kilted  .venv        requirements.txt        editable install of this tree
#   jazzy   .venv-jazzy  requirements-jazzy.txt  editable install of build/jazzy/src, a copy of this tree
#
# The editable install generates the ROS 2 messages (panoptic_ros/msg, panoptic_ros/panoptic_ros_s__*.so) and
# compiles the IMP op (panoptic_ros/ops/_C*.so) inside the tree it installs, against its venv's ROS 2 and torch.
# Two venvs building in one tree would overwrite each other's files, so the Jazzy venv works on its own copy of
# the tree's files (tracked, and untracked but not ignored), refreshed on every run: edit here, run it there.
# Jazzy builds the op's CPU kernel only unless FORCE_CUDA is set (the CUDA build is .venv's).
#
# Steps:
#   1. create the venv (python3 -m venv) if missing;
#   2. pip install -r <requirements> when that file changed (jazzy: after hard-linking torch and what it
#      requires from .venv, where that exists, by scripts/share_venv.py);
#   3. point the ros-* wheels' exported CMake include dirs at this venv's Python and numpy headers;
#   4. (jazzy) copy this tree's files into build/jazzy/src, removing those deleted here since the last copy;
#   5. pip install -e <tree> (messages + IMP op) when a build input changed, then check that the generated
#      messages and their C type support load from that tree (and the op, when it has sources); fail otherwise.
# Steps 2 and 5 are skipped when a stamp in the venv records the sha256 of their inputs, so a second run takes
# seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DISTRO=${1:-kilted}
case "$DISTRO" in
  kilted) VENV=.venv;       REQUIREMENTS=requirements.txt;       SRC=. ;;
  jazzy)  VENV=.venv-jazzy; REQUIREMENTS=requirements-jazzy.txt; SRC=build/jazzy/src
          export FORCE_CUDA="${FORCE_CUDA:-0}" ;;
  *) printf 'setup: error: unknown ROS 2 distribution %q (kilted or jazzy)\n' "$DISTRO" >&2; exit 2 ;;
esac
PY="$ROOT/$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
if [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
export MAX_JOBS="${MAX_JOBS:-2}"
# The ros-* wheels' bootstrapper re-executes each venv Python once with its venv's libraries on LD_LIBRARY_PATH;
# inherited from a process of another venv, this guard would skip that.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE

log() { printf 'setup(%s): %s\n' "$DISTRO" "$*"; }
fail() { printf 'setup(%s): error: %s\n' "$DISTRO" "$*" >&2; exit 1; }
# pip's noise about the ros-* wheels' data entries
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

# Reads the file list on stdin; prints one hash of names and contents (plus the given extra words).
hash_files() { { sort | xargs -r sha256sum; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1; }

if [[ ! -x "$PY" ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi

req_hash=$(echo "$REQUIREMENTS" | hash_files "$("$PY" -c 'import sys; print(sys.version)')")
if [[ "$(cat "$VENV/.stamp-requirements" 2>/dev/null)" != "$req_hash" ]]; then
  if [[ "$VENV" != .venv && -x .venv/bin/python ]]; then
    # torch and its CUDA libraries are the same 5.3 GB in both venvs: link them instead of a second copy.
    log "$(.venv/bin/python scripts/share_venv.py "$VENV" torch torchvision)"
  fi
  log "installing $REQUIREMENTS"
  quiet_pip install -q -r "$REQUIREMENTS"
  rm -f "$VENV/.stamp-install"
  echo "$req_hash" > "$VENV/.stamp-requirements"
else
  log "requirements up to date"
fi

# The ros-* wheels were built under /opt/python/cp311-cp311 and export its include dirs to CMake.
py_include=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
np_include=$("$PY" -c 'import numpy; print(numpy.get_include())')
mapfile -t stale < <(grep -rlF /opt/python/cp311-cp311/ "$VENV/share" --include='*.cmake' || true)
if (( ${#stale[@]} )); then
  log "rewriting include dirs in ${#stale[@]} CMake files of the ros-* wheels"
  sed -i \
    -e "s#/opt/python/cp311-cp311/include/python3\.11#${py_include}#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3\.11/site-packages/numpy/_core/include#${np_include}#g" \
    "${stale[@]}"
  if grep -rlF /opt/python/cp311-cp311/ "$VENV/share" --include='*.cmake'; then
    fail "unexpected /opt/python paths remain in the CMake files above"
  fi
fi

if [[ "$SRC" != . ]]; then
  # The copy: every file git would show here (tracked, or untracked and not ignored) that exists, with its
  # mtime. Files copied before and gone from here now are removed there; its build outputs stay.
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 || fail "the $DISTRO set-up copies the files of a git checkout"
  mkdir -p "$SRC"
  files=$(mktemp)
  git ls-files -z -co --exclude-standard \
    | while IFS= read -r -d '' f; do [[ -f "$f" || -L "$f" ]] && printf '%s\0' "$f"; done | LC_ALL=C sort -z > "$files"
  manifest="$SRC/.setup-files"
  if [[ -f "$manifest" ]]; then
    LC_ALL=C comm -z -23 "$manifest" "$files" | (cd "$SRC" && xargs -0 -r rm -f --)
  fi
  tar -C "$ROOT" --null -T "$files" -cf - | tar -C "$SRC" -xf -
  mv "$files" "$manifest"
  log "copied $(tr -cd '\0' < "$manifest" | wc -c) files to $SRC"
fi

has_op=0
compgen -G 'panoptic_ros/ops/csrc/*.cpp' >/dev/null && has_op=1
# The build inputs are hashed here; in the copy they are the same files.
tree=()
[[ "$SRC" != . ]] && tree=("TREE=$ROOT/$SRC")  # the venv's editable install points at this copy
install_hash=$( { git ls-files -co --exclude-standard msg panoptic_ros/ops/csrc 2>/dev/null \
                    || find msg panoptic_ros/ops/csrc -type f 2>/dev/null; \
                  printf '%s\n' CMakeLists.txt setup.py package.xml; } \
                | hash_files "FORCE_CUDA=${FORCE_CUDA:-}" "CUDA_HOME=${CUDA_HOME:-}" "$req_hash" "${tree[@]}")
if [[ "$(cat "$VENV/.stamp-install" 2>/dev/null)" != "$install_hash" ]] \
   || [[ ! -f "$SRC/panoptic_ros/msg/__init__.py" ]] \
   || { (( has_op )) && ! compgen -G "$SRC/panoptic_ros/ops/_C.cpython-*.so" >/dev/null; }; then
  rm -f "$VENV/.stamp-install"
  log "building messages and the IMP op (pip install -e $SRC)"
  quiet_pip install -q -e "$SRC" --no-build-isolation --no-deps \
    || fail "pip install -e $SRC failed (output above)"

  # pip can exit 0 with no messages built (setuptools makes an error in an editable install's build_py a
  # warning): check what the install left in the tree. The stamp is written only when this passes.
  log "checking the generated messages"
  if ! out=$("$PY" scripts/check_build.py "$SRC" "$has_op" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "the messages or the op that 'pip install -e $SRC' should have built do not load in $VENV (above);
  the message build (CMake/rosidl, in setup.py's build_py) or the op build failed. For its whole output run
  $VENV/bin/python -m pip install -v -e $SRC --no-build-isolation --no-deps"
  fi
  log "${out##*$'\n'}"
  echo "$install_hash" > "$VENV/.stamp-install"
else
  log "package up to date"
fi
log "done"
