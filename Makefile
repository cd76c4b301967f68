# The README's commands. Each one sets up what it needs on a fresh machine.
PYTHON ?= python3
VENV := .venv

.PHONY: run test bench venv

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q '.[test,bench]'
	touch $@

run: venv
	bash scripts/run.sh

test: venv
	bash scripts/test.sh

bench: venv
	bash scripts/bench.sh
