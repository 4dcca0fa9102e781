#!/usr/bin/env bash
# The end-to-end fit benchmark (benchmarks/bench_fit_gpu.py) on a GPU machine, in one command of a few minutes.
#
#   bash benchmarks/device_check.sh prepare        # with network access: wheels the GPU machine lacks -> .whl/
#   bash benchmarks/device_check.sh [ARGS...]      # on the GPU machine, from the repository root
#
# The second form installs the wheels in .whl/ (into /tmp/site) when a module the benchmark
# imports is missing, then runs the full-size benchmark (2048x1024 frames, 512x1024 crops,
# batch 8, 14 workers, CUDA, bf16-mixed, compiled loss terms). ARGS are passed on to
# bench_fit_gpu.py after those defaults and override them (e.g. --device cpu --size small
# --workers 2 to try the whole script on a CPU). Writes bench_fit_gpu.json (rewritten after
# every round, so a run cut short keeps its finished rounds), bench_fit_gpu.log and
# machine.txt to $OUT (default: benchmarks/results/fit_gpu). Environment: PYTHON (python3),
# BENCH_TIMEOUT_S (270: the benchmark is stopped after this many seconds).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=.whl

# Modules the benchmark imports that a bare GPU image may lack, and the wheels that bring them
# (with their own requirements; the versions the test environment runs).
MODULES=(albumentations)
WHEEL_SPECS=(
  albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 simsimd==6.5.16 stringzilla==5.3.2
)

if [[ "${1:-}" == "prepare" ]]; then
  mkdir -p "$WHEELS"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "${WHEEL_SPECS[@]}"
  ls -l "$WHEELS"
  exit 0
fi
[[ "${1:-}" == "run" ]] && shift

OUT=${OUT:-benchmarks/results/fit_gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export WANDB_MODE=offline HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

missing=()
for module in "${MODULES[@]}"; do
  "$PYTHON" -c "import $module" 2>/dev/null || missing+=("$module")
done
if ((${#missing[@]})); then
  if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "device_check: missing Python modules (${missing[*]}) and no wheels in $WHEELS/;" \
      "run 'bash benchmarks/device_check.sh prepare' where pip reaches PyPI and carry $WHEELS" >&2
    exit 2
  fi
  echo "device_check: installing the wheels in $WHEELS/ for ${missing[*]}"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$WHEELS"/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
  for module in "${missing[@]}"; do
    "$PYTHON" -c "import $module" || { echo "device_check: $module still not importable" >&2; exit 2; }
  done
fi

# DataLoader workers hand batches over through /dev/shm: 14 workers x 2 prefetched batches of
# 8 full-size crops need a few GiB. Container images often mount a small one.
shm_kib=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1 | tr -d ' ' || echo 0)
if [[ -n "$shm_kib" && "$shm_kib" -lt $((8 * 1024 * 1024)) ]]; then
  echo "device_check: /dev/shm has $((shm_kib / 1024)) MiB free; trying to enlarge it to 16 GiB"
  mount -o remount,size=16G /dev/shm 2>/dev/null || echo "device_check: could not enlarge /dev/shm" >&2
fi

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
  echo "nproc: $(nproc)"
  free -g 2>/dev/null | head -2 || true
  df -h /dev/shm /tmp 2>/dev/null || true
  "$PYTHON" -c "import torch, lightning, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda,
  'lightning', lightning.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

timeout -k 15 "${BENCH_TIMEOUT_S:-270}" "$PYTHON" benchmarks/bench_fit_gpu.py \
  --device cuda --size full --workers 14 --json "$OUT/bench_fit_gpu.json" "$@" 2>&1 | tee "$OUT/bench_fit_gpu.log"
