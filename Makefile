# The two entry points of the README. Each one sets up .venv first (a no-op when complete).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test lint demo

setup:
	@bash tools/setup_env.sh

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

demo: setup
	$(PY) tools/demo.py
