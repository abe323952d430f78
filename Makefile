# radbridge — two commands do all the set-up on a fresh machine:
#   make run    start the service on its embedded default with examples/hospital.yaml
#   make test   lint, type-check and run every test against real peers
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= examples/hospital.yaml
DEBIAN_PACKAGES := dcmtk orthanc orthanc-dicomweb dicom3tools chromium

.PHONY: run test lint unit bench venv debian services clean

$(BIN)/radbridge: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/radbridge

run: venv
	$(BIN)/radbridge serve -c $(CONFIG)

# Debian packages the tests use as real peers (dcmtk, Orthanc, dicom3tools; Chromium for
# the console's Playwright tests).
debian:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 || missing="$$missing orthanc-dicomweb"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# PostgreSQL (127.0.0.1:5432) and RabbitMQ (127.0.0.1:5672) for the store and
# bus tests; each is started if it is stopped.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@for i in $$(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
	@if command -v rabbitmq-server >/dev/null; then \
		(echo > /dev/tcp/127.0.0.1/5672) 2>/dev/null || rabbitmq-server -detached; \
		for i in $$(seq 60); do (echo > /dev/tcp/127.0.0.1/5672) 2>/dev/null && break; sleep 1; done; \
	fi

lint: venv
	$(BIN)/ruff check broker adapters routing config tests
	$(BIN)/ruff format --check broker adapters routing config tests
	$(BIN)/mypy broker adapters routing config

test: venv debian services lint
	TCP_NODELAY=1 $(BIN)/pytest -q

bench: venv debian
	$(BIN)/python -m tests.bench.ingest

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
