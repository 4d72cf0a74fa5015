#!/usr/bin/env bash
# The GPU benchmarks of issue 14 in one prepared run on a lent GPU machine (the `device` tool):
#   0. bench_store_write.py: zarr's writer vs the direct shard writer (1, 4, 8 I/O threads) vs a
#      bare np.save, 2 batches of the real width each (~25 s; cut at WRITE_TIMEOUT=60 s).
#   1. bench_gpu_extract.py: Qwen2-VL-7B architecture (random weights), projector + all 29
#      lm.resid sites into one float16 store, against a bare forward loop over the SAME images
#      (IMAGES, default 384 = 24 batches, ~16 GiB; both loops finish, so the ratio is measured,
#      not projected), with the disk's own np.save rate and, on the first COMPARE_ZARR (128)
#      images, the zarr writer (the write path before the direct shard writer) side by side; a
#      rate line every 4 batches; JSON written after every phase. Expected 2-4 minutes on an
#      H200; cut at EXTRACT_TIMEOUT=330 s (even a disk of 100 MB/s fits).
#   2. bench_probe_sweep.py --device cuda: the probe engine at real shape (28,800 x 3584 x 29),
#      cut at SWEEP_TIMEOUT=180 s (the bar's per-layer rate stays in the log).
# The whole script stays under 10 minutes (one `run` call with timeout_s=600).
# Everything lands in $OUT: store_write.{json,log}, gpu_extract.{json,log}, probe_sweep_gpu.log,
# env.txt.
#
# Carried wheels (.whl, this project's locked versions of what the machine's image lacks or has
# in another version) are installed to /tmp/site first; run with carry [".whl"]. Make .whl (its
# folder is git-ignored locally via .git/info/exclude; /work/main/.whl has them), for the
# machine's CPython 3.12: for each of transformers huggingface-hub httpx2 httpcore2 truststore
# tokenizers zarr numcodecs donfig google-crc32c dask partd locket xarray pandas click at the
# versions in requirements.lock:  python -m pip download --no-deps --only-binary=:all:
#   --python-version 3.12 --implementation cp --platform manylinux2014_x86_64
#   --platform manylinux_2_28_x86_64 -d .whl NAME==VER
#
# A CPU rehearsal on the project machine (no wheels, the project's venv, a cut model):
#   WHEELS=0 PY=.venv/bin/python DEVICE=cpu IMAGES=32 COMPARE_ZARR=16 BATCH=8 LM_LAYERS=2 VISION_LAYERS=2 \
#   DISK_PROBE=1 WRITE_VARIANTS=zarr,direct-2 SWEEP_ARGS="--layers 2 --rows 2880 --hidden 512" bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if [ "${WHEELS:-1}" = 1 ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  nproc; free -g | head -2; df -h /tmp "$PWD"
  "$PY" -c "import torch, transformers, zarr, xarray, dask, pandas, numpy; print('torch', torch.__version__, 'transformers', transformers.__version__, 'zarr', zarr.__version__, 'xarray', xarray.__version__, 'pandas', pandas.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$OUT/env.txt"
"$PY" -c "import torch, transformers, zarr" || exit 1
rm -rf /tmp/bench_gpu /tmp/bench_write
# the store writers alone at the real width on this machine's CPUs and disk (about 25 s)
timeout "${WRITE_TIMEOUT:-60}" "$PY" benchmarks/bench_store_write.py --batches 2 --reps 1 \
  --variants "${WRITE_VARIANTS:-zarr,direct-1,direct-4,direct-8,npsave}" --work /tmp/bench_write \
  --json "$OUT/store_write.json" 2>&1 | tee "$OUT/store_write.log"
echo "bench_store_write exit ${PIPESTATUS[0]}" | tee -a "$OUT/store_write.log"
rm -rf /tmp/bench_write
timeout "${EXTRACT_TIMEOUT:-330}" "$PY" benchmarks/bench_gpu_extract.py \
  --images "${IMAGES:-384}" --compare-zarr "${COMPARE_ZARR:-128}" --batch-size "${BATCH:-16}" \
  --lm-layers "${LM_LAYERS:-28}" --vision-layers "${VISION_LAYERS:-32}" --device "$DEVICE" \
  --disk-probe-batches "${DISK_PROBE:-2}" --work /tmp/bench_gpu --json "$OUT/gpu_extract.json" \
  2>&1 | tee "$OUT/gpu_extract.log"
echo "bench_gpu_extract exit ${PIPESTATUS[0]}" | tee -a "$OUT/gpu_extract.log"
rm -rf /tmp/bench_gpu
# shellcheck disable=SC2086
timeout "${SWEEP_TIMEOUT:-180}" "$PY" benchmarks/bench_probe_sweep.py --device "$DEVICE" \
  --threads "$(nproc)" ${SWEEP_ARGS:-} 2>&1 | tee "$OUT/probe_sweep_gpu.log"
echo "bench_probe_sweep exit ${PIPESTATUS[0]}" | tee -a "$OUT/probe_sweep_gpu.log"
