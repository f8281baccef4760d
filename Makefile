# Two entry points for a fresh machine: `make app` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8501

.PHONY: app dev test lint bench bench-mislabel clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned, so the project's range is already satisfied and no CUDA wheels are pulled.
$(VENV)/.torch: | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PY) -m pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

app: $(VENV)/.installed
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT)

# For editing the app: rerun on every saved source file. The watcher costs CPU even while idle; `make app` has none.
dev: $(VENV)/.installed
	$(PY) -m streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.fileWatcherType auto \
		--server.runOnSave true

test: $(VENV)/.installed-test
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check influence_core explorer pages tests benchmarks app.py

bench: $(VENV)/.installed-test
	$(PY) -m benchmarks.run $(BENCH_ARGS)

bench-mislabel: $(VENV)/.installed-test
	$(PY) -m benchmarks.mislabel $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
