# The README's two commands: `make demo` and `make test`. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medforget-installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,pretrained]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m medforget demo

test: $(STAMP)
	$(PY) -m ruff check medforget tests $(wildcard benchmarks)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check medforget tests $(wildcard benchmarks)

clean:
	rm -rf $(VENV) runs tests/.cache .pytest_cache
