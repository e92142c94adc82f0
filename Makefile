# One virtualenv (.venv) holds everything; every target installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MMCV_WHEEL ?= ../shared/wheels/mmcv-2.1.0-cp311-cp311-linux_x86_64.whl
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install postgresql demo lint test test-fast test-browser test-docker bench backend simulate simulate-detection simulate-label-studio clean

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -r requirements-dev.txt
	# mmcv 2.1 with its compiled ops for the mmdet adapter's tests: a CPU build for torch 2.14 (no compiling)
	if ls $(MMCV_WHEEL) >/dev/null 2>&1; then $(BIN)/python -m pip install -qq --no-deps $(MMCV_WHEEL); fi
	$(BIN)/python -m pip install -qq --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

## The main job: local Label Studio + this backend on a CIFAR-10 demo project.
demo: install
	$(BIN)/python -m backend.tools.demo

## PostgreSQL 15's server for the tests of Label Studio on PostgreSQL (Debian's postgresql-15, installed
## when missing; each test session makes a throwaway cluster of its own on a loopback port).
postgresql:
	test -x /usr/lib/postgresql/15/bin/initdb || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15; }

## Every test, integration tests against a real Label Studio (on SQLite, and on PostgreSQL for predictions,
## pruning and serving) included (the browser test: test-browser).
test: install lint postgresql
	$(BIN)/python -m pytest -q -m "not browser"

## Lines of at most 120 characters, sorted imports, no unused names (ruff; settings in pyproject.toml).
lint: install
	$(BIN)/ruff check isal_core backend bench tests

## The README's first hour in the Label Studio UI, in headless Chromium (Debian's chromium and
## chromium-driver, installed here when missing; needs root or sudo) with selenium.
test-browser: install
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; }
	$(BIN)/python -m pip install -qq -r requirements-browser.txt
	$(BIN)/python -m pytest -q -m browser

## Unit tests only (no Label Studio server).
test-fast: install lint
	$(BIN)/python -m pytest -q -m "not integration"

## The Docker path end to end (not in `make test`): builds the image, starts docker/docker-compose.yml
## (Label Studio, backend web + worker, Redis) on the host network, runs tests/docker_e2e.py against it
## and always tears it down. Uses ../shared/tools/docker-local.sh when present (no image registry).
test-docker: install
	PY=$(BIN)/python bash docker/test-docker.sh

bench: install
	$(BIN)/python -m bench.scoring
	$(BIN)/python -m bench.stest
	$(BIN)/python -m bench.writeback

## The CPU protocol on CIFAR-10 (33 min measured on 2 cores; rerun to resume): runs/cifar10-cpu/
simulate: install
	$(BIN)/isal simulate --config configs/cifar10-cpu.json

## The detection CPU protocol on BCCD (FCOS from scratch, budgets in boxes; rerun to resume): runs/bccd-cpu/
simulate-detection: install
	$(BIN)/isal simulate --config configs/bccd-cpu.json

## ISAL's part of it again, through a local Label Studio and the backend: runs/cifar10-cpu-label-studio/
simulate-label-studio: install
	$(BIN)/isal simulate --config configs/cifar10-cpu.json --strategies isal --label-studio local

backend: install
	$(BIN)/python -m backend

clean:
	rm -rf $(VENV) .pytest_cache .isal
