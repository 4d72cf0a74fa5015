#!/usr/bin/env bash
# One-shot, idempotent set-up for a fresh Debian machine (CPU or GPU):
#   system GL libraries for offscreen rendering, a project virtual environment in .venv,
#   the CPU build of torch (no torchvision needed: see vlms/qwen2_vl.py), and spatialbind with all extras.
# Re-running is cheap: the Python install is skipped while pyproject.toml is unchanged.
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
stamp=.venv/.spatialbind-installed
want=$( (sha256sum pyproject.toml scripts/setup.sh; echo "${TORCH_SPEC:-}") | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python packages into .venv (first run: about 2 minutes)"
  .venv/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  # CPU torch first: with it present, the 'torch>=2.4' requirement installs nothing more.
  # (On a CUDA machine set TORCH_SPEC, e.g. TORCH_SPEC='torch==2.14.1'.)
  .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}" 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q -e ".[all,test]" 2>&1 | grep -v "is ignored" || true
  # pyrender pins PyOpenGL 3.1.0, which cannot drive OSMesa; 3.1.10 drives both EGL and OSMesa.
  .venv/bin/pip install -q --no-deps "PyOpenGL==3.1.10" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import cli, scenegen, torch, transformers, zarr, pyrender" 
  echo "$want" > "$stamp"
fi
