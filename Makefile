# qualflow: two commands do all the set-up on a fresh machine (Python 3.11).
#   make demo   creates .venv, installs everything and runs the main job offline
#   make test   installs what the tests need and runs them (CI runs exactly this)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-12)

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install.sh
	PYTHON=$(PYTHON) bash scripts/install.sh $(VENV)
	touch $@

demo: setup
	$(BIN)/qualflow demo --workspace demo-workspace

test: setup
	bash scripts/test-services.sh
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	. ./.test-services.env 2>/dev/null; $(BIN)/pytest

bench: setup
	for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) demo-workspace test-output .pytest_cache .test-services.env
