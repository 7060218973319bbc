# Everything runs from .venv, created on first use: `make demo` and `make test` need nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint venv clean stack

demo: $(STAMP)
	$(BIN)/rollcast demo

# MLflow and Prefect servers on PostgreSQL (ROLLCAST_POSTGRES_URL), as docker-compose.yml runs them.
stack: $(STAMP)
	$(BIN)/rollcast stack

test: $(STAMP) lint
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check pipeline flows tests benchmarks
	$(BIN)/ruff format --check pipeline flows tests benchmarks
	$(BIN)/mypy pipeline flows

venv: $(STAMP)

# torch first and alone: `torch==2.13.0` takes the CPU wheel on disk; anything looser pulls CUDA.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) .rollcast .pytest_cache .mypy_cache .ruff_cache
