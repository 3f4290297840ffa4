# The README's two commands: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: install launchers weights demo test test-fast lint format clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10+ required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed  ## create .venv and install everything

# the study's optional launchers (Ray, submitit): the tests use them, `make demo` does not
$(VENV)/.launchers: $(VENV)/.installed requirements-launchers.txt
	$(PY) -m pip install -q -r requirements-launchers.txt
	touch $@

launchers: $(VENV)/.launchers  ## install Ray and submitit for tools.study --launcher ray|slurm

weights: install  ## fetch the official COCO weights, cfg, names and sample photos (once)
	$(PY) -m tools.fetch_assets

demo: weights  ## COCO detections on the sample photos, then train/eval/predict on the demo set
	$(PY) -m tools.demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

test: weights launchers lint  ## lint and run the whole test suite (CPU, no network)
	YOLO_REQUIRE_ASSETS=1 $(PY) -m pytest

test-fast: weights lint  ## lint and run the tests not marked slow (no training, no subprocesses)
	YOLO_REQUIRE_ASSETS=1 $(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
