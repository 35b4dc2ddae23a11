# fluxrec: `make demo` and `make test` install what is missing, then run.
# Everything is idempotent and quick when already installed.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
# the venv is rebuilt when pyproject.toml changes
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-12)

.PHONY: help deps venv demo test check lint typecheck unit clean bench-join bench-trainer bench-export bench-serve bench-pipeline

help:
	@echo "make demo    the whole pipeline on a live stream, with a freshness and quality report"
	@echo "             (DATA=../shared/data/obd replays a real log; DATA=mylog.tsv CONFIG=mylog.yaml"
	@echo "             your own, described in mylog.yaml; DEMO_ARGS=... more options)"
	@echo "make test    lint, type-check and run the test suite on real services"
	@echo "make deps    install everything (venv, Python packages, jars, Debian packages)"
	@echo "make check   ruff + mypy only"
	@echo "make bench-join | bench-trainer | bench-export | bench-serve | bench-pipeline"
	@echo "             benchmarks (see BENCHMARKS.md)"
	@echo "make clean   stop the demo stack and remove the venv and local state"

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "fluxrec needs Python 3.11+; run: make PYTHON=/path/to/python3.11"; exit 1; }
	@$(BIN)/python -m pip install -q --disable-pip-version-check uv
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -e '.[all,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)
	@$(BIN)/python -m fluxrec.native  # the C accelerators, when their sources changed

deps: venv
	@$(BIN)/fluxrec setup
	@$(BIN)/python sdk-java/build.py  # the Java delta reader, when its sources changed

# make demo [DATA=../shared/data/obd | DATA=mylog.tsv CONFIG=mylog.yaml] [DEMO_ARGS="--strategy fake_negative"]
demo: deps
	$(BIN)/fluxrec demo $(if $(CONFIG),--config $(CONFIG)) $(if $(DATA),--data $(DATA)) $(DEMO_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

check: lint typecheck

test: deps check
	$(BIN)/python sdk-java/build.py --test  # JUnit: every golden vector, as Python reads it
	$(BIN)/pytest

unit: venv
	$(BIN)/pytest -m 'not kafka and not redis and not s3 and not flink and not stack'

# benchmarks: the last line of output is one JSON object (see BENCHMARKS.md)
bench-join: deps
	$(BIN)/python bench/join.py

bench-trainer: venv
	$(BIN)/python bench/trainer.py
	$(BIN)/python bench/trainer_workers.py

bench-export: deps
	$(BIN)/python bench/export.py
	$(BIN)/python bench/prune.py

bench-serve: venv
	$(BIN)/python bench/serve.py

# the whole pipeline at increasing rates on a private stack (BENCH_ARGS="--rates 500,1000")
bench-pipeline: deps
	$(BIN)/python bench/pipeline.py $(BENCH_ARGS)

clean:
	-@test -x $(BIN)/fluxrec && $(BIN)/fluxrec stack down
	rm -rf $(VENV) .fluxrec .pytest_cache .mypy_cache .ruff_cache sdk-java/target flink-functions/target
