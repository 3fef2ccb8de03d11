#!/usr/bin/env bash
# The standard comparison on a CUDA machine, prepared for the device tool (one command, under 5 minutes):
#   bash bench/gpu/fetch_wheels.sh            # here, once
#   device run, carry [".whl"], command:  bash bench/gpu/run_gpu_benchmark.sh
# Results land in $OUT (the device tool's folder) or bench/results. On a CPU machine without .whl/ it runs the
# same comparison with the local environment (QUICK=1 for a smoke run), which is how it is tested here.
set -euo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
args=(--out "${OUT:-bench/results}")
[ -n "${QUICK:-}" ] && args+=(--quick)
# A GPU answers far more requests a second than 2 CPU cores: sweep higher rates there.
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" && args+=(--rates 100,200,400,800,1600)
"$PYTHON" -m bench.standard_comparison "${args[@]}"
