#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian machine (CPU or GPU):
#   system GL libraries for offscreen rendering, a project virtual environment in .venv,
#   the CPU build of torch (no torchvision needed: see vlms/qwen2_vl.py) and every other dependency at
#   the exact versions of requirements.lock, and spatialbind itself (editable).
# Re-running is cheap: the Python install is skipped while requirements.lock and pyproject.toml are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
need_apt=0
for pkg in libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  echo "[setup] installing offscreen GL libraries (EGL + OSMesa) from Debian"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
    libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Python packages: exactly the versions in requirements.lock (refresh it with scripts/lock.sh),
# installed without dependency resolution, so a fresh machine gets what CI tested.
# On a CUDA machine set TORCH_SPEC (e.g. TORCH_SPEC='torch==2.14.1'): that torch and its CUDA
# dependencies replace the lock's CPU torch, and .venv/.spatialbind-torch-override records it.
stamp=.venv/.spatialbind-installed
want=$( (sha256sum requirements.lock pyproject.toml scripts/setup.sh; echo "${TORCH_SPEC:-}") | sha256sum | cut -c1-16)
# pip's own exit status decides; only the index-location warnings of this machine's pip.conf are dropped
pipq() { .venv/bin/python -m pip install -q "$@" 2> >(grep -v "is ignored" >&2); }
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing the locked Python packages into .venv (first run: about 2 minutes)"
  pipq --no-deps "$(grep -iE '^pip==' requirements.lock | cut -d' ' -f1)"
  if [ -n "${TORCH_SPEC:-}" ]; then
    grep -vE '^torch==' requirements.lock > .venv/requirements.notorch
    pipq --no-deps -r .venv/requirements.notorch
    pipq "$TORCH_SPEC"
    echo "$TORCH_SPEC" > .venv/.spatialbind-torch-override
  else
    pipq --no-deps -r requirements.lock
    rm -f .venv/.spatialbind-torch-override
  fi
  # a sync, not only an install: remove what the lock no longer lists
  extra=$(.venv/bin/python scripts/lock_check.py --extraneous)
  if [ -n "$extra" ]; then .venv/bin/python -m pip uninstall -q -y $extra; fi
  # the project itself, editable, built by the locked hatchling (no isolated unpinned build env)
  pipq --no-deps --no-build-isolation -e .
  .venv/bin/python -c "import cli, scenegen, torch, transformers, zarr, pyrender"
  .venv/bin/python scripts/lock_check.py
  echo "$want" > "$stamp"
fi
