# radbridge — two commands do all the set-up on a fresh machine:
#   make run    start the service on its embedded default with examples/hospital.yaml
#   make test   lint, type-check and run every test against real peers
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# make run's own environment: radbridge and its runtime dependencies, none of the test
# tools of .venv (the development environment make test and make dist use).
RUN_VENV := .venv-run
CONFIG ?= examples/hospital.yaml
# pytest-xdist workers. Most tests wait on real peers, timers and processes
# rather than compute (their radbridge commands and services are forked from a
# pre-imported launcher), so 6 workers keep a 2-core machine busy; tests that
# must not overlap share an xdist_group (--dist loadgroup, in pyproject.toml).
TEST_WORKERS ?= 6
LINTED := broker adapters routing config tests

.PHONY: run test tests lint ruff typecheck bench fuzz venv dist debian services clean

# Python keeps what it compiles (__pycache__) even where the environment says not to
# (PYTHONDONTWRITEBYTECODE, set on some build machines): without it every test worker,
# command launcher and service compiled each module it imported anew, about 12 s of CPU per
# test worker. The virtualenv's packages are compiled once at install, both ways.
unexport PYTHONDONTWRITEBYTECODE

# A virtualenv with radbridge installed (editable) and what it needs, at the versions of
# constraints.txt (the set the suite last passed with: a new upstream release cannot break
# a build). uv installs it in a few seconds where pip takes most of a minute; pip does it
# where uv cannot be had.
define venv_with
	$(PYTHON) -m venv $(1)
	($(1)/bin/pip install --quiet uv && $(1)/bin/uv pip install --quiet --compile-bytecode --python $(1)/bin/python -c constraints.txt -e '$(2)') \
		|| $(1)/bin/pip install --quiet -c constraints.txt -e '$(2)'
	touch $(1)/bin/radbridge
endef

$(BIN)/radbridge: pyproject.toml constraints.txt
	$(call venv_with,$(VENV),.[dev])

venv: $(BIN)/radbridge

$(RUN_VENV)/bin/radbridge: pyproject.toml constraints.txt
	$(call venv_with,$(RUN_VENV),.)

run: $(RUN_VENV)/bin/radbridge
	$(RUN_VENV)/bin/radbridge serve -c $(CONFIG)

# The wheel, the sdist and the offline bundle dist/radbridge-VERSION-offline.tar.gz (the
# runtime wheels for CPython 3.11 on x86_64 Linux, the example configuration, install.sh)
# for hospital servers without a package index: see deploy/dist.sh.
dist: venv
	rm -rf dist
	PYTHON=$(BIN)/python deploy/dist.sh dist

# Debian packages the tests use as real peers (dcmtk, Orthanc, dicom3tools; Chromium for
# the console's Playwright tests), and the font that shows Chinese on rendered pages.
debian:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so* /usr/lib/orthanc/libOrthancDicomWeb.so* >/dev/null 2>&1 || missing="$$missing orthanc-dicomweb"; \
	test -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc || missing="$$missing fonts-wqy-microhei"; \
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

lint: ruff typecheck

ruff: venv
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

typecheck: venv
	$(BIN)/mypy broker adapters routing config

# Every test, in parallel (TEST_WORKERS=0: one after the other in one process).
tests: venv debian services
	$(BIN)/python -m compileall -q broker adapters routing config
	TCP_NODELAY=1 $(BIN)/pytest -q -n $(TEST_WORKERS)

# ruff first (a second), then mypy beside the tests: on a fresh clone mypy has
# no cache and takes about half a minute of one core.
test: ruff
	@$(MAKE) --no-print-directory -j2 typecheck tests

bench: venv debian
	$(BIN)/python -m tests.bench.ingest

# Coverage-guided fuzzing (atheris) of the parsers peers feed, FUZZ_SECONDS per target;
# a crash stops with its input in var/fuzz/TARGET/ (see tests/fuzz/run.py).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := hl7 mllp dicom spooled findings
fuzz: venv
	@for target in $(FUZZ_TARGETS); do \
		$(BIN)/python -m tests.fuzz.run $$target --seconds $(FUZZ_SECONDS) || exit 1; \
	done

clean:
	rm -rf $(VENV) $(RUN_VENV) dist var .mypy_cache .ruff_cache .pytest_cache
