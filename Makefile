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

# uv resolves and unpacks what pip would install, from the sources pip is configured with here
# (tools/uv_index_args.py): 37 s where pip took 130-210 s on 2 cores (6 GB of torch's CUDA wheels).
# unsafe-best-match is pip's rule: the best version on any index (uv's own stops at the first index
# that has the package).
# Editable in "compat" mode: Hydra finds the hydra_plugins namespace package only this way
# (PEP 660 editable installs hide it, hydra issues #2359 and #3252). The byte code is needed: every
# process would otherwise compile torch's modules again where PYTHONDONTWRITEBYTECODE is set, as on
# CI's machines (the suite took 29 minutes). compileall does it on every core (53 s). It is a
# cache: a file in a newer Python's syntax (torch ships one for 3.12) stays uncompiled.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/uv pip install --quiet --python $(BIN)/python --index-strategy unsafe-best-match \
		$$($(BIN)/python tools/uv_index_args.py) -e '.[dev,mpich]' --config-settings editable_mode=compat
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
