#!/usr/bin/env bash
# The GPU benchmarks of issue 14 in one prepared run on a lent GPU machine (the `device` tool):
# carried wheels (.whl, this project's locked versions of what the machine's image lacks or has
# in another version) go to /tmp/site; then bench_gpu_extract.py (Qwen2-VL-7B architecture,
# random weights, projector + all LM layers into one store vs a bare forward loop) and
# bench_probe_sweep.py on the GPU (28,800 x 3584 x 29 layers). JSON and logs land in $OUT.
# Make .whl first (its folder is git-ignored locally via .git/info/exclude), for the machine's
# CPython 3.12: for each of transformers huggingface-hub httpx2 httpcore2 truststore tokenizers
# zarr numcodecs donfig google-crc32c dask partd locket xarray pandas click at the versions in
# requirements.lock:  python -m pip download --no-deps --only-binary=:all: --python-version 3.12
#   --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl NAME==VER
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
df -h /tmp "$PWD" | tail -n +1
python3 -c "import torch, transformers, zarr, xarray, dask, pandas, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'zarr', zarr.__version__, 'xarray', xarray.__version__, 'pandas', pandas.__version__, 'numpy', numpy.__version__)" || exit 1
timeout "${EXTRACT_TIMEOUT:-345}" python3 benchmarks/bench_gpu_extract.py --images "${IMAGES:-3800}" \
  --batch-size 16 --work /tmp/bench_gpu --json "$OUT/gpu_extract.json" 2>&1 | tee "$OUT/gpu_extract.log"
rm -rf /tmp/bench_gpu
timeout "${SWEEP_TIMEOUT:-175}" python3 benchmarks/bench_probe_sweep.py --device cuda \
  --threads 16 2>&1 | tee "$OUT/probe_sweep_gpu.log"
