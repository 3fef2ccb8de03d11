#!/usr/bin/env bash
# The GPU comparison (bench/gpu_comparison.py), prepared for the device tool: one command, about 6 minutes on an
# H100/H200. The working tree may carry at most 64 MiB, one bundle (46 or 21 MB) and the wheels, so the caption
# server runs in a second call with only the caption bundle in the tree:
#   bash bench/gpu/fetch_wheels.sh                         # here, once (FastAPI, uvicorn, pydantic: not there)
#   mv model_store/lite0-fashion-scenes-captioner model_store/minilm-rt-fine-sentiment /tmp/   # here: one bundle
#   device run, carry [".whl"], command:  bash bench/gpu/run_gpu_comparison.sh
#   copy the JSON and .md it wrote into bench/results/
#   mv /tmp/lite0-fashion-scenes-captioner model_store/; mv model_store/minilm-rt-sentiment /tmp/
#   device run, carry [".whl", "runs/caption-test-images"], command:
#       SKIP=parity,engine,http IMAGES=runs/caption-test-images MERGE=bench/results/gpu_comparison_h200.json \
#       bash bench/gpu/run_gpu_comparison.sh                # adds the caption section to the first run's JSON
#   mv /tmp/minilm-rt-sentiment /tmp/minilm-rt-fine-sentiment model_store/
# Results land in $OUT (the device tool's folder) or bench/results. On a machine without a GPU and without .whl/
# it runs the same measurements on the CPU with the local environment: QUICK=1 for a smoke run.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
args=(--out "${OUT:-bench/results}")
[ -n "${QUICK:-}" ] && args+=(--quick)
[ -n "${SKIP:-}" ] && args+=(--skip "$SKIP")
[ -n "${MERGE:-}" ] && args+=(--merge-into "$MERGE")
[ -d model_store/minilm-rt-sentiment ] || args+=(--skip "parity,engine,http${SKIP:+,$SKIP}")
if [ -d model_store/lite0-fashion-scenes-captioner ] && [ -n "${IMAGES:-}" ]; then
  args+=(--caption-bundle model_store/lite0-fashion-scenes-captioner --images "$IMAGES")
fi
"$PYTHON" -m bench.gpu_comparison "${args[@]}"
