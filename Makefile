# Every target sets itself up: a fresh clone needs only `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-merge fusionbench avalanche-venv bench-grow clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,export,study]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/polytask train examples/census_income_demo.yaml --out runs/demo --overwrite
	$(BIN)/polytask evaluate runs/demo --split test

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest

# PEFT (adapters' peer, benchmarks/_peft.py) and what `import peft` loads, pinned: transformers'
# `kernels` and huggingface_hub's `hf-xet` serve hub downloads, which the benchmarks never make.
PEFT := peft==0.21.2 transformers==5.25.0 accelerate==1.16.0 huggingface_hub==2.4.0 \
	tokenizers==0.23.3 regex==2026.12.2 httpx2==2.17.0 httpcore2==2.17.0 truststore==0.10.5 \
	psutil==7.2.2

# The peers of the `bench` extra (pyproject.toml), with --no-deps: resolving LibMTL's
# torchvision requirement would replace $(TORCH). Their other dependencies (numpy, pandas,
# scikit-learn, scipy) come with polytask; keep these pins equal to the extra's.
bench: $(STAMP)
	$(BIN)/pip install --quiet tqdm qpsolvers quadprog
	$(BIN)/pip install --quiet --no-deps torch-rechub==0.9.0 libmtl==1.1.5 torchjd==0.18.0
	$(BIN)/pip install --quiet --no-deps $(PEFT)
	$(BIN)/python benchmarks/throughput_archs.py
	$(BIN)/python benchmarks/balance_speed.py

# FusionBench 0.2.33 (merging) in a venv of its own with the same CPU torch (see
# ../shared/design/peers.md): benchmarks/merge_images.py calls it as a subprocess.
FUSIONBENCH := .venv-fusionbench
$(FUSIONBENCH)/.installed:
	$(PYTHON) -m venv $(FUSIONBENCH)
	$(FUSIONBENCH)/bin/pip install --quiet --upgrade pip
	$(FUSIONBENCH)/bin/pip install --quiet $(TORCH) fusion-bench==0.2.33 safetensors
	touch $@

fusionbench: $(FUSIONBENCH)/.installed

bench-merge: $(STAMP) $(FUSIONBENCH)/.installed
	nice -n 10 $(BIN)/python benchmarks/merge_images.py --seeds 0 1 2
	nice -n 10 $(BIN)/python benchmarks/merge_census.py --seeds 0 1 2

# Avalanche 0.6 (continual-learning peer of `polytask grow` / `stream`) cannot share $(VENV):
# its torchvision needs the torch build it was compiled with (docs/benchmarks.md, peers).
# Several GB (CUDA runtime wheels); the benchmark calls it as a subprocess and reads JSON.
AVALANCHE      := .venv-avalanche
AVALANCHE_STAMP := $(AVALANCHE)/.installed
$(AVALANCHE_STAMP):
	$(PYTHON) -m venv $(AVALANCHE)
	$(AVALANCHE)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1 avalanche-lib==0.6.0 quadprog
	touch $(AVALANCHE_STAMP)

avalanche-venv: $(AVALANCHE_STAMP)

# Continual learning beside Avalanche (its own venv) and growing Census-Income (docs/benchmarks.md)
bench-grow: $(STAMP) $(AVALANCHE_STAMP)
	nice -n 10 $(BIN)/python benchmarks/continual.py
	nice -n 10 $(BIN)/python benchmarks/census_grow.py

clean:
	rm -rf $(VENV) $(FUSIONBENCH) runs
