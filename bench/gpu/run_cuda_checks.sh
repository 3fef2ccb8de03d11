#!/usr/bin/env bash
# The CUDA correctness and speed checks, prepared for the device tool (one command per task, a few minutes each):
#   bash bench/gpu/fetch_wheels.sh                       # here, once
#   device run, carry [".whl"], command:  bash bench/gpu/run_cuda_checks.sh classification
#   device run, carry [".whl", "runs/caption-test-images"], command:
#       bash bench/gpu/run_cuda_checks.sh caption runs/caption-test-images
# (The device tool sends at most 64 MiB: the two committed bundles together are more, so each task's run goes with
# only its own bundle in the working tree.) GPU=cpu runs it on a machine without one, as a smoke test.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
out="${OUT:-bench/results}"
case "$1" in
  classification) "$PYTHON" -m bench.gpu.cuda_checks classification --gpu "${GPU:-cuda}" --out "$out" ${LIMIT:+--limit $LIMIT} ;;
  caption) "$PYTHON" -m bench.gpu.cuda_checks caption --images "$2" --gpu "${GPU:-cuda}" --out "$out" ${LIMIT:+--limit $LIMIT} ;;
  *) echo "usage: $0 classification | caption IMAGE_DIR" >&2; exit 2 ;;
esac
