#!/usr/bin/env bash
# Download, here, the wheels the GPU machine lacks (it has torch, transformers, httpx, matplotlib, tqdm,
# prometheus-client, sacrebleu and pillow, but not FastAPI, uvicorn, pydantic or python-multipart, and cannot
# download). They land in .whl/, which git ignores and the device tool carries (`carry: [".whl"]`).
# Python 3.12, x86-64, manylinux.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  fastapi==0.163.2 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.3 pydantic-core==2.50.4 \
  pydantic-settings==2.16.3 python-dotenv==1.2.2 typing-inspection==0.4.5 annotated-types==0.8.0 \
  typing-extensions==4.16.0 opentelemetry-api==1.45.2 python-multipart==0.0.34
ls -la .whl
