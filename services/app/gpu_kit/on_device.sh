#!/usr/bin/env bash
# The GPU run on a borrowed NVIDIA machine (README "A GPU run"), from the repository's root there.
#   on_device.sh stash CALL_DIR   every call but the last: its parts into the staging folder
#   on_device.sh finish CALL_DIR  the last call: reassemble, install offline, probe, exactness, bench
# Every step is bounded by `timeout`; what the lead pastes lands in $OUT. Printed by
# `python3 -m services.app.gpu_kit.plan`, which sizes the calls.
set -u -o pipefail
ROOT=${STRATA_KIT_ROOT:-/tmp}  # tests run it in a folder of their own
STAGING=$ROOT/strata-kit
FILES=$ROOT/strata-files
SITE=$ROOT/strata-site
WORK=$ROOT/strata-work
OUT=${OUT:-$ROOT/strata-out}
export PYTHONUNBUFFERED=1 STRATA_BLAS=reference
mkdir -p "$OUT"
step() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$OUT/steps.txt"; }

step "stash $2"
timeout 60 python3 -m services.app.gpu_kit.parts stash "$2" "$STAGING" || exit 1
if [ "$1" = stash ]; then
  timeout 60 python3 -m services.app.gpu_kit.host_probe --env "$STAGING/cuda.env"
  exit 0
fi

step "reassemble and install"
timeout 120 python3 -m services.app.gpu_kit.parts reassemble "$STAGING" "$FILES" || exit 1
timeout 180 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
  "$FILES"/*.whl || exit 1
mkdir -p "$WORK/model-files" && tar -xzf "$FILES/model-files.tar.gz" -C "$WORK/model-files" || exit 1
step "probe"
timeout 60 python3 -m services.app.gpu_kit.host_probe --json "$OUT/probe.json" --env "$STAGING/cuda.env"
# shellcheck disable=SC1091
source "$STAGING/cuda.env"
export PYTHONPATH="$SITE:$PWD"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >>"$OUT/steps.txt" 2>&1
timeout 60 python3 -c "import mlx.core as mx; print('mlx', mx.__version__, mx.default_device(), mx.device_info())" \
  2>&1 | tee -a "$OUT/steps.txt"

step "exactness"
timeout "${STRATA_EXACTNESS_SECONDS:-240}" python3 -m services.app.gpu_run.exactness --device gpu \
  --model-source "$WORK/model-files" --work "$WORK/exactness" --out "$OUT/gpu-exactness.md" \
  >"$OUT/exactness.log" 2>&1
exactness=$?
step "exactness exit $exactness"
[ "$exactness" -eq 0 ] || tail -n 40 "$OUT/exactness.log"
tail -n 12 "$OUT/gpu-exactness.md"

step "bench"
timeout "${STRATA_BENCH_SECONDS:-200}" python3 -m services.app.benchmark.gpu_bench --device gpu \
  --model-source "$WORK/model-files" --work "$WORK/bench" --out "$OUT/gpu-bench.md" >"$OUT/bench.log" 2>&1
bench=$?
step "bench exit $bench"
[ "$bench" -eq 0 ] || tail -n 40 "$OUT/bench.log"
cat "$OUT/gpu-bench.md"
exit $((exactness || bench))
