# Two commands on a fresh clone: `make demo` (the offline quickstart sweep and its report) and
# `make test` (the whole test suite). Each creates and installs .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
DEMO_SWEEP := outputs/sweeps/quickstart_$(shell date +%Y-%m-%d_%H-%M-%S)

.PHONY: demo test install lint clean

install: $(INSTALLED)

# Editable in "compat" mode: Hydra finds the hydra_plugins namespace package only this way
# (PEP 660 editable installs hide it, hydra issues #2359 and #3252). The byte code is needed: every
# process would otherwise compile torch's modules again where PYTHONDONTWRITEBYTECODE is set, as on
# CI's machines (the suite took 29 minutes). pip compiles one file after another (245 s of install
# on 2 cores, 130 s without): compileall does it on every core (53 s). It is a cache: a file in a
# newer Python's syntax (torch ships one for 3.12) stays uncompiled, as pip leaves it.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -e '.[dev,mpich]' \
		--config-settings editable_mode=compat 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	$(BIN)/python -c "import torch, torchvision, hydra, mpi4py, submitit"
	touch $@

demo: $(INSTALLED)
	$(BIN)/hpcbench-train -m experiment=quickstart hydra.sweep.dir=$(DEMO_SWEEP)
	$(BIN)/hpcbench-report $(DEMO_SWEEP) --out reports/quickstart --title "hpcbench quickstart: serial CPU vs 2 DDP ranks (synthetic data, 32 px)"

# One pytest-xdist worker a core (tests/parallel.py says how the tests are shared out).
PYTEST_ARGS ?=  # more pytest options; .ci/run adds --durations=25
test: $(INSTALLED)
	$(BIN)/python -m pytest --numprocesses=auto $(PYTEST_ARGS)

lint: $(INSTALLED)
	$(BIN)/ruff check hpcbench hydra_plugins tests

clean:
	rm -rf $(VENV) build *.egg-info
