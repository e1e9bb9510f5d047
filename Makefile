# Two commands do all set-up on a fresh machine:
#   make up     create the environment (first time) and start the default fleet
#   make test   create the environment (first time) and run the whole test suite
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: up test env lint bench clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (Python 3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	# torch first, from the local CPU wheel, so nothing later pulls a CUDA build.
	$(PY) -m pip install --disable-pip-version-check -q torch==2.13.0
	$(PY) -m pip install --disable-pip-version-check -q -c constraints.txt -e '.[all,dev]'
	touch $(STAMP)

env: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/modelfleet up -c fleet.yaml

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/bench_foundation.py

clean:
	rm -rf $(VENV) .modelfleet
