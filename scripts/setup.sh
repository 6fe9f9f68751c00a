#!/usr/bin/env bash
# One-command, idempotent set-up of the development environment in .venv (run by `make setup`).
#   1. create .venv (python3 -m venv) if missing;
#   2. pip install -r requirements.txt when requirements.txt changed;
#   3. point the ros-* wheels' exported CMake include dirs at this venv's Python and numpy headers;
#   4. pip install -e . (messages + IMP op) when a build input changed.
# Steps 2 and 4 are skipped when a stamp in .venv records the sha256 of their inputs, so a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
if [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then
  export CUDA_HOME=/usr/local/cuda
fi
export MAX_JOBS="${MAX_JOBS:-2}"

log() { printf 'setup: %s\n' "$*"; }

# Reads the file list on stdin; prints one hash of names and contents (plus the given extra words).
hash_files() { { sort | xargs -r sha256sum; printf '%s\n' "$@"; } | sha256sum | cut -d' ' -f1; }

if [[ ! -x "$PY" ]]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi

req_hash=$(echo requirements.txt | hash_files "$("$PY" -c 'import sys; print(sys.version)')")
if [[ "$(cat "$VENV/.stamp-requirements" 2>/dev/null)" != "$req_hash" ]]; then
  log "installing requirements.txt"
  "${PIP[@]}" install -q -r requirements.txt 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
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
    log "error: unexpected /opt/python paths remain in the CMake files above" >&2
    exit 1
  fi
fi

install_hash=$( { git ls-files -co --exclude-standard msg panoptic_ros/ops/csrc 2>/dev/null \
                    || find msg panoptic_ros/ops/csrc -type f 2>/dev/null; \
                  printf '%s\n' CMakeLists.txt setup.py package.xml; } \
                | hash_files "FORCE_CUDA=${FORCE_CUDA:-}" "CUDA_HOME=${CUDA_HOME:-}" "$req_hash")
if [[ "$(cat "$VENV/.stamp-install" 2>/dev/null)" != "$install_hash" ]] \
   || [[ ! -f panoptic_ros/msg/__init__.py ]] \
   || { compgen -G 'panoptic_ros/ops/csrc/*.cpp' >/dev/null && ! compgen -G 'panoptic_ros/ops/_C.cpython-*.so' >/dev/null; }; then
  log "building messages and the IMP op (pip install -e .)"
  "${PIP[@]}" install -q -e . --no-build-isolation --no-deps 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  echo "$install_hash" > "$VENV/.stamp-install"
else
  log "package up to date"
fi
log "done"
