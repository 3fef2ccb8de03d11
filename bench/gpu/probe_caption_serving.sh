#!/usr/bin/env bash
# Where does a loaded caption server spend its time on the GPU? Prepared for the device tool:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux1_x86_64 -d runs/pyspy py-spy                       # here, once
#   device run, carry [".whl", "runs/caption-test-images", "runs/pyspy"], command:
#     bash bench/gpu/probe_caption_serving.sh
# Starts `beem serve` on the caption bundle, puts 16 closed-loop clients on it, takes two py-spy dumps and a 6 s
# py-spy profile of the server, and prints the load result and the batch-size metrics (all also under $OUT).
set -uo pipefail
cd "$(dirname "$0")/../.."
source bench/gpu/gpu_env.sh
pip install -q --no-index --no-deps --target /tmp/pyspy runs/pyspy/*.whl
(setsid python3 -m service.cli serve --bundle model_store/lite0-fashion-scenes-captioner --port 8124 > $OUT/serve.log 2>&1 &)
python3 -c "
import httpx,time
for _ in range(120):
    try:
        if httpx.get('http://127.0.0.1:8124/readyz').status_code==200: break
    except Exception: pass
    time.sleep(1)
"
python3 -m service.cli loadtest --url http://127.0.0.1:8124 --images runs/caption-test-images --policies full --concurrency 16 --requests 160 --rounds 1 --json > $OUT/c16.json 2>/dev/null &
LOAD=$!
sleep 6
PID=$(pgrep -f "service.cli serve --bundle" | head -1)
/tmp/pyspy/bin/py-spy dump --pid $PID > $OUT/dump1.txt 2>&1
sleep 1
/tmp/pyspy/bin/py-spy dump --pid $PID > $OUT/dump2.txt 2>&1
/tmp/pyspy/bin/py-spy record --pid $PID --duration 6 --format raw --threads --output $OUT/profile.txt > /dev/null 2>&1
wait $LOAD
python3 -c "import httpx; print('\n'.join(l for l in httpx.get('http://127.0.0.1:8124/metrics').text.splitlines() if l.startswith(('beem_batch_size','beem_queue_wait_seconds_count','beem_queue_wait_seconds_sum'))))" > $OUT/metrics.txt
cat $OUT/c16.json; echo; cat $OUT/metrics.txt; head -60 $OUT/dump1.txt
