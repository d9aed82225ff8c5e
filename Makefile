# Two commands from a fresh clone:
#     make setup        # .venv with the CPU build of torch, flare_ray (editable) and its test tools
#     make quickstart   # the quickstart sweep (search_spaces/quickstart.yaml), on a laptop's CPU
# then: make mlflow (the MLflow UI on the sweeps), make report NAME=quickstart, make help for the rest.
#
# Variables (on the command line, e.g. `make setup TORCH_SPEC=skip`):
#   VENV        the virtual environment to create or reuse (default .venv)
#   PYTHON      the interpreter that creates it (default python3)
#   TORCH_SPEC  the pip arguments that install torch (default torch==2.13.0, the CPU build here).
#               A CUDA build: TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126'
#               TORCH_SPEC= or TORCH_SPEC=skip: install no torch, keep the one already in the venv.
#               Given on the command line (not skip), the install steps run again even if the stamp is current.
#   ARGS        extra arguments of `make quickstart` and `make report` (e.g. ARGS=--dry-run)
#   NAME        the sweep `make report` reports on (default quickstart; a sweep name or a parent run id)
#   PORT        the port of `make mlflow` (default 5000; it listens on 127.0.0.1 only)
#   STORE       the MLflow store of `make mlflow` and `make report` (default outputs/mlflow.db, the sweeps')
#   PYTEST_ARGS arguments of `make test` (e.g. PYTEST_ARGS='-x -q tests/unit/test_entry_points.py')
#
# Reuse: the install steps leave the stamp $(VENV)/.flare_ray-installed; while it is newer than
# pyproject.toml, `make setup` (and so quickstart/test) does not call pip at all. `make clean` removes the
# stamp, so the next `make setup` installs again (quickly: pip keeps what is already satisfied).

VENV        ?= .venv
PYTHON      ?= python3
TORCH_SPEC  ?= torch==2.13.0
ARGS        ?=
# (set here, not ?=: an exported PORT or NAME in the shell does not change them; the command line does)
NAME        := quickstart
PORT        := 5000
STORE       := outputs/mlflow.db
PYTEST_ARGS ?=

SHELL       := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

VENV_PYTHON := $(VENV)/bin/python
STAMP       := $(VENV)/.flare_ray-installed
PIP         := $(VENV_PYTHON) -m pip
LINTED      := flare_ray tests benchmarks
TORCH_ARGS  := $(strip $(TORCH_SPEC))
SKIP_TORCH  := $(if $(filter-out skip,$(TORCH_ARGS)),,yes)
TORCH_NOTE  := $(if $(filter torch==2.13.0,$(TORCH_ARGS)),$(if $(filter --index-url --extra-index-url,$(TORCH_ARGS)),, (CPU build)))

# An explicit TORCH_SPEC on the command line is a request to install it: re-run the install steps.
ifeq ($(origin TORCH_SPEC),command line)
ifneq ($(SKIP_TORCH),yes)
$(STAMP): FORCE
endif
endif

.PHONY: help setup quickstart mlflow report test lint format dry-run docs clean FORCE

help: ## list the targets
	@echo "usage: make TARGET [VAR=value ...]   (variables: VENV, PYTHON, TORCH_SPEC, ARGS, NAME, PORT, STORE, PYTEST_ARGS; see the Makefile)"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-11s %s\n", $$1, $$2}' $(firstword $(MAKEFILE_LIST))

setup: $(STAMP) ## create or reuse .venv (VENV): torch (TORCH_SPEC), flare_ray editable, test tools

quickstart: setup ## run the quickstart sweep: flare-ray tune search_spaces/quickstart.yaml ARGS
	$(VENV)/bin/flare-ray tune search_spaces/quickstart.yaml $(ARGS)

mlflow: setup ## the MLflow UI on the sweeps' store (STORE), at http://127.0.0.1:PORT
	@test -f $(STORE) || { echo "no MLflow store at $(STORE): run a sweep first (make quickstart)" >&2; exit 2; }
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(STORE) --host 127.0.0.1 --port $(PORT) --app-name flare-ray

report: setup ## the report of a past sweep: flare-ray report NAME ARGS (from STORE)
	$(VENV)/bin/flare-ray report $(NAME) --tracking-uri sqlite:///$(STORE) $(ARGS)

test: setup ## run the test suite: python -m pytest PYTEST_ARGS
	$(VENV_PYTHON) -m pytest $(PYTEST_ARGS)

lint: setup ## ruff: the format is ruff's (ruff format --check) and the lint passes (ruff check)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/ruff check $(LINTED)

format: setup ## ruff: format the code and fix what the linter can (imports)
	$(VENV)/bin/ruff format $(LINTED)
	$(VENV)/bin/ruff check --fix $(LINTED)

dry-run: setup ## check every shipped search space (search_spaces/**/*.yaml) with --dry-run
	@shopt -s globstar nullglob; failed=0; \
	for f in search_spaces/**/*.yaml; do \
	    if $(VENV)/bin/flare-ray tune "$$f" --dry-run >/dev/null; then echo "ok      $$f"; \
	    else echo "FAILED  $$f"; failed=1; fi; \
	done; exit $$failed

docs: setup ## regenerate docs/config-reference.md from the schema's Field descriptions
	$(VENV_PYTHON) -m flare_ray.experiment.reference docs/config-reference.md

clean: ## remove the install stamp and build artefacts (keeps .venv and outputs/)
	rm -rf $(STAMP) *.egg-info build dist

$(VENV_PYTHON):
	@echo "creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(VENV_PYTHON)
ifeq ($(SKIP_TORCH),yes)
	@echo "not installing torch (TORCH_SPEC=$(TORCH_SPEC)): keeping the one in $(VENV), if any"
else
	@echo "installing $(TORCH_ARGS)$(TORCH_NOTE)"
	@$(PIP) install --quiet $(TORCH_ARGS)
endif
	@echo "installing flare_ray and its test tools"
	@$(PIP) install --quiet -e ".[test]"
	@touch $@

FORCE:
