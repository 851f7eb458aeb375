# Ferry: `make run` serves on 127.0.0.1:8000 with the embedded default (SQLite + local disk),
# installing only what serving needs; `make test` checks lint, then runs every test,
# installing the dev extras and starting what the tests need; `make test-fast` runs the
# in-process unit and SQLite integration tests (no services needed).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
SERVE_STAMP := $(VENV)/.serve-installed-stamp
JS_DIR := tests/interop/js

.PHONY: install install-serve run test test-fast lint format bench clean test-deps test-containers container-bases

# The project with its dev extras (tests, linters, SeaweedFS, Playwright...): what `make
# test` and `make lint` need. It includes everything serving needs.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(SERVE_STAMP)

# The project alone: what `make run` needs (no dev extras).
install-serve: $(SERVE_STAMP)

$(SERVE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

test-deps: install
	bash scripts/install-test-deps.sh

# Local use on loopback needs no key (FERRY_AUTH=none unless the environment or .env sets
# it); Ferry refuses auth-off on any other address. To try auth, set FERRY_AUTH=keys
# (environment or .env) and, once `make run` has created the database, run
# `.venv/bin/ferry keys create --owner you`.
run: install-serve
	$(BIN)/ferry serve --default-auth none

# Lint first: an unclean tree fails the build before any test runs (CI runs `make test`).
# The container tests (tests/containers) are part of the run: container-bases installs
# podman and makes the base images, skipping what is already there.
test: lint test-deps container-bases
	$(BIN)/pytest

# Only the container tests: the image built and run alone and under compose.yml (podman,
# as root), and the static checks of the container files.
test-containers: install container-bases
	$(BIN)/pytest tests/containers tests/test_containers.py

container-bases:
	bash scripts/container-bases.sh

# The markers are applied from what each test uses (tests/support/markers.py).
FAST_MARKERS := not bench and not postgres and not s3 and not node and not browser and not serve

test-fast: install
	$(BIN)/pytest tests/unit tests/integration -m "$(FAST_MARKERS)"

lint: install
	$(BIN)/ruff check app tests scripts migrations
	$(BIN)/ruff format --check app tests scripts migrations
	$(BIN)/mypy --strict app

format: install
	$(BIN)/ruff format app tests scripts migrations
	$(BIN)/ruff check --fix app tests scripts migrations

# @tus/server, the peer of scripts/bench_small_uploads.py, from its committed lockfile.
TUS_PEER := scripts/peers/tus-node-server
$(TUS_PEER)/node_modules/.package-lock.json: $(TUS_PEER)/package-lock.json
	cd $(TUS_PEER) && npm ci --no-audit --no-fund --loglevel=error

bench: test-deps $(TUS_PEER)/node_modules/.package-lock.json
	$(BIN)/python scripts/bench_upload.py
	$(BIN)/python scripts/bench_small_uploads.py
	$(BIN)/python scripts/bench_download.py
	$(BIN)/python scripts/bench_ingest.py
	$(BIN)/python scripts/bench_s3.py

clean:
	rm -rf $(VENV) data logs .pytest_cache .mypy_cache .ruff_cache
